"""Bad input over real HTTP against the session's gunicorn server: documented 4xx, nothing leaks, no 5xx.

Every refusal must be the JSON error envelope ``{"error": {"code", "message", "status", "request_id"}}`` with the status
the README's error table gives, and no reply may reveal a stack trace or a server path (a message may
repeat the client's own path back). The last tests check that the server still answers and transcribes
after all of it, and that nothing it handled here ended in an unhandled exception in its log.
"""

from __future__ import annotations

import http.client
import http.server
import json
import random
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import LiveServer, start_server, stop_server
from tests.speech import SENTENCE, convert, speak, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# ffmpeg output options per container; m4a with the moov atom first so that "the header" is meaningful.
FORMATS: dict[str, tuple[str, ...]] = {
    "wav": (),
    "flac": (),
    "ogg": ("-c:a", "libvorbis"),
    "mp3": ("-c:a", "libmp3lame"),
    "webm": ("-c:a", "libopus"),
    "m4a": ("-c:a", "aac", "-movflags", "+faststart"),
}
LEAKS = ("Traceback", "site-packages", "/tmp/", "/work/", "/root", "/etc/")
TIMEOUT = 60
ENVELOPE_CODES_415 = {"unsupported_audio", "empty_audio"}


# --------------------------------------------------------------------------- assertions


def assert_envelope(r: requests.Response, status: int, code: str | set[str] | None = None, echo: str = "") -> dict:
    """``r`` is the documented JSON error envelope with ``status``; it reveals nothing of the server.

    ``echo``: a string the client itself sent (a path or URL), which the message may repeat.
    """
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "status", "request_id"}, body
    assert body["error"]["request_id"] == r.headers["X-Request-ID"], body
    assert body["error"]["status"] == status, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] in ({code} if isinstance(code, str) else code), body
    assert_no_leak(r.text, echo)
    return body


def assert_no_leak(text: str, echo: str = "") -> None:
    if echo:
        text = text.replace(json.dumps(echo)[1:-1], "").replace(echo, "")
    for leak in LEAKS:
        assert leak not in text, text[:1000]


def assert_transcript(r: requests.Response, max_seconds: float) -> dict:
    """A 200 transcript: text and timed chunks, of no more audio than ``max_seconds``."""
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert_no_leak(r.text)
    body = r.json()
    assert isinstance(body["text"], str) and isinstance(body["chunks"], list), body
    audio_length = float(r.headers["X-Audio-Length"])
    assert 0 < audio_length <= max_seconds, f"decoded {audio_length} s of audio, expected at most {max_seconds:.3f} s"
    for chunk in body["chunks"]:
        start, end = chunk["timestamp"]
        assert 0 <= start <= end <= audio_length + 0.1, chunk
        assert isinstance(chunk["text"], str)
    return body


# --------------------------------------------------------------------------- encoded inputs and their headers


def _wav_header(data: bytes) -> int:
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)
    raise AssertionError("no data chunk")


def _flac_header(data: bytes) -> int:
    assert data[:4] == b"fLaC"
    pos = 4
    while True:
        last, size = data[pos] & 0x80, int.from_bytes(data[pos + 1 : pos + 4], "big")
        pos += 4 + size
        if last:
            return pos


def _ogg_header(data: bytes) -> int:
    """The pages before the first one with audio (header pages have granule position 0)."""
    pos = 0
    while data[pos : pos + 4] == b"OggS":
        granule = struct.unpack("<q", data[pos + 6 : pos + 14])[0]
        segments = data[pos + 26]
        page_len = 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        if granule != 0:
            return pos
        pos += page_len
    raise AssertionError("no audio page")


_MP3_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # MPEG-1 layer III
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # MPEG-2/2.5 layer III
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_header(data: bytes) -> int:
    """The ID3v2 tag plus the Xing/Info frame (a frame that carries metadata, not audio)."""
    pos = 0
    if data[:3] == b"ID3":
        pos = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    head = int.from_bytes(data[pos : pos + 4], "big")
    assert head >> 21 == 0x7FF, "no MPEG frame after the tag"
    version = (head >> 19) & 3
    bitrate = _MP3_BITRATES[1 if version == 3 else 2][(head >> 12) & 0xF] * 1000
    rate = _MP3_RATES[version][(head >> 10) & 3]
    frame_len = (144 if version == 3 else 72) * bitrate // rate + ((head >> 9) & 1)
    frame = data[pos : pos + frame_len]
    assert b"Xing" in frame or b"Info" in frame, "ffmpeg writes a Xing/Info frame first"
    return pos + frame_len


def _ebml_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 1
    while not first & (0x80 >> (length - 1)):
        length += 1
    value = first if keep_marker else first & ((0x80 >> (length - 1)) - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, pos + length


def _webm_header(data: bytes) -> int:
    """Everything before the first Cluster (EBML header, Segment head, SeekHead, Info, Tracks, ...)."""
    element, pos = _ebml_vint(data, 0, keep_marker=True)
    assert element == 0x1A45DFA3
    size, pos = _ebml_vint(data, pos, keep_marker=False)
    pos += size
    element, pos = _ebml_vint(data, pos, keep_marker=True)
    assert element == 0x18538067  # Segment: step into it
    _, pos = _ebml_vint(data, pos, keep_marker=False)
    while True:
        element, body = _ebml_vint(data, pos, keep_marker=True)
        if element == 0x1F43B675:  # Cluster
            return pos
        size, body = _ebml_vint(data, body, keep_marker=False)
        pos = body + size


def _m4a_header(data: bytes) -> int:
    """The boxes before mdat (ftyp, moov, free): sample tables without samples."""
    pos = 0
    while True:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"mdat":
            return pos
        assert size >= 8
        pos += size


HEADER_END: dict[str, Callable[[bytes], int]] = {
    "wav": _wav_header,
    "flac": _flac_header,
    "ogg": _ogg_header,
    "mp3": _mp3_header,
    "webm": _webm_header,
    "m4a": _m4a_header,
}


def ffmpeg_seconds(data: bytes, tmp: Path) -> float:
    """How much audio the ffmpeg CLI gets out of ``data`` (0 when none): the reference for a damaged file."""
    src = tmp / f"ref-{zlib.crc32(data):08x}"
    src.write_bytes(data)
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "quiet", "-i", str(src), "-vn", "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
        capture_output=True,
        check=False,
    ).stdout
    return len(out) / 4 / 16000


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def encoded(sentence_wav, work_dir) -> dict[str, bytes]:
    return {
        fmt: convert(sentence_wav, work_dir / f"sentence.{fmt}", *args).read_bytes() for fmt, args in FORMATS.items()
    }


@pytest.fixture(scope="module")
def full_seconds(encoded, work_dir) -> dict[str, float]:
    return {fmt: ffmpeg_seconds(data, work_dir) for fmt, data in encoded.items()}


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 10]


def corrupted(data: bytes, fmt: str) -> bytes:
    damaged = bytearray(data)
    damaged[100:400] = random.Random(f"corrupt-{fmt}").randbytes(300)
    return bytes(damaged)


def header_only(data: bytes, fmt: str) -> bytes:
    return data[: HEADER_END[fmt](data)]


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module", autouse=True)
def strict_server(tmp_path_factory, model_cache, live_server) -> Iterator[LiveServer]:
    """A second server with the default policy: no URL allow-list and no local directory.

    Both are set to the empty string, as a ``KEY=`` line in an env file or compose file sets them; the README
    says unset means "local paths refused" and "only public addresses". Started without waiting, so the model
    loads while the other tests run (:func:`ready` waits for it); it asks for ``live_server`` first, so the
    model is already converted into the shared cache.
    """
    server = start_server(
        {"CACHE_DIR": str(model_cache), "URL_ALLOWED_NETWORKS": "", "LOCAL_AUDIO_DIR": ""},
        tmp_path_factory.mktemp("logs-strict") / "gunicorn.log",
        tmp_path_factory.mktemp("local-strict"),
        wait_ready=False,
    )
    yield server
    stop_server(server)


def ready(server: LiveServer) -> LiveServer:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()
        try:
            if requests.get(server.url + "/hc", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server never became ready:\n{server.log()}")


@pytest.fixture(scope="module", autouse=True)
def log_offset(live_server) -> int:
    """Where the live server's log stood when this module started."""
    return len(live_server.log_path.read_bytes())


REDIRECTS = {
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-private": "http://10.0.0.1/a.wav",
    "/to-ipv6-loopback": "http://[::1]/a.wav",
    "/to-unspecified": "http://0.0.0.0/a.wav",
    "/to-other-loopback": "http://127.0.0.2/a.wav",
    "/to-file": "file:///etc/passwd",
    "/to-missing": "/missing",
    "/loop": "/loop",
    "/bad-location": "http://[::1/",
}


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A loopback web server the live server may reach (127.0.0.1/32 is on its allow-list)."""

    def do_GET(self):
        location = REDIRECTS.get(self.path)
        self.send_response(404 if location is None else 302)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(server: LiveServer, query: str = "", **kwargs) -> requests.Response:
    return requests.post(server.url + "/asr" + query, timeout=TIMEOUT, **kwargs)


# --------------------------------------------------------------------------- damaged files of each format


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_decodes_partially_or_is_415(live_server, encoded, work_dir, fmt):
    """The first 10 % of the bytes: a prefix of real audio may be transcribed, but only what is there."""
    data = truncated(encoded[fmt])
    r = post(live_server, data=data)
    if r.status_code == 200:
        assert_transcript(r, max_seconds=ffmpeg_seconds(data, work_dir) + 0.5)
    else:
        assert_envelope(r, 415, ENVELOPE_CODES_415)


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupted_file_decodes_or_is_415(live_server, encoded, full_seconds, fmt):
    """Bytes 100..400 overwritten: damage inside the stream may still leave decodable audio."""
    r = post(live_server, data=corrupted(encoded[fmt], fmt))
    if r.status_code == 200:
        assert_transcript(r, max_seconds=full_seconds[fmt] + 0.5)
    else:
        assert_envelope(r, 415, ENVELOPE_CODES_415)


@pytest.mark.parametrize("fmt", FORMATS)
def test_header_without_audio_is_415(live_server, encoded, work_dir, fmt):
    data = header_only(encoded[fmt], fmt)
    assert 0 < len(data) < len(encoded[fmt]) // 2
    assert ffmpeg_seconds(data, work_dir) == 0, "the header alone holds no audio"
    assert_envelope(post(live_server, data=data), 415, ENVELOPE_CODES_415)


def test_truncated_audio_never_carries_another_requests_audio(live_server, encoded, work_dir):
    """A damaged upload's transcript must come from its own bytes, not from memory a previous request used."""
    canary = speak(
        "Purple elephants dance quietly beneath the silver moon while seven violins play a forgotten melody.",
        work_dir / "canary.wav",
    ).read_bytes()
    prefix = truncated(encoded["mp3"])
    for _ in range(2):
        assert post(live_server, data=canary).status_code == 200
        r = post(live_server, data=prefix)
        if r.status_code == 200:
            text = r.json()["text"].lower()
            leaked = [w for w in ("elephant", "purple", "silver", "moon", "violin", "melody") if w in text]
            assert not leaked, f"the truncated mp3 was transcribed as the previous request's audio: {text!r}"
        else:
            assert_envelope(r, 415, ENVELOPE_CODES_415)


# --------------------------------------------------------------------------- not audio at all


def _png() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")
    )


NOT_AUDIO = {
    "zero-bytes": (b"", "application/octet-stream", "empty_audio"),
    "zero-bytes-no-type": (b"", None, "empty_audio"),
    "random-64k": (random.Random(64).randbytes(64 * 1024), "application/octet-stream", "unsupported_audio"),
    "text-as-mpeg": (b"Meeting notes: buy milk, call the plumber.\n" * 50, "audio/mpeg", "unsupported_audio"),
    "png": (_png(), "audio/wav", "unsupported_audio"),
    "png-as-octets": (_png() + bytes(4096), "application/octet-stream", "unsupported_audio"),
    "html": (b"<html><body>" + b"x" * 500 + b"</body></html>", "text/html", "unsupported_audio"),
}


@pytest.mark.parametrize("name", NOT_AUDIO)
def test_not_audio_is_415(live_server, name):
    body, content_type, code = NOT_AUDIO[name]
    headers = {"Content-Type": content_type} if content_type else {}
    assert_envelope(post(live_server, data=body, headers=headers), 415, code)


def test_text_file_named_mp3_in_multipart_is_415(live_server):
    files = {"file": ("song.mp3", b"not an mp3, just text\n" * 100, "audio/mpeg")}
    assert_envelope(post(live_server, files=files), 415, "unsupported_audio")


@pytest.mark.parametrize(
    "files",
    [
        {"other": ("a.wav", b"RIFF", "audio/wav")},  # the file under another field name
        {"file": (None, "a form field, not a file")},
    ],
    ids=["wrong-field", "field-not-file"],
)
def test_multipart_without_a_file_part_is_422(live_server, files):
    assert_envelope(post(live_server, files=files), 422, "invalid_field")


def test_multipart_without_boundary_is_422(live_server):
    r = post(live_server, data=b"--x\r\n\r\n", headers={"Content-Type": "multipart/form-data"})
    assert_envelope(r, 422, "invalid_field")


# --------------------------------------------------------------------------- lying Content-Length


def raw_post(server: LiveServer, headers: dict[str, str], body: bytes, query: str = "") -> tuple[int, bytes, float]:
    """POST with exactly these headers (the Content-Length may lie); status, body, seconds to answer."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    started = time.perf_counter()
    try:
        conn.putrequest("POST", "/asr" + query, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        elapsed = time.perf_counter() - started
        return response.status, response.read(), elapsed
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("content_type", "query"),
    [
        ("application/octet-stream", ""),
        ("audio/wav", "?stream=1"),
        ("application/json", ""),
        ("multipart/form-data; boundary=xyz", ""),
    ],
)
def test_huge_declared_content_length_is_413_without_waiting_for_the_body(live_server, content_type, query):
    status, body, elapsed = raw_post(
        live_server, {"Content-Type": content_type, "Content-Length": str(10**12)}, b"RIFF", query
    )
    assert status == 413, body
    assert elapsed < 3, f"answered after {elapsed:.1f} s: it waited for a body that never comes"
    envelope = json.loads(body)
    assert envelope["error"]["status"] == 413 and envelope["error"]["code"] in {
        "payload_too_large",
        "request_entity_too_large",
    }
    assert_no_leak(body.decode())


# --------------------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize(
    "payload",
    [
        {"url": 5},
        {"url": None},
        {"url": ["a"]},
        {"url": {"u": "x"}},
        {"url": True},
        [],
        "str",
        5,
        None,
        {},
        {"URL": "x"},
    ],
    ids=repr,
)
def test_json_of_the_wrong_shape_is_422(live_server, payload):
    assert_envelope(post(live_server, data=json.dumps(payload), headers={"Content-Type": "application/json"}), 422)


@pytest.mark.parametrize("url", ["", "x" * 8193], ids=["empty", "over-8192-chars"])
def test_url_of_invalid_length_is_422(live_server, url):
    assert_envelope(post(live_server, json={"url": url}), 422, "invalid_field")


@pytest.mark.parametrize(
    "body",
    [b'{"url": ', b"{'url': 'x'}", b"\xff\xfe\x00{", b'{"url": "x"} trailing', b"{url: x}"],
    ids=["cut-off", "single-quotes", "not-utf8", "trailing-garbage", "unquoted"],
)
def test_malformed_json_is_400(live_server, body):
    assert_envelope(post(live_server, data=body, headers={"Content-Type": "application/json"}), 400, "malformed_json")


def test_malformed_json_with_a_json_suffix_type_is_400(live_server):
    r = post(live_server, data=b"{nope", headers={"Content-Type": "application/vnd.asr+json"})
    assert_envelope(r, 400, "malformed_json")


def test_deeply_nested_json_is_a_client_error(live_server):
    """64 KiB of '[' is under the JSON cap; the parser's recursion limit must not turn it into a 500."""
    assert_envelope(post(live_server, data=b"[" * 60000, headers={"Content-Type": "application/json"}), 400)
    nested_url = b'{"url": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    assert_envelope(post(live_server, data=nested_url, headers={"Content-Type": "application/json"}), 400)


def test_lone_surrogate_in_the_path_is_a_client_error(live_server):
    r"""``{"url": "\ud800.wav"}`` is valid JSON but not a valid file name: 4xx, not a 500."""
    r = post(live_server, data=b'{"url": "\\ud800.wav"}', headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert_envelope(r, r.status_code)


# --------------------------------------------------------------------------- URLs: schemes, addresses, redirects


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.mp3",
        "gopher://x",
        "dict://127.0.0.1:11211/stat",
        "javascript://%0aalert(1)",
        "http://",
        "http:///etc/passwd",
        "http://127.0.0.1:99999/a.wav",
        "http://[::1/a.wav",
        "http://exa mple.com/a.wav",
        "http://example.com/a\r\nX-Injected: 1",
    ],
)
def test_unsupported_or_unparsable_url_is_422(live_server, url):
    assert_envelope(post(live_server, json={"url": url}), 422, "invalid_url", echo=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2/",  # loopback, but outside the live server's allow-list 127.0.0.1/32
        "http://127.255.255.254:8000/a.wav",
        "http://[::1]/",
        "http://[::1]:8000/a.wav",
        "http://[::ffff:127.0.0.2]/",  # IPv4-mapped IPv6
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://10.0.0.1/a.wav",
        "http://192.168.1.1/a.wav",
        "http://172.16.0.1/a.wav",
        "http://100.64.0.1/a.wav",  # shared address space
        "http://0.0.0.0/",
        "http://[::]/",
        "http://2130706434/",  # 127.0.0.2 as one decimal number
        "http://0x7f000002/",  # ... in hex
        "http://0177.0.0.2/",  # ... with an octal first byte
        "http://user:secret@10.0.0.1/a.wav",
        "https://10.0.0.1/a.wav",
        "http://224.0.0.1/a.wav",
    ],
)
def test_private_loopback_and_metadata_addresses_are_403(live_server, url):
    body = assert_envelope(post(live_server, json={"url": url}), 403, "url_forbidden", echo=url)
    assert "secret" not in body["error"]["message"]


def test_name_resolving_to_an_allowed_address_is_fetched(live_server):
    """The allow-list is about addresses: "localhost" is 127.0.0.1 here, which the live server may reach.

    It fetches its own /hc (JSON, not audio): 415, which shows the request really went out and came back.
    """
    port = urlsplit(live_server.url).port
    assert_envelope(post(live_server, json={"url": f"http://localhost:{port}/hc"}), 415, "unsupported_audio")


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("http://localhost:{port}/hc", 403, "url_forbidden"),  # a name that resolves to loopback
        ("http://127.0.0.1:{port}/hc", 403, "url_forbidden"),
        ("http://[::ffff:127.0.0.1]:{port}/hc", 403, "url_forbidden"),
        ("{upstream}/to-missing", 403, "url_forbidden"),
    ],
)
def test_default_policy_refuses_loopback_even_when_it_listens(
    strict_server, live_server, upstream, target, status, code
):
    """Without URL_ALLOWED_NETWORKS, a URL naming a live loopback server is refused before connecting."""
    url = target.format(port=urlsplit(live_server.url).port, upstream=upstream)
    assert_envelope(post(ready(strict_server), json={"url": url}), status, code, echo=url)


@pytest.mark.parametrize("path", ["README.md", "/etc/passwd"])
def test_empty_local_audio_dir_refuses_local_paths(strict_server, path):
    """``LOCAL_AUDIO_DIR=`` (empty) must mean disabled, not "the server's working directory"."""
    assert_envelope(post(ready(strict_server), json={"url": path}), 403, "local_paths_disabled", echo=path)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/to-metadata", 403, "url_forbidden"),
        ("/to-private", 403, "url_forbidden"),
        ("/to-ipv6-loopback", 403, "url_forbidden"),
        ("/to-unspecified", 403, "url_forbidden"),
        ("/to-other-loopback", 403, "url_forbidden"),
        ("/to-file", 403, "url_forbidden"),
        ("/loop", 502, "too_many_redirects"),
        ("/bad-location", 502, "bad_redirect"),
        ("/to-missing", 502, "upstream_status"),  # the control: redirects on the allowed host are followed
        ("/missing", 502, "upstream_status"),
    ],
)
def test_redirects_are_checked_at_every_hop(live_server, upstream, path, status, code):
    assert_envelope(post(live_server, json={"url": upstream + path}), status, code)


# --------------------------------------------------------------------------- local paths


@pytest.fixture(scope="module")
def local_files(live_server) -> dict[str, Path]:
    base = live_server.local_dir
    escape = base / "bad-input-escape.wav"
    if not escape.is_symlink():
        escape.symlink_to("/etc/passwd")
    escape_dir = base / "bad-input-etc"
    if not escape_dir.is_symlink():
        escape_dir.symlink_to("/etc")
    notes = base / "bad-input-notes.wav"
    notes.write_text("not audio\n" * 100)
    (base / "bad-input-subdir").mkdir(exist_ok=True)
    return {"escape": escape, "escape_dir": escape_dir, "notes": notes}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("../../etc/passwd", 403, "path_forbidden"),
        ("/etc/passwd", 403, "path_forbidden"),
        ("{base}/../../etc/passwd", 403, "path_forbidden"),
        ("{base}/bad-input-escape.wav", 403, "path_forbidden"),  # a symlink to /etc/passwd
        ("bad-input-escape.wav", 403, "path_forbidden"),
        ("bad-input-etc/passwd", 403, "path_forbidden"),  # through a symlinked directory
        ("/proc/self/environ", 403, "path_forbidden"),
        ("{base}/missing.wav", 404, "file_not_found"),
        ("missing.wav", 404, "file_not_found"),
        ("bad-input-subdir", 404, "file_not_found"),  # a directory, not a file
        ("{base}", 404, "file_not_found"),
        ("a\u0000b.wav", 422, "invalid_path"),
        ("bad-input-notes.wav", 415, "unsupported_audio"),  # inside the directory, but not audio
    ],
)
def test_local_paths(live_server, local_files, path, status, code):
    path = path.format(base=live_server.local_dir)
    assert_envelope(post(live_server, json={"url": path}), status, code, echo=path)


# --------------------------------------------------------------------------- ?stream=1 fails the same way


def _stream_cases(upstream: str, base: Path, header_wav: bytes) -> dict[str, dict]:
    return {
        "garbage": {"data": random.Random(7).randbytes(4096)},
        "empty": {"data": b""},
        "header-only-wav": {"data": header_wav},
        "wrong-type": {"json": {"url": 5}},
        "malformed-json": {"data": b'{"url"', "headers": {"Content-Type": "application/json"}},
        "ftp": {"json": {"url": "ftp://example.com/a.mp3"}},
        "private-address": {"json": {"url": "http://10.0.0.1/a.wav"}},
        "metadata-redirect": {"json": {"url": upstream + "/to-metadata"}},
        "redirect-loop": {"json": {"url": upstream + "/loop"}},
        "traversal": {"json": {"url": "../../etc/passwd"}},
        "missing-file": {"json": {"url": str(base / "missing.wav")}},
    }


STREAM_CASES = list(_stream_cases("", Path(), b""))


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_errors_before_streaming_are_plain_http_errors(live_server, upstream, encoded, case):
    kwargs = _stream_cases(upstream, live_server.local_dir, header_only(encoded["wav"], "wav"))[case]
    plain = post(live_server, **kwargs)
    assert 400 <= plain.status_code < 500 or plain.status_code == 502, plain.text
    for query in ("?stream=1", "?stream=true"):
        r = post(live_server, query, **kwargs)
        assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers  # not NDJSON
        echo = str(kwargs.get("json", {}).get("url", ""))
        assert_envelope(r, plain.status_code, plain.json()["error"]["code"], echo=echo)


def test_invalid_stream_flag_is_422(live_server):
    assert_envelope(post(live_server, "?stream=maybe", data=b"RIFF"), 422)


# --------------------------------------------------------------------------- afterwards (keep these last)


def test_live_server_logged_no_unhandled_errors(live_server, log_offset):
    log = live_server.log_path.read_bytes()[log_offset:].decode(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log, log[-6000:]


def test_server_still_healthy_and_transcribing(live_server, sentence_wav):
    started = time.perf_counter()
    r = requests.get(live_server.url + "/hc", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert time.perf_counter() - started < 1
    r = post(live_server, data=sentence_wav.read_bytes())
    assert r.status_code == 200, r.text
    assert wer(SENTENCE, r.json()["text"]) < 0.3, r.json()["text"]
