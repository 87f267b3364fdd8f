"""The SIGTERM drain without a server: what a draining app answers, the in-flight count, the stop.

The real thing (gunicorn, signals, a process that exits) is in test_e2e_faults.py.
"""

from types import SimpleNamespace

import gevent
import pydantic
import pytest

from app import create_app
from app.drain import drain_then_stop
from app.settings import Settings
from tests.fakes import FakeEngine


@pytest.fixture
def app(tmp_path):
    return create_app(Settings(cache_dir=tmp_path), FakeEngine())


def test_draining_app_answers_503_to_probes_and_new_work(app, sentence_wav):
    client = app.test_client()
    assert client.get("/hc").status_code == 200
    app.extensions["asr_drain"].begin()
    hc = client.get("/hc")
    assert hc.status_code == 503 and hc.get_json() == {"status": "draining"}
    assert int(hc.headers["Retry-After"]) >= 1
    r = client.post("/asr", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "draining"
    assert int(r.headers["Retry-After"]) >= 1
    with sentence_wav.open("rb") as f:
        v1 = client.post("/v1/audio/transcriptions", data={"file": (f, "s.wav"), "model": "whisper-1"})
    assert v1.status_code == 503
    assert v1.get_json()["error"] == {
        "message": v1.get_json()["error"]["message"],
        "type": "server_error",
        "param": None,
        "code": "draining",
    }
    assert app.extensions["asr_engine"].calls == 0  # nothing reached the engine


def test_a_stream_counts_as_in_flight_until_its_body_is_closed(app, sentence_wav):
    drain = app.extensions["asr_drain"]
    client = app.test_client()
    response = client.post(
        "/asr?stream=1", data=sentence_wav.read_bytes(), content_type="application/octet-stream", buffered=False
    )
    assert response.status_code == 200
    assert drain.in_flight == 1 and not drain.wait_idle(0)
    drain.begin()  # SIGTERM now: the open stream still finishes
    lines = list(response.response)
    assert b'"done": true' in lines[-1]
    response.close()
    assert drain.in_flight == 0 and drain.wait_idle(0)
    assert client.get("/hc", buffered=True).get_json() == {"status": "draining"}
    assert drain.in_flight == 0  # a finished (closed) plain request leaves no count behind


def test_drain_stops_the_worker_once_the_last_request_ends(app):
    drain = app.extensions["asr_drain"]
    worker = SimpleNamespace(alive=True)
    drain._enter()  # a request in flight
    stopper = gevent.spawn(drain_then_stop, worker, drain, prestop_s=0.2, timeout_s=10)
    gevent.sleep(0.3)
    assert drain.draining and worker.alive  # waits for the request
    drain._leave()
    stopper.join(5)
    assert stopper.successful() and worker.alive is False


def test_drain_timeout_ends_the_worker_at_once(app):
    drain = app.extensions["asr_drain"]
    worker = SimpleNamespace(alive=True)
    drain._enter()  # a request that never ends
    with pytest.raises(SystemExit):
        drain_then_stop(worker, drain, prestop_s=0, timeout_s=0.2)
    drain._leave()


def test_drain_must_fit_in_the_graceful_timeout():
    with pytest.raises(pydantic.ValidationError, match="GRACEFUL_TIMEOUT_S"):
        Settings(graceful_timeout_s=30, drain_timeout_s=25, drain_prestop_s=5)
    Settings(graceful_timeout_s=30, drain_timeout_s=20, drain_prestop_s=5)
