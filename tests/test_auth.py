"""API_KEY: bearer auth on every route but /hc (and, by settings, the docs and /metrics)."""

import re
import time

import openai
import pytest
import requests

from app import create_app
from app.settings import Settings
from tests.conftest import start_server, stop_server
from tests.fakes import FakeEngine
from tests.speech import SENTENCE, wer

KEY = "s3cret-key_0123456789"
DOCS = {"/docs", "/openapi.json", "/docs/assets/swagger-ui.css"}


def _client(tmp_path, **settings):
    return create_app(Settings(cache_dir=tmp_path, **settings), FakeEngine()).test_client()


def _every_route(client) -> list[tuple[str, str]]:
    """(method, path) of every rule the app serves, with a real file for Swagger UI's assets."""
    routes = []
    for rule in client.application.url_map.iter_rules():
        path = re.sub(r"<path:filename>", "swagger-ui.css", rule.rule)
        assert "<" not in path, f"no sample value for {rule.rule}"
        routes += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    assert ("POST", "/asr") in routes and ("POST", "/v1/audio/transcriptions") in routes and ("GET", "/hc") in routes
    return [*routes, ("GET", "/no/such/route")]


def _assert_401(r, *, openai: bool):
    assert r.status_code == 401, (r.request.path, r.status_code)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.headers["X-Request-ID"]
    error = r.get_json()["error"]
    if openai:
        assert error == {
            "message": error["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    else:
        assert error["code"] == "invalid_api_key" and error["status"] == 401 and error["message"]
        assert error["request_id"] == r.headers["X-Request-ID"]
    assert KEY not in r.get_data(as_text=True)


@pytest.mark.parametrize(
    ("settings", "public"),
    [
        ({}, {"/hc"} | DOCS),
        ({"public_docs": False}, {"/hc"}),
        ({"public_metrics": True}, {"/hc", "/metrics"} | DOCS),
        ({"public_docs": False, "public_metrics": True}, {"/hc", "/metrics"}),
    ],
)
def test_every_route_needs_the_key_except_the_open_ones(tmp_path, settings, public):
    client = _client(tmp_path, api_key=KEY, **settings)
    for method, path in _every_route(client):
        openai = path.startswith("/v1/")
        anonymous = client.open(path, method=method, buffered=True)
        wrong = client.open(path, method=method, buffered=True, headers={"Authorization": "Bearer wrong-" + KEY})
        right = client.open(path, method=method, buffered=True, headers={"Authorization": f"Bearer {KEY}"})
        if path in public:
            assert anonymous.status_code != 401 and wrong.status_code != 401, path
            assert anonymous.status_code == right.status_code, path
        else:
            _assert_401(anonymous, openai=openai)
            _assert_401(wrong, openai=openai)
            assert right.status_code != 401, (method, path)
    # the open routes really answer
    assert client.get("/hc").status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_without_api_key_nothing_asks_for_one(tmp_path):
    client = _client(tmp_path)
    for method, path in _every_route(client):
        r = client.open(path, method=method, buffered=True)
        assert r.status_code != 401 and "WWW-Authenticate" not in r.headers, (method, path)


def test_the_key_works_for_real_requests_and_header_forms(tmp_path, sentence_wav):
    client = _client(tmp_path, api_key=KEY)
    data = sentence_wav.read_bytes()
    wav = "application/octet-stream"
    r = client.post("/asr", data=data, content_type=wav, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.get_json()["text"].startswith("second 0")
    r = client.post("/asr", data=data, content_type=wav, headers={"Authorization": f"bearer   {KEY} "})
    assert r.status_code == 200  # the scheme is case-insensitive, spaces around the token ignored
    for header in (f"Basic {KEY}", KEY, "Bearer", "Bearer ", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Token {KEY}"):
        r = client.post("/asr", data=data, content_type=wav, headers={"Authorization": header})
        _assert_401(r, openai=False)
    assert "needs an API key" in client.get("/v1/models").get_json()["error"]["message"]
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"}).get_json()["error"]["message"]
    assert "not valid" in wrong


def test_api_key_must_be_one_printable_word():
    for bad in ("two words", "tab\there", "caf\u00e9", "nl\n"):
        with pytest.raises(ValueError, match="API_KEY"):
            Settings(api_key=bad)
    assert KEY not in repr(Settings(api_key=KEY))  # a secret: never printed with the settings


def test_openapi_declares_the_bearer_scheme_only_with_a_key(tmp_path):
    spec = _client(tmp_path, api_key=KEY).get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/hc"]["get"]["security"] == []
    assert "401" in spec["paths"]["/asr"]["post"]["responses"]
    assert "401" in spec["paths"]["/metrics"]["get"]["responses"] and "security" not in spec["paths"]["/metrics"]["get"]
    spec = _client(tmp_path, api_key=KEY, public_metrics=True).get("/openapi.json").get_json()
    assert spec["paths"]["/metrics"]["get"]["security"] == []
    spec = _client(tmp_path).get("/openapi.json").get_json()
    assert "security" not in spec and "securitySchemes" not in spec.get("components", {})
    assert "401" not in spec["paths"]["/asr"]["post"]["responses"]


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory, model_cache):
    """gunicorn with API_KEY set (and text logs), serving the embedded model."""
    log_path = tmp_path_factory.mktemp("locked-logs") / "gunicorn.log"
    server = start_server(
        {"CACHE_DIR": str(model_cache), "API_KEY": KEY, "LOG_FORMAT": "text"},
        log_path,
        tmp_path_factory.mktemp("locked-local"),
    )
    yield server
    stop_server(server)


@pytest.mark.e2e
@pytest.mark.slow
def test_openai_sdk_with_right_and_wrong_key(locked_server, sentence_wav):
    def create(api_key: str):
        with (
            openai.OpenAI(base_url=locked_server.url + "/v1", api_key=api_key, max_retries=0, timeout=120) as client,
            sentence_wav.open("rb") as f,
        ):
            return client.audio.transcriptions.create(model="whisper-1", file=("s.wav", f))

    assert wer(SENTENCE, create(KEY).text) < 0.2
    with pytest.raises(openai.AuthenticationError) as caught:
        create("sk-wrong")
    error = caught.value
    assert error.status_code == 401 and error.code == "invalid_api_key" and error.type == "invalid_request_error"
    assert error.request_id and error.response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.e2e
@pytest.mark.slow
def test_live_server_routes_with_and_without_the_key(locked_server, sentence_wav):
    url = locked_server.url
    auth = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(url + "/hc", timeout=30).status_code == 200
    assert requests.get(url + "/docs", timeout=30).status_code == 200
    assert requests.get(url + "/openapi.json", timeout=30).json()["security"] == [{"bearerAuth": []}]
    r = requests.get(url + "/metrics", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(url + "/metrics", headers=auth, timeout=30)
    assert r.status_code == 200 and 'asr_requests_total{method="GET",route="/metrics",status="401"} 1.0' in r.text

    data = sentence_wav.read_bytes()
    wav = {"Content-Type": "application/octet-stream", "X-Request-ID": "locked-1"}
    r = requests.post(url + "/asr", data=data, headers=wav, timeout=300)
    assert r.status_code == 401 and r.headers["X-Request-ID"] == "locked-1"
    assert r.json()["error"]["request_id"] == "locked-1"
    r = requests.post(url + "/asr", data=data, headers={**wav, **auth, "X-Request-ID": "locked-2"}, timeout=300)
    assert r.status_code == 200 and wer(SENTENCE, r.json()["text"]) < 0.2

    # LOG_FORMAT=text: gunicorn's access line and the app's line both show the request id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [line for line in locked_server.log().splitlines() if "[locked-2]" in line]
        if {"gunicorn.access", "app.api.transcribe"} <= {line.split()[4] for line in lines}:
            break
        time.sleep(0.2)
    assert any(" gunicorn.access [locked-2] " in line and '"POST /asr HTTP/1.1" 200' in line for line in lines)
    assert any(" app.api.transcribe [locked-2] transcribed " in line for line in lines)
    assert KEY not in locked_server.log() and "Logging error" not in locked_server.log()
