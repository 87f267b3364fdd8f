"""X-Request-ID and the log lines that carry it, in-process with the fake engine (fast)."""

import io
import json
import logging
import logging.config
import uuid
from datetime import datetime, timedelta

import pytest

from app import create_app
from app.logs import RequestIdFilter, logconfig_dict
from app.settings import Settings
from tests.fakes import FakeEngine


@pytest.fixture
def client(tmp_path):
    return create_app(Settings(cache_dir=tmp_path, max_upload_bytes=2_000_000), FakeEngine()).test_client()


def _is_uuid4(value: str) -> bool:
    return uuid.UUID(value).version == 4 and str(uuid.UUID(value)) == value


def test_a_sane_client_id_is_echoed(client):
    for sent in ("abc-123", "trace:7f/3 span=9", "x" * 128, "  padded  "):
        r = client.get("/hc", headers={"X-Request-ID": sent})
        assert r.headers["X-Request-ID"] == sent.strip()


def test_a_missing_or_insane_id_is_replaced_by_a_uuid4(client):
    seen = set()
    for headers in ({}, {"X-Request-ID": "x" * 129}, {"X-Request-ID": "bad\x01id"}, {"X-Request-ID": "   "}):
        r = client.get("/hc", headers=headers)
        assert _is_uuid4(r.headers["X-Request-ID"])
        seen.add(r.headers["X-Request-ID"])
    assert len(seen) == 4  # a fresh one each time
    r = client.get("/hc", headers={"X-Request-ID": "caf\u00e9"})  # not ASCII
    assert _is_uuid4(r.headers["X-Request-ID"])


def test_errors_and_streams_carry_the_id(client, sentence_wav):
    r = client.get("/nope", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 404 and r.headers["X-Request-ID"] == "err-1"
    assert r.get_json()["error"]["request_id"] == "err-1"
    r = client.post("/asr", data=b"junk", content_type="application/octet-stream", headers={"X-Request-ID": "e-2"})
    assert r.status_code == 415 and r.headers["X-Request-ID"] == "e-2" and r.get_json()["error"]["request_id"] == "e-2"
    # /v1 keeps OpenAI's envelope exactly; the id is in the header, where OpenAI's SDKs read it
    r = client.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        content_type="multipart/form-data",
        headers={"X-Request-ID": "e-3"},
    )
    assert r.status_code == 422 and r.headers["X-Request-ID"] == "e-3"
    assert set(r.get_json()["error"]) == {"message", "type", "param", "code"}
    r = client.post(
        "/asr?stream=1",
        data=sentence_wav.read_bytes(),
        content_type="application/octet-stream",
        headers={"X-Request-ID": "s-4"},
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "s-4"
    assert json.loads(r.get_data(as_text=True).splitlines()[-1])["done"] is True


def _capture(log_format: str, *loggers: str):
    """A handler built like gunicorn's (app.logs.logconfig_dict) on ``loggers``, writing to a buffer."""
    config = logconfig_dict(log_format)["formatters"]["default"]
    formatter = logging.config.DictConfigurator({}).configure_formatter(dict(config))
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)

    def restore() -> None:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)

    return buffer, restore


def test_json_log_lines_of_a_request_carry_its_id_also_from_native_threads(client, sentence_wav):
    buffer, restore = _capture("json", "app.api.transcribe", "app.audio.decode")
    try:
        ok = client.post(
            "/asr",
            data=sentence_wav.read_bytes(),
            content_type="application/octet-stream",
            headers={"X-Request-ID": "r1"},
        )
        # undecodable: app.audio.decode logs (debug) from the native decode thread
        bad = client.post("/asr", data=b"junk", content_type="application/octet-stream", headers={"X-Request-ID": "r2"})
        logging.getLogger("app.api.transcribe").info("outside any request")
    finally:
        restore()
    assert ok.status_code == 200 and bad.status_code == 415
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    done = [x for x in lines if x["logger"] == "app.api.transcribe" and x["message"].startswith("transcribed")]
    assert len(done) == 1 and done[0]["request_id"] == "r1" and done[0]["level"] == "INFO"
    assert datetime.fromisoformat(done[0]["time"]).utcoffset() == timedelta(0) and done[0]["process"] > 0
    decode = [x for x in lines if x["logger"] == "app.audio.decode"]
    assert decode and all(x["request_id"] == "r2" for x in decode)
    outside = [x for x in lines if x["message"] == "outside any request"]
    assert len(outside) == 1 and "request_id" not in outside[0]


def test_text_log_lines_show_the_id_or_a_dash(client, sentence_wav):
    buffer, restore = _capture("text", "app.api.transcribe")
    try:
        client.post(
            "/asr",
            data=sentence_wav.read_bytes(),
            content_type="application/octet-stream",
            headers={"X-Request-ID": "t1"},
        )
        logging.getLogger("app.api.transcribe").warning("outside any request")
    finally:
        restore()
    first, second = buffer.getvalue().splitlines()
    assert " INFO app.api.transcribe [t1] transcribed " in first
    assert second.endswith(" WARNING app.api.transcribe [-] outside any request")


def test_access_records_get_the_response_id_and_typed_fields():
    from gunicorn.glogging import SafeAtoms

    atoms = {"h": "10.1.2.3", "m": "POST", "U": "/asr", "q": "", "s": "200", "B": 612, "L": "0.840000", "a": "curl"}
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, "", 0, "%(s)s", (SafeAtoms(atoms | {"{x-request-id}o": "a-1"}),), None
    )
    assert RequestIdFilter().filter(record)
    assert record.request_id == "a-1" and record.status == 200 and record.bytes == 612 and record.duration_s == 0.84
    assert (record.remote_addr, record.method, record.path, record.user_agent) == ("10.1.2.3", "POST", "/asr", "curl")
    assert not hasattr(record, "query") and record.getMessage() == "200"
    record = logging.LogRecord("gunicorn.access", logging.INFO, "", 0, "%(s)s", (SafeAtoms(atoms),), None)
    assert RequestIdFilter().filter(record) and not hasattr(record, "request_id")  # a reply without the header
