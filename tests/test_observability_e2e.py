"""/metrics values and JSON log lines after known requests to the live gunicorn server."""

import json
import time
import uuid

import pytest
import requests
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from tests.speech import SENTENCE, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WAV = {"Content-Type": "application/octet-stream"}


def _scrape(url: str) -> dict:
    r = requests.get(url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _decoded_seconds(path) -> float:
    """The file's length as the server decodes it: resampled to 16 kHz, whole samples."""
    info = soundfile.info(path)
    return round(info.frames * 16000 / info.samplerate) / 16000


def test_metrics_after_two_transcriptions_and_one_client_error(live_server, sentence_wav):
    before = _scrape(live_server.url)
    started = time.monotonic()
    data = sentence_wav.read_bytes()
    replies = [requests.post(live_server.url + "/asr", data=data, headers=WAV, timeout=300) for _ in range(2)]
    bad = requests.post(live_server.url + "/asr", data=b"not audio at all", headers=WAV, timeout=60)
    wall = time.monotonic() - started
    after = _scrape(live_server.url)

    assert [r.status_code for r in replies] == [200, 200] and bad.status_code == 415
    assert all(wer(SENTENCE, r.json()["text"]) < 0.2 for r in replies)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # requests by route, method and status; the first scrape is counted in the second
    assert delta("asr_requests_total", route="/asr", method="POST", status="200") == 2
    assert delta("asr_requests_total", route="/asr", method="POST", status="415") == 1
    assert delta("asr_requests_total", route="/metrics", method="GET", status="200") == 1
    assert delta("asr_request_seconds_count", route="/asr") == 3

    # audio seconds: received (decoded) and transcribed are the file's length twice; the 415 adds nothing
    seconds = _decoded_seconds(sentence_wav)
    assert 5 < seconds < 15
    assert delta("asr_audio_received_seconds_total") == pytest.approx(2 * seconds, abs=1e-3)
    assert delta("asr_audio_transcribed_seconds_total") == pytest.approx(2 * seconds, abs=1e-3)
    for r in replies:
        assert float(r.headers["X-Audio-Length"]) == pytest.approx(seconds, abs=1e-3)

    # processing seconds and the realtime factor agree with the replies' timing headers
    processing = [float(r.headers["X-Processing-Time"]) for r in replies]
    assert delta("asr_processing_seconds_total") == pytest.approx(sum(processing), abs=2e-3)
    assert 0 < sum(processing) < wall
    assert delta("asr_realtime_factor_count") == 2
    assert delta("asr_realtime_factor_sum") == pytest.approx(sum(seconds / p for p in processing), rel=1e-2)
    assert delta("asr_realtime_factor_bucket", le="+Inf") == 2

    # one 30 s window per request, each through the queue into its own batch (the requests were sequential)
    assert delta("asr_queue_wait_seconds_count") == 2
    assert delta("asr_queue_wait_seconds_bucket", le="+Inf") == 2
    assert 0 <= delta("asr_queue_wait_seconds_sum") < wall
    assert delta("asr_batch_windows_total") == 2
    assert delta("asr_batches_total") == 2
    assert delta("asr_batch_size_count") == 2 and delta("asr_batch_size_sum") == 2
    assert delta("asr_batch_size_bucket", le="1") == 2

    # state: ready, nothing queued, a model load time
    assert _value(after, "asr_ready") == 1
    assert _value(after, "asr_queue_windows") == 0
    assert _value(after, "asr_model_load_seconds") > 0
    # histogram buckets are cumulative
    waits = sorted(
        (float(dict(labels)["le"]), v) for (name, labels), v in after.items() if name == "asr_queue_wait_seconds_bucket"
    )
    assert [v for _, v in waits] == sorted(v for _, v in waits)


def _log_lines_with(server, request_id: str, *, loggers: set[str], timeout: float = 30) -> list[dict]:
    """The server's log lines mentioning ``request_id`` (each must be JSON), once ``loggers`` all wrote one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if request_id in line]
        if loggers <= {x["logger"] for x in lines} or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def test_log_lines_are_json_and_carry_the_request_id(live_server, sentence_wav):
    request_id = f"obs-{uuid.uuid4().hex}"
    r = requests.post(
        live_server.url + "/asr",
        data=sentence_wav.read_bytes(),
        headers={**WAV, "X-Request-ID": request_id},
        timeout=300,
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == request_id

    lines = _log_lines_with(live_server, request_id, loggers={"gunicorn.access", "app.api.transcribe"})
    assert lines and all(x["request_id"] == request_id for x in lines)
    access = [x for x in lines if x["logger"] == "gunicorn.access"]
    assert len(access) == 1
    assert access[0]["method"] == "POST" and access[0]["path"] == "/asr" and access[0]["status"] == 200
    assert access[0]["duration_s"] > 0 and access[0]["level"] == "INFO" and access[0]["time"]
    done = [x for x in lines if x["logger"] == "app.api.transcribe"]
    assert len(done) == 1 and done[0]["message"].startswith("transcribed ")

    # gunicorn's own lines go through the same JSON formatter
    boot = [line for line in live_server.log().splitlines() if "Listening at" in line]
    assert boot and json.loads(boot[0])["logger"] == "gunicorn.error"
    assert "Logging error" not in live_server.log()


def test_errors_and_streams_echo_the_id_and_log_it(live_server, sentence_wav):
    r = requests.post(live_server.url + "/asr", data=b"junk", headers={**WAV, "X-Request-ID": "obs-415"}, timeout=60)
    assert r.status_code == 415 and r.headers["X-Request-ID"] == "obs-415"
    assert r.json()["error"]["request_id"] == "obs-415"

    stream_id = f"obs-stream-{uuid.uuid4().hex}"
    with requests.post(
        live_server.url + "/asr?stream=1",
        data=sentence_wav.read_bytes(),
        headers={**WAV, "X-Request-ID": stream_id},
        stream=True,
        timeout=300,
    ) as r:
        assert r.status_code == 200 and r.headers["X-Request-ID"] == stream_id
        assert json.loads(list(r.iter_lines())[-1])["done"] is True
    access = [
        x
        for x in _log_lines_with(live_server, stream_id, loggers={"gunicorn.access"})
        if x["logger"] == "gunicorn.access"
    ]
    assert len(access) == 1 and access[0]["status"] == 200 and access[0]["request_id"] == stream_id

    # an unusable id is replaced, and the replacement is what is logged
    r = requests.get(live_server.url + "/hc", headers={"X-Request-ID": "x" * 200}, timeout=30)
    replaced = r.headers["X-Request-ID"]
    assert uuid.UUID(replaced).version == 4
    access = _log_lines_with(live_server, replaced, loggers={"gunicorn.access"})
    assert [x["path"] for x in access if x["logger"] == "gunicorn.access"] == ["/hc"]
