"""fetch_url against local HTTP(S) servers, the address policy, and local-path resolution.

Every server here listens on 127.0.0.1; host names are mapped by a fake resolver, so no
test ever touches the network beyond loopback.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests.adapters
import soundfile as sf

import app.audio.fetch as fetch_mod
from app.audio.fetch import fetch_url, is_address_permitted, read_local_file, resolve_local_path
from app.errors import ApiError
from app.settings import Settings

LOOPBACK = ("127.0.0.0/8",)


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = _wav_bytes()
BIG = b"\0" * 5000


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stop: threading.Event
    requests_seen: list[tuple[str, dict[str, str]]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up early (413, 504 tests) are expected


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.server.requests_seen.append((parts.path, dict(self.headers.items())))
        path = parts.path
        if path == "/audio.wav":
            self._send(200, WAV, {"Content-Type": "audio/wav"})
        elif path == "/redirect":
            self._send(int(query.get("status", ["302"])[0]), headers={"Location": query["to"][0]})
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/chain/{left - 1}" if left > 1 else "/audio.wav"})
        elif path == "/big":
            self._send(200, BIG)
        elif path == "/big-no-length":
            self._send(200, BIG, length=False)  # HTTP/1.0: the body ends when the connection closes
        elif path == "/stall":
            self.server.stop.wait(5)
            self._send(200, WAV)
        elif path == "/stall-body":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\0" * 10)
            self.wfile.flush()
            self.server.stop.wait(5)
        else:
            self._send(404, b"not found")


def _start(server: _Server) -> threading.Thread:
    server.stop = threading.Event()
    server.requests_seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def _stop(server: _Server, thread: threading.Thread) -> None:
    server.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    thread = _start(srv)
    yield srv
    _stop(srv, thread)


@pytest.fixture
def base(server: _Server) -> str:
    server.requests_seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str] | None]:
    """Map host names to address lists (``None``: name not found); literals pass through."""
    table: dict[str, list[str] | None] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        if host in table:
            addresses = table[host]
            if addresses is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
                if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses
            ]
        try:
            ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "test: unexpected lookup") from None
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every outgoing socket connect."""
    attempts: list[Any] = []

    def connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise ConnectionRefusedError("test: connecting is not allowed here")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def _settings(**kwargs: Any) -> Settings:
    kwargs.setdefault("url_connect_timeout_s", 2.0)
    kwargs.setdefault("url_read_timeout_s", 2.0)
    return Settings(**kwargs)


def _error(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def _assert_error(err: ApiError, status: int, code: str) -> None:
    assert (err.status, err.code) == (status, code), err.message
    assert "Traceback" not in err.message
    assert "Errno" not in err.message


# --------------------------------------------------------------------------- happy paths


def test_fetch_allowed_loopback(base: str, server: _Server) -> None:
    assert fetch_url(f"{base}/audio.wav", _settings(url_allowed_networks=LOOPBACK)) == WAV
    _, headers = server.requests_seen[-1]
    assert headers["User-Agent"] == "asr-api/0.1"


def test_follows_redirects_up_to_the_limit(base: str) -> None:
    settings = _settings(url_allowed_networks=LOOPBACK, url_max_redirects=3)
    assert fetch_url(f"{base}/chain/3", settings) == WAV
    _assert_error(_error(lambda: fetch_url(f"{base}/chain/4", settings)), 502, "too_many_redirects")


def test_zero_redirects_allowed(base: str) -> None:
    settings = _settings(url_allowed_networks=LOOPBACK, url_max_redirects=0)
    _assert_error(_error(lambda: fetch_url(f"{base}/chain/1", settings)), 502, "too_many_redirects")


def test_hostname_resolving_to_allowed_address(base: str, server: _Server, fake_dns: dict) -> None:
    port = server.server_address[1]
    fake_dns["audio.example.test"] = ["10.0.0.1", "127.0.0.1"]  # the refused one is skipped
    assert fetch_url(f"http://audio.example.test:{port}/audio.wav", _settings(url_allowed_networks=LOOPBACK)) == WAV


def test_credentials_are_sent_but_never_logged(base: str, server: _Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = server.server_address[1]
    url = f"http://user:s3cr3t@127.0.0.1:{port}/missing?token=t0ken"
    _assert_error(_error(lambda: fetch_url(url, _settings(url_allowed_networks=LOOPBACK))), 502, "upstream_status")
    _, headers = server.requests_seen[-1]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:s3cr3t").decode()
    assert "s3cr3t" not in caplog.text  # nowhere, not even urllib3's own debug lines
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("app."))
    assert "/missing" in ours
    assert "t0ken" not in ours  # query strings may carry signed-URL tokens


# --------------------------------------------------------------------------- address policy


def test_loopback_without_allow_list_is_forbidden(base: str, server: _Server) -> None:
    err = _error(lambda: fetch_url(f"{base}/audio.wav", _settings()))
    _assert_error(err, 403, "url_forbidden")
    assert err.message == "The URL resolves to an address this server may not fetch from."
    assert server.requests_seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://10.1.2.3/",
        "https://192.168.0.1/",
    ],
)
def test_private_and_metadata_addresses_are_refused_before_connecting(url: str, no_connect: list) -> None:
    _assert_error(_error(lambda: fetch_url(url, _settings())), 403, "url_forbidden")
    assert no_connect == []


def test_metadata_stays_refused_under_broad_allow_list(no_connect: list) -> None:
    settings = _settings(url_allowed_networks=("0.0.0.0/0", "169.254.0.0/16"))
    _assert_error(_error(lambda: fetch_url("http://169.254.169.254/", settings)), 403, "url_forbidden")
    assert no_connect == []


def test_public_name_resolving_to_private_address(base: str, server: _Server, fake_dns: dict) -> None:
    port = server.server_address[1]
    fake_dns["public.example.test"] = ["127.0.0.1"]
    err = _error(lambda: fetch_url(f"http://public.example.test:{port}/audio.wav", _settings()))
    _assert_error(err, 403, "url_forbidden")
    fake_dns["public.example.test"] = ["10.0.0.1"]
    err = _error(lambda: fetch_url(f"http://public.example.test:{port}/audio.wav", _settings()))
    _assert_error(err, 403, "url_forbidden")
    assert server.requests_seen == []


def test_connected_peer_is_checked_again(
    base: str, server: _Server, fake_dns: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the socket ends up somewhere else than the vetted address, nothing is sent."""
    port = server.server_address[1]
    fake_dns["rebind.example.test"] = ["10.9.9.9"]
    real_create = fetch_mod.create_connection
    dialled: list[Any] = []

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        dialled.append(address)
        return real_create(("127.0.0.1", port), *args, **kwargs)

    monkeypatch.setattr(fetch_mod, "create_connection", create_connection)
    settings = _settings(url_allowed_networks=("10.0.0.0/8",))
    err = _error(lambda: fetch_url(f"http://rebind.example.test:{port}/audio.wav", settings))
    _assert_error(err, 403, "url_forbidden")
    assert dialled == [("10.9.9.9", port)]
    assert server.requests_seen == []


def test_redirect_to_metadata_is_refused(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_create = fetch_mod.create_connection
    dialled: list[Any] = []

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        dialled.append(address[0])
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(fetch_mod, "create_connection", create_connection)
    settings = _settings(url_allowed_networks=("127.0.0.1/32",))
    err = _error(lambda: fetch_url(f"{base}/redirect?to=http://169.254.169.254/latest/meta-data/", settings))
    _assert_error(err, 403, "url_forbidden")
    assert "redirects" in err.message
    assert dialled == ["127.0.0.1"]


def test_redirect_to_name_mapped_to_private_address(base: str, fake_dns: dict) -> None:
    fake_dns["internal.example.test"] = ["10.0.0.7"]
    settings = _settings(url_allowed_networks=("127.0.0.1/32",))
    err = _error(lambda: fetch_url(f"{base}/redirect?to=http://internal.example.test/x.wav", settings))
    _assert_error(err, 403, "url_forbidden")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/a.wav", "gopher://x/"])
def test_redirect_to_other_scheme_is_refused(base: str, target: str) -> None:
    settings = _settings(url_allowed_networks=LOOPBACK)
    _assert_error(_error(lambda: fetch_url(f"{base}/redirect?to={target}", settings)), 403, "url_forbidden")


def test_relative_redirect(base: str) -> None:
    assert fetch_url(f"{base}/redirect?to=/audio.wav&status=307", _settings(url_allowed_networks=LOOPBACK)) == WAV


@pytest.mark.parametrize(
    ("address", "allowed", "expected"),
    [
        ("8.8.8.8", (), True),
        ("2606:4700:4700::1111", (), True),
        ("127.0.0.1", (), False),
        ("10.0.0.1", (), False),
        ("172.16.5.4", (), False),
        ("192.168.1.1", (), False),
        ("100.64.0.1", (), False),
        ("169.254.1.1", (), False),
        ("224.0.0.1", (), False),
        ("239.255.255.250", (), False),
        ("255.255.255.255", (), False),
        ("240.0.0.1", (), False),
        ("0.0.0.0", (), False),
        ("::", (), False),
        ("::1", (), False),
        ("fe80::1%eth0", (), False),
        ("fc00::1", (), False),
        ("ff02::1", (), False),
        ("::ffff:10.0.0.1", (), False),
        ("::ffff:8.8.8.8", (), True),
        ("2002:0a00:0001::1", (), False),  # 6to4 wrapping 10.0.0.1
        ("64:ff9b::a00:1", (), False),  # NAT64 wrapping 10.0.0.1
        ("169.254.169.254", (), False),
        ("fd00:ec2::254", (), False),
        ("100.100.100.200", (), False),
        ("10.0.0.1", ("10.0.0.0/8",), True),
        ("::ffff:10.0.0.1", ("10.0.0.0/8",), True),
        ("127.0.0.1", ("10.0.0.0/8",), False),
        ("169.254.169.254", ("169.254.0.0/16",), False),
        ("169.254.169.254", ("0.0.0.0/0",), False),
        ("169.254.169.254", ("169.254.169.254/32",), True),
        ("100.100.100.200", ("100.64.0.0/10",), False),
        ("100.100.100.201", ("100.64.0.0/10",), True),
        ("not-an-ip", (), False),
    ],
)
def test_address_policy(address: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert is_address_permitted(address, allowed) is expected


# --------------------------------------------------------------------------- URL validation


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://x",
        "gopher://example.com/",
        "data:audio/wav;base64,AAAA",
        "example.com/a.wav",
        "localhost:8000/a.wav",
        "http://",
        "http:///path",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "",
        "   ",
    ],
)
def test_invalid_urls(url: str, no_connect: list) -> None:
    err = _error(lambda: fetch_url(url, _settings()))
    _assert_error(err, 422, "invalid_url")
    assert "/etc" not in err.message
    assert no_connect == []


# --------------------------------------------------------------------------- upstream failures


def test_redirect_loop(base: str) -> None:
    err = _error(lambda: fetch_url(f"{base}/loop", _settings(url_allowed_networks=LOOPBACK)))
    _assert_error(err, 502, "too_many_redirects")


@pytest.mark.parametrize("path", ["/big", "/big-no-length"])
def test_body_over_cap(base: str, path: str) -> None:
    settings = _settings(url_allowed_networks=LOOPBACK, max_upload_bytes=1000)
    err = _error(lambda: fetch_url(f"{base}{path}", settings))
    _assert_error(err, 413, "payload_too_large")
    assert "1000 bytes" in err.message


def test_body_at_cap_is_ok(base: str) -> None:
    settings = _settings(url_allowed_networks=LOOPBACK, max_upload_bytes=len(BIG))
    assert fetch_url(f"{base}/big-no-length", settings) == BIG


@pytest.mark.parametrize("path", ["/stall", "/stall-body"])
def test_stalled_upstream_times_out(base: str, path: str) -> None:
    settings = _settings(url_allowed_networks=LOOPBACK, url_read_timeout_s=0.5)
    _assert_error(_error(lambda: fetch_url(f"{base}{path}", settings)), 504, "upstream_timeout")


def test_connect_timeout(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        raise TimeoutError("timed out")

    monkeypatch.setattr(fetch_mod, "create_connection", create_connection)
    err = _error(lambda: fetch_url(f"{base}/audio.wav", _settings(url_allowed_networks=LOOPBACK)))
    _assert_error(err, 504, "upstream_timeout")


def test_upstream_404(base: str) -> None:
    err = _error(lambda: fetch_url(f"{base}/nope", _settings(url_allowed_networks=LOOPBACK)))
    _assert_error(err, 502, "upstream_status")
    assert "404" in err.message


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _error(lambda: fetch_url(f"http://127.0.0.1:{port}/", _settings(url_allowed_networks=LOOPBACK)))
    _assert_error(err, 502, "upstream_unreachable")


def test_unknown_host(fake_dns: dict) -> None:
    fake_dns["nx.example.test"] = None
    err = _error(lambda: fetch_url("http://nx.example.test/a.wav", _settings()))
    _assert_error(err, 502, "upstream_unreachable")


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Server, Path, list[str]]]:
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=audio.example.test",
         "-addext", "subjectAltName=DNS:audio.example.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    sni: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sslobj, name, ctx: sni.append(name)  # type: ignore[assignment]
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = _start(srv)
    yield srv, cert, sni
    _stop(srv, thread)


def test_https_verifies_certificate_and_sends_sni(
    tls_server: tuple[_Server, Path, list[str]], fake_dns: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, cert, sni = tls_server
    fake_dns["audio.example.test"] = ["127.0.0.1"]
    url = f"https://audio.example.test:{srv.server_address[1]}/audio.wav"
    settings = _settings(url_allowed_networks=LOOPBACK)

    # Self-signed: not trusted by default.
    _assert_error(_error(lambda: fetch_url(url, settings)), 502, "upstream_tls_error")
    assert sni[-1] == "audio.example.test"

    # Trusted: works, and the certificate is checked against the URL's host name.
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", str(cert))
    assert fetch_url(url, settings) == WAV
    wrong_name = f"https://127.0.0.1:{srv.server_address[1]}/audio.wav"
    _assert_error(_error(lambda: fetch_url(wrong_name, settings)), 502, "upstream_tls_error")


# --------------------------------------------------------------------------- local paths


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    (root / "a.wav").write_bytes(WAV)
    (root / "sub" / "b.wav").write_bytes(WAV)
    (tmp_path / "secret.txt").write_text("secret")
    (root / "escape.wav").symlink_to(tmp_path / "secret.txt")
    (root / "inside-link.wav").symlink_to(root / "a.wav")
    return root


def test_local_paths_disabled() -> None:
    err = _error(lambda: resolve_local_path("a.wav", _settings()))
    _assert_error(err, 403, "local_paths_disabled")
    assert "LOCAL_AUDIO_DIR" in err.message


def test_local_ok(audio_dir: Path) -> None:
    settings = _settings(local_audio_dir=audio_dir)
    assert resolve_local_path("a.wav", settings) == (audio_dir / "a.wav").resolve()
    assert resolve_local_path(str(audio_dir / "sub" / "b.wav"), settings) == (audio_dir / "sub" / "b.wav").resolve()
    assert resolve_local_path("sub/../a.wav", settings) == (audio_dir / "a.wav").resolve()
    assert resolve_local_path("inside-link.wav", settings) == (audio_dir / "a.wav").resolve()
    assert read_local_file("sub/b.wav", settings) == WAV


@pytest.mark.parametrize("path", ["../../etc/passwd", "../secret.txt", "/etc/passwd", "escape.wav", "../nope.wav"])
def test_local_outside_is_forbidden(audio_dir: Path, path: str) -> None:
    settings = _settings(local_audio_dir=audio_dir)
    err = _error(lambda: read_local_file(path, settings))
    _assert_error(err, 403, "path_forbidden")
    assert str(audio_dir) not in err.message


@pytest.mark.parametrize("path", ["missing.wav", "sub", "sub/missing/x.wav"])
def test_local_missing_or_not_a_file(audio_dir: Path, path: str) -> None:
    err = _error(lambda: resolve_local_path(path, _settings(local_audio_dir=audio_dir)))
    _assert_error(err, 404, "file_not_found")
    assert repr(path) in err.message
    assert str(audio_dir) not in err.message


def test_local_too_big(audio_dir: Path) -> None:
    settings = _settings(local_audio_dir=audio_dir, max_upload_bytes=100)
    _assert_error(_error(lambda: resolve_local_path("a.wav", settings)), 413, "payload_too_large")


def test_local_dir_missing(tmp_path: Path) -> None:
    err = _error(lambda: resolve_local_path("a.wav", _settings(local_audio_dir=tmp_path / "nope")))
    _assert_error(err, 403, "local_paths_disabled")
    assert str(tmp_path) not in err.message


# --------------------------------------------------------------------------- gevent

GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import sys

import gevent

from app.audio.fetch import fetch_url
from app.errors import ApiError
from app.settings import Settings


def run(url, **kwargs):
    try:
        return len(fetch_url(url, Settings(**kwargs)))
    except ApiError as exc:
        return exc.code


ok, refused = sys.argv[1], "http://10.0.0.1/"
# The server fetches URLs on the request's greenlet (cooperative sockets), never in the
# native threadpool, so that is the path checked here.
jobs = [
    gevent.spawn(run, ok, url_allowed_networks=("127.0.0.0/8",)),
    gevent.spawn(run, ok, url_allowed_networks=("127.0.0.0/8",)),
    gevent.spawn(run, refused),
    gevent.spawn(run, refused),
]
print([job.get(timeout=30) for job in jobs])
"""


def test_fetch_works_on_concurrent_gevent_greenlets(base: str) -> None:
    pytest.importorskip("gevent")
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, f"{base}/audio.wav"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([len(WAV), len(WAV), "url_forbidden", "url_forbidden"]), proc.stderr
