"""Backpressure and stalled uploads against a real gunicorn server with tight limits."""

import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import start_server, stop_server
from tests.speech import SENTENCE, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory, model_cache):
    server = start_server(
        {
            "CACHE_DIR": str(model_cache),
            "BATCH_SIZE": "2",
            "MAX_QUEUED_WINDOWS": "6",
            "UPLOAD_TIMEOUT_S": "1.5",
        },
        tmp_path_factory.mktemp("logs-tight") / "gunicorn.log",
        tmp_path_factory.mktemp("local-tight"),
    )
    yield server
    stop_server(server)


def _queued_windows(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return float(next(line for line in text.splitlines() if line.startswith("asr_queue_windows ")).split()[1])


def test_full_queue_answers_429_at_once_then_recovers(tight_server, long_wav, sentence_wav):
    long_file = long_wav.read_bytes()  # 29 windows, run two at a time
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(requests.post, tight_server.url + "/asr", data=long_file, timeout=300)
        deadline = time.monotonic() + 60
        while _queued_windows(tight_server.url) == 0:  # until the first request is decoded and queued
            assert time.monotonic() < deadline and not first.done()
            time.sleep(0.05)
        started = time.perf_counter()
        r = requests.post(tight_server.url + "/asr", data=long_file, timeout=60)
        refused_in = time.perf_counter() - started
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
        assert refused_in < 2.0  # refused up front (decode only), not after waiting in line
        assert requests.get(tight_server.url + "/hc", timeout=5).status_code == 200
        assert first.result().status_code == 200  # the admitted request is unaffected
    r = requests.post(tight_server.url + "/asr", data=sentence_wav.read_bytes(), timeout=120)
    assert r.status_code == 200
    assert wer(SENTENCE, r.json()["text"]) < 0.3


def _read_one_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(v for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:]) if k.lower() == b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_stalled_upload_times_out_with_408(tight_server, sentence_wav):
    parts = urlsplit(tight_server.url)
    with ThreadPoolExecutor(1) as pool, socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\0" * 1000
        )
        started = time.perf_counter()
        # while the upload stalls, the same worker answers probes and transcribes other requests
        other = pool.submit(requests.post, tight_server.url + "/asr", data=sentence_wav.read_bytes(), timeout=120)
        probes = []
        for _ in range(5):
            probe_started = time.perf_counter()
            assert requests.get(tight_server.url + "/hc", timeout=5).status_code == 200
            probes.append(time.perf_counter() - probe_started)
            time.sleep(0.1)
        reply = _read_one_response(sock)
        waited = time.perf_counter() - started
        assert other.result().status_code == 200
        assert wer(SENTENCE, other.result().json()["text"]) < 0.3
    assert reply.startswith("HTTP/1.1 408"), reply
    assert '"upload_timeout"' in reply
    assert 1.0 < waited < 5.0
    assert max(probes) < 0.5, probes
    assert requests.get(tight_server.url + "/hc", timeout=5).status_code == 200


def test_trickling_upload_times_out_with_408(tight_server):
    """A body that keeps coming, but too slowly: the deadline is on the whole upload, not per read."""
    parts = urlsplit(tight_server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
        )
        started = time.perf_counter()
        sock.setblocking(False)
        reply = b""
        while time.perf_counter() - started < 10:
            try:
                sock.sendall(b"\0" * 100)  # 100 bytes every 0.2 s: the 100 kB would take 200 s
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
            try:
                reply += sock.recv(65536)
            except BlockingIOError:
                continue
            if b"\r\n\r\n" in reply:
                break
        waited = time.perf_counter() - started
        if b"\r\n\r\n" not in reply:  # the server answered and closed while we were sending
            sock.setblocking(True)
            with contextlib.suppress(OSError):
                reply += sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert 1.0 < waited < 5.0
    assert requests.get(tight_server.url + "/hc", timeout=5).status_code == 200
