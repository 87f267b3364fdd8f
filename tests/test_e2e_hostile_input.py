"""Hostile and broken input over real HTTP: documented 4xx, no leaks, the server keeps serving."""

import http.server
import json
import random
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.speech import SENTENCE, convert, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FORMATS = {
    "wav": (),
    "flac": (),
    "ogg": ("-c:a", "libvorbis"),
    "mp3": (),
    "webm": ("-c:a", "libopus"),
    "m4a": ("-c:a", "aac"),
}
LEAKS = ("Traceback", "site-packages", "/tmp/", "/work/", "/root", "/usr/")


def assert_clean_error(r: requests.Response, status: int | set[int], code: str | None = None, echo: str = "") -> None:
    """A JSON error envelope with an allowed status that reveals nothing of the server.

    ``echo``: the client's own path, which a message may repeat back.
    """
    allowed = {status} if isinstance(status, int) else status
    assert r.status_code in allowed, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == r.status_code and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    text = r.text.replace(json.dumps(echo)[1:-1], "") if echo else r.text
    for leak in LEAKS:
        assert leak not in text, r.text


@pytest.fixture(scope="module")
def encoded(sentence_wav, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded")
    return {fmt: convert(sentence_wav, out / f"s.{fmt}", *args).read_bytes() for fmt, args in FORMATS.items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_decode_partially_or_get_415(live_server, encoded, fmt):
    data = encoded[fmt]
    r = requests.post(live_server.url + "/asr", data=data[: len(data) // 10], timeout=60)
    if r.status_code == 200:  # a prefix of real audio is still audio
        assert isinstance(r.json()["text"], str)
    else:
        assert_clean_error(r, 415)


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_and_header_only_files_never_5xx(live_server, encoded, fmt):
    data = bytearray(encoded[fmt])
    rng = random.Random(fmt)
    data[100:400] = bytes(rng.randrange(256) for _ in range(300))
    r = requests.post(live_server.url + "/asr", data=bytes(data), timeout=60)
    if r.status_code != 200:  # damage inside the stream may still leave decodable audio
        assert_clean_error(r, 415)
    assert_clean_error(requests.post(live_server.url + "/asr", data=encoded[fmt][:44], timeout=60), 415)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/octet-stream"),
        (random.Random(1).randbytes(65536), "application/octet-stream"),
        (b"This is a text file renamed to .mp3\n" * 20, "audio/mpeg"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "audio/wav"),
    ],
)
def test_not_audio_is_415(live_server, body, content_type):
    r = requests.post(live_server.url + "/asr", data=body, headers={"Content-Type": content_type}, timeout=60)
    assert_clean_error(r, 415)


def test_huge_declared_content_length_is_refused_before_the_body(live_server):
    parts = urlsplit(live_server.url)
    started = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 1000000000000\r\n\r\nRIFF"
        )
        reply = sock.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"url": 5}, 422),
        ({"url": None}, 422),
        ({"url": ["a"]}, 422),
        ([], 422),
        ("str", 422),
        ({}, 422),
        ({"url": "file:///etc/passwd"}, 422),
        ({"url": "ftp://example.com/a.mp3"}, 422),
        ({"url": "gopher://example.com/"}, 422),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, 403),
        ({"url": "http://10.0.0.1/a.wav"}, 403),
        ({"url": "http://127.0.0.2/a.wav"}, 403),  # loopback outside the test allow-list 127.0.0.1/32
        ({"url": "http://0.0.0.0/a.wav"}, 403),
        ({"url": "http://[::1]/a.wav"}, 403),
        ({"url": "http://localhost:1/a.wav"}, {403, 502}),  # ::1 refused; 127.0.0.1 allowed but closed
        ({"url": "../../etc/passwd"}, 403),
        ({"url": "/etc/passwd"}, 403),
    ],
)
def test_bad_json_urls_and_paths(live_server, payload, status):
    r = requests.post(live_server.url + "/asr", json=payload, timeout=60)
    assert_clean_error(r, status)


def test_malformed_json_is_400(live_server):
    r = requests.post(
        live_server.url + "/asr", data=b'{"url": ', headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_clean_error(r, 400)


def test_local_traversal_symlink_and_missing_file(live_server):
    base = live_server.local_dir
    link = base / "escape.wav"
    if not link.is_symlink():
        link.symlink_to("/etc/passwd")
    for path, status in ((base / "../../etc/passwd", 403), (link, 403), (base / "missing.wav", 404)):
        r = requests.post(live_server.url + "/asr", json={"url": str(path)}, timeout=30)
        assert_clean_error(r, status, echo=str(path))


class _Redirector(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        targets = {
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-private": "http://10.0.0.1/a.wav",
            "/loop": "/loop",
        }
        self.send_response(302)
        self.send_header("Location", targets.get(self.path, "/loop"))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def redirector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "status"), [("/to-metadata", 403), ("/to-private", 403), ("/loop", 502)])
def test_redirects_are_rechecked(live_server, redirector, path, status):
    r = requests.post(live_server.url + "/asr", json={"url": redirector + path}, timeout=60)
    assert_clean_error(r, status)


@pytest.mark.parametrize("query", ["?stream=1", "?stream=true"])
def test_streaming_requests_fail_the_same_way_before_streaming(live_server, query):
    assert_clean_error(requests.post(live_server.url + "/asr" + query, data=b"junk", timeout=30), 415)
    r = requests.post(live_server.url + "/asr" + query, json={"url": "http://10.0.0.1/x"}, timeout=30)
    assert_clean_error(r, 403)


def test_server_still_healthy_and_transcribing_after_all_that(live_server, sentence_wav):
    started = time.perf_counter()
    assert requests.get(live_server.url + "/hc", timeout=5).status_code == 200
    assert time.perf_counter() - started < 1
    r = requests.post(live_server.url + "/asr", data=sentence_wav.read_bytes(), timeout=120)
    assert r.status_code == 200
    assert wer(SENTENCE, r.json()["text"]) < 0.2
    assert "error" not in json.dumps(r.json())
