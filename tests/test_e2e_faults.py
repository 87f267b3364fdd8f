"""Faults against a real gunicorn server: SIGTERM under load, a drain that times out, a failed model load.

Related faults covered elsewhere, not repeated here: a client hanging up mid-stream or
before a plain reply frees its queued windows (test_e2e_server.py); a stalled or trickling
upload gets 408 while the worker keeps serving (test_e2e_limits.py).
"""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import soundfile

from app.inference.chunking import SAMPLE_RATE, iter_chunks
from tests.conftest import start_server, stop_server
from tests.speech import MAX_PASSAGE_WER, PASSAGE, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[1])


def _windows(wav) -> int:
    audio, rate = soundfile.read(wav, dtype="float32")
    return len(list(iter_chunks(audio, 30 * rate / SAMPLE_RATE, 5 * rate / SAMPLE_RATE)))


def test_sigterm_finishes_accepted_requests_and_streams_then_exits(tmp_path, model_cache, passage_wav, sentence_wav):
    batch = 4  # the accepted requests keep the model busy for several batches
    # a drain long enough for a machine shared with other test runs (the default is 50 s)
    drain = {"DRAIN_TIMEOUT_S": "240", "GRACEFUL_TIMEOUT_S": "300"}
    env = {"CACHE_DIR": str(model_cache), "BATCH_SIZE": str(batch), **drain}
    server = start_server(env, tmp_path / "gunicorn.log", tmp_path)
    try:
        passage = passage_wav.read_bytes()
        finished: dict[str, float] = {}
        lock = threading.Lock()

        def plain(name: str):
            r = requests.post(server.url + "/asr", data=passage, timeout=600)
            with lock:
                finished[name] = time.monotonic()
            return r.status_code, r.json()

        def streamed(name: str):
            with requests.post(server.url + "/asr?stream=1", data=passage, stream=True, timeout=600) as r:
                lines = [json.loads(line) for line in r.iter_lines() if line]
            with lock:
                finished[name] = time.monotonic()
            return r.status_code, lines

        before = _metric(server.url, "asr_batch_windows_total")
        total = 2 * _windows(passage_wav)
        with ThreadPoolExecutor(2) as pool:
            jobs = {"plain": pool.submit(plain, "plain"), "stream": pool.submit(streamed, "stream")}
            deadline = time.monotonic() + 120
            # every request accepted: all its windows queued, running (one batch at most) or run;
            # each request queues all its windows at once, so a missing one would lack all of them
            while (
                _metric(server.url, "asr_batch_windows_total") - before + _metric(server.url, "asr_queue_windows")
                < total - batch
            ):
                assert time.monotonic() < deadline, "the requests never both reached the queue"
                assert not any(j.done() for j in jobs.values()), {k: j.result() for k, j in jobs.items() if j.done()}
                time.sleep(0.05)

            os.killpg(server.process.pid, signal.SIGTERM)  # as stop_server / Kubernetes / docker stop do
            time.sleep(0.5)  # the master forwards it; the worker marks itself draining
            hc = requests.get(server.url + "/hc", timeout=5)
            assert hc.status_code == 503 and hc.json() == {"status": "draining"}
            assert int(hc.headers["Retry-After"]) >= 1
            refused = requests.post(server.url + "/asr", data=sentence_wav.read_bytes(), timeout=30)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "draining"
            assert int(refused.headers["Retry-After"]) >= 1
            with sentence_wav.open("rb") as f:
                refused_v1 = requests.post(
                    server.url + "/v1/audio/transcriptions",
                    files={"file": ("s.wav", f, "audio/wav")},
                    data={"model": "whisper-1"},
                    timeout=30,
                )
            assert refused_v1.status_code == 503, refused_v1.text
            assert refused_v1.json()["error"]["type"] == "server_error"
            assert refused_v1.json()["error"]["code"] == "draining"
            # the probes above ran while the accepted work was still going on
            assert not all(j.done() for j in jobs.values())
            assert server.process.poll() is None

            results = {name: job.result() for name, job in jobs.items()}
        status, body = results["plain"]
        assert status == 200, body
        assert wer(PASSAGE, body["text"]) < MAX_PASSAGE_WER, body["text"]
        status, lines = results["stream"]
        assert status == 200
        done = lines[-1]
        assert done.get("done") is True, lines[-1]  # the whole stream, not cut short
        assert wer(PASSAGE, done["text"]) < MAX_PASSAGE_WER, done["text"]
        assert "".join(c["text"] for c in lines[:-1]).strip() == done["text"]
        assert done["text"] == body["text"]

        server.process.wait(30)
        exited = time.monotonic()
        assert exited - max(finished.values()) < 10  # promptly, not at graceful_timeout (60 s)
        assert server.process.returncode == 0
        log = server.log()
        assert "SIGTERM: draining, 2 request(s) in flight" in log, log
        assert "drained: no request in flight" in log
        assert "graceful timeout" not in log.lower()
    finally:
        stop_server(server)


def test_idle_server_exits_within_seconds_of_sigterm(tmp_path, model_cache):
    server = start_server({"CACHE_DIR": str(model_cache)}, tmp_path / "gunicorn.log", tmp_path)
    assert requests.get(server.url + "/hc", timeout=5).status_code == 200
    started = time.monotonic()
    stop_server(server)  # SIGTERM, then SIGKILL only after 30 s
    took = time.monotonic() - started
    # before the worker_exit hook stopped the engine, the worker hung until graceful_timeout (60 s)
    assert took < 10, server.log()
    assert server.process.returncode == 0
    assert "Worker exiting" in server.log()


def test_model_that_fails_to_load_leaves_hc_503_failed_with_a_clear_log_line(tmp_path, model_cache, sentence_wav):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    server = start_server(
        {"CACHE_DIR": str(model_cache), "MODEL_ID": str(bad)}, tmp_path / "gunicorn.log", tmp_path, wait_ready=False
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.process.poll() is None, server.log()
            try:
                hc = requests.get(server.url + "/hc", timeout=2)
            except requests.RequestException:  # the worker still booting (importing torch)
                hc = None
            if hc is not None and hc.json()["status"] == "failed":
                break
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.25)
        assert hc.status_code == 503
        r = requests.post(server.url + "/asr", data=sentence_wav.read_bytes(), timeout=30)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        time.sleep(1)
        assert requests.get(server.url + "/hc", timeout=5).json() == {"status": "failed"}  # stays failed
        assert f"model {bad} failed to load; /hc stays 503" in server.log()
        assert "ModelLoadError" in server.log()
    finally:
        started = time.monotonic()
        stop_server(server)
    assert time.monotonic() - started < 10


def test_drain_timeout_drops_what_is_left_and_exits_at_once(tmp_path, model_cache, long_wav):
    env = {"CACHE_DIR": str(model_cache), "DRAIN_TIMEOUT_S": "2", "GRACEFUL_TIMEOUT_S": "60"}
    server = start_server(env, tmp_path / "gunicorn.log", tmp_path)
    try:
        with ThreadPoolExecutor(1) as pool:
            # ~10 min of audio: far more than 2 s of work, even on a fast machine
            job = pool.submit(requests.post, server.url + "/asr", data=long_wav.read_bytes(), timeout=300)
            deadline = time.monotonic() + 120
            while _metric(server.url, "asr_queue_windows") == 0:
                assert time.monotonic() < deadline and not job.done()
                time.sleep(0.05)
            os.killpg(server.process.pid, signal.SIGTERM)
            sent = time.monotonic()
            server.process.wait(45)
            took = time.monotonic() - sent
            with pytest.raises(requests.ConnectionError):  # dropped, not answered
                job.result()
        # the drain's 2 s, then out at once: not after the batch running, not at graceful_timeout
        assert took < 12, server.log()
        log = server.log()
        assert "drain timed out after 2.0s with 1 request(s) still in flight" in log
        assert "worker exiting with 1 request(s) abandoned" in log
    finally:
        stop_server(server)
