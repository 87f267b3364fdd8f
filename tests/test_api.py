"""API layer with a fake engine: routing, validation, error envelope, OpenAPI."""

import json

import pytest

from app import create_app
from app.settings import Settings
from tests.fakes import FakeEngine


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def client(engine, tmp_path):
    app = create_app(Settings(cache_dir=tmp_path, local_audio_dir=tmp_path, max_upload_bytes=2_000_000), engine)
    return app.test_client()


def assert_envelope(response, status, code=None):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "/work/" not in text and "site-packages" not in text


def test_hc_is_503_while_loading_then_200():
    engine = FakeEngine(ready=False)
    client = create_app(Settings(), engine).test_client()
    r = client.get("/hc")
    assert r.status_code == 503 and r.get_json() == {"status": "loading"}
    assert r.headers["Retry-After"]
    engine.state = type(engine.state).READY
    r = client.get("/hc")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "ok" and body["model_id"] == "fake/whisper" and body["device"] == "FakeCPU"
    assert body["version"]


def test_asr_refuses_work_while_loading(sentence_wav):
    client = create_app(Settings(), FakeEngine(ready=False)).test_client()
    r = client.post("/asr", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    assert_envelope(r, 503, "loading")
    assert r.headers["Retry-After"]


def test_failed_model_is_503_with_its_own_code(sentence_wav):
    engine = FakeEngine(ready=False)
    engine.state = type(engine.state).FAILED
    client = create_app(Settings(), engine).test_client()
    assert client.get("/hc").get_json() == {"status": "failed"}
    r = client.post("/asr", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    assert_envelope(r, 503, "model_unavailable")


def test_raw_upload_returns_text_chunks_and_headers(client, sentence_wav):
    r = client.post("/asr", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    assert r.status_code == 200
    body = r.get_json()
    assert body["text"].startswith("second 0")
    assert body["chunks"][0]["timestamp"][0] == 0.0
    for header in ("X-Processing-Time", "X-Audio-Length", "X-Realtime-Factor"):
        assert float(r.headers[header]) >= 0
    assert r.headers["X-Model-ID"] == "fake/whisper" and r.headers["X-GPU-Name"] == "FakeCPU"


def test_multipart_upload(client, sentence_wav):
    with sentence_wav.open("rb") as f:
        r = client.post("/asr", data={"file": (f, "s.wav")}, content_type="multipart/form-data")
    assert r.status_code == 200 and r.get_json()["text"]


def test_multipart_without_file_field(client):
    r = client.post("/asr", data={"other": "x"}, content_type="multipart/form-data")
    assert_envelope(r, 422)


def test_local_path_inside_allowed_dir(client, tmp_path, sentence_wav):
    (tmp_path / "a.wav").write_bytes(sentence_wav.read_bytes())
    r = client.post("/asr", json={"url": str(tmp_path / "a.wav")})
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b'{"url": 5}', "application/json", 422),
        (b'{"url": ""}', "application/json", 422),
        (b"{}", "application/json", 422),
        (b'{"uri": "x"}', "application/json", 422),
        (b"", "application/octet-stream", 415),
        (b"hello, this is text", "text/plain", 415),
        (b"\x00" * 5000, "audio/mpeg", 415),
    ],
)
def test_bad_requests_get_enveloped_4xx(client, engine, body, content_type, status):
    r = client.post("/asr", data=body, content_type=content_type)
    assert_envelope(r, status)
    assert engine.calls == 0


def test_url_schemes_and_private_hosts_are_refused(client):
    assert_envelope(client.post("/asr", json={"url": "file:///etc/passwd"}), 422)
    assert_envelope(client.post("/asr", json={"url": "http://127.0.0.1:1/a.wav"}), 403)
    assert_envelope(client.post("/asr", json={"url": "http://169.254.169.254/latest/meta-data"}), 403)


def test_local_path_outside_allowed_dir(client):
    assert_envelope(client.post("/asr", json={"url": "/etc/passwd"}), 403)
    assert_envelope(client.post("/asr", json={"url": "../../etc/passwd"}), 403)


def test_oversized_body_is_413(client):
    r = client.post("/asr", data=b"\x00" * 2_000_001, content_type="application/octet-stream")
    assert_envelope(r, 413)


def test_unknown_route_and_method_use_the_envelope(client):
    assert_envelope(client.get("/nope"), 404)
    assert_envelope(client.get("/asr"), 405)


def test_openapi_describes_every_route_and_docs_render(client):
    spec = client.get("/openapi.json").get_json()
    assert {"/hc", "/asr"} <= set(spec["paths"])
    post = spec["paths"]["/asr"]["post"]
    assert {"application/json", "application/octet-stream", "multipart/form-data"} <= set(
        post["requestBody"]["content"]
    )
    assert {"200", "400", "413", "415", "422", "503"} <= set(post["responses"])
    assert "X-Realtime-Factor" in post["responses"]["200"]["headers"]
    assert "200" in spec["paths"]["/hc"]["get"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()
    # the page's assets come from this server, not a CDN: /docs works offline
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/docs/assets/{asset}".encode() in docs.data
        r = client.get(f"/docs/assets/{asset}")
        assert r.status_code == 200 and len(r.data) > 10_000
        r.close()
    assert_envelope(client.get("/docs/assets/../../app/settings.py"), 404)


def _ndjson(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


@pytest.mark.parametrize("flag", ["1", "true", "True", "yes"])
def test_stream_returns_ndjson_chunks_then_done(client, sentence_wav, flag):
    r = client.post(f"/asr?stream={flag}", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    lines = _ndjson(r)
    chunks, done = lines[:-1], lines[-1]
    assert len(chunks) >= 2 and all(set(c) == {"timestamp", "text"} for c in chunks)
    assert done["done"] is True
    assert done["text"] == "".join(c["text"] for c in chunks).strip()
    assert done["model_id"] == "fake/whisper" and done["audio_length"] > 0
    plain = client.post("/asr", data=sentence_wav.read_bytes(), content_type="application/octet-stream").get_json()
    assert plain["text"] == done["text"] and plain["chunks"] == chunks


def test_stream_error_after_start_is_a_final_error_line(tmp_path, sentence_wav):
    client = create_app(Settings(cache_dir=tmp_path), FakeEngine(fail_after=1)).test_client()
    r = client.post("/asr?stream=1", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    lines = _ndjson(r)
    assert lines[0]["text"] == " second 0"
    assert lines[-1]["error"]["code"] == "internal_error"
    assert "simulated" not in r.get_data(as_text=True)


def test_stream_errors_before_start_are_plain_http_errors(client):
    assert_envelope(client.post("/asr?stream=1", data=b"junk", content_type="application/octet-stream"), 415)


def test_stream_with_json_url_and_invalid_flag(client, tmp_path, sentence_wav):
    (tmp_path / "a.wav").write_bytes(sentence_wav.read_bytes())
    r = client.post("/asr?stream=1", json={"url": str(tmp_path / "a.wav")})
    assert _ndjson(r)[-1]["done"] is True
    assert_envelope(client.post("/asr?stream=maybe", json={"url": str(tmp_path / "a.wav")}), 422)


@pytest.mark.parametrize(("fmt", "mimetype"), [("srt", "application/x-subrip"), ("vtt", "text/vtt")])
def test_subtitle_formats(client, sentence_wav, fmt, mimetype):
    r = client.post(f"/asr?format={fmt}", data=sentence_wav.read_bytes(), content_type="application/octet-stream")
    assert r.status_code == 200 and r.mimetype == mimetype
    assert float(r.headers["X-Audio-Length"]) > 0
    text = r.get_data(as_text=True)
    assert ("00:00:00,000 --> 00:00:01,000" if fmt == "srt" else "WEBVTT\n\n00:00:00.000 --> 00:00:01.000") in text
    assert "second 0\n" in text


def test_subtitle_format_cannot_stream_and_must_be_known(client, sentence_wav):
    data = sentence_wav.read_bytes()
    r = client.post("/asr?format=srt&stream=1", data=data, content_type="application/octet-stream")
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "invalid_field"
    r = client.post("/asr?format=docx", data=data, content_type="application/octet-stream")
    assert r.status_code == 422
