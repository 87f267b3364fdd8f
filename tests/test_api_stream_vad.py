"""/v1 server-sent events and the VAD request fields, with a fake engine (no model)."""

import httpx2
import openai
import pytest

from app import create_app
from app.audio.vad import VadParams
from app.settings import Settings
from tests.fakes import FakeEngine


def _sdk(app) -> openai.OpenAI:
    """The official SDK talking to the Flask app in-process."""
    http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://test")
    return openai.OpenAI(base_url="http://test/v1", api_key="x", max_retries=0, http_client=http)


def test_events_in_openai_shape(tmp_path, sentence_wav):
    engine = FakeEngine()
    client = _sdk(create_app(Settings(cache_dir=tmp_path), engine))
    stream = client.audio.transcriptions.create(
        model="whisper-1", file=("s.wav", sentence_wav.read_bytes()), stream=True
    )
    events = list(stream)
    seconds = len(events) - 1  # the fake engine: one segment per started second of audio
    assert seconds >= 8
    assert [e.delta for e in events[:-1]] == ["second 0"] + [f" second {i}" for i in range(1, seconds)]
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == "".join(e.delta for e in events[:-1])


def test_an_error_after_the_stream_began_is_a_final_error_event(tmp_path, sentence_wav):
    app = create_app(Settings(cache_dir=tmp_path), FakeEngine(fail_after=2))
    client = _sdk(app)
    stream = client.audio.transcriptions.create(
        model="whisper-1", file=("s.wav", sentence_wav.read_bytes()), stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for event in stream:
            received.append(event.delta)
    assert received == ["second 0", " second 1"]
    assert caught.value.body["type"] == "server_error" and caught.value.body["code"] == "internal_error"
    assert "simulated" not in str(caught.value.body)
    raw = app.test_client().post(
        "/v1/audio/transcriptions",
        data={"model": "m", "stream": "true", "file": (sentence_wav.open("rb"), "s.wav")},
    )
    assert raw.status_code == 200 and raw.mimetype == "text/event-stream"
    body = raw.get_data(as_text=True)
    assert body.endswith("\n\n") and body.split("\n\n")[-2].startswith('data: {"type": "error"')
    assert "simulated" not in body and "Traceback" not in body


@pytest.mark.parametrize(
    ("default", "query", "expected"),
    [(False, "", False), (False, "?vad=true", True), (True, "", True), (True, "?vad=false", False)],
)
def test_asr_vad_parameter_and_its_default(tmp_path, sentence_wav, default, query, expected):
    engine = FakeEngine()
    client = create_app(Settings(cache_dir=tmp_path, vad_filter=default), engine).test_client()
    for stream in ("", "stream=1"):
        url = "/asr" + query + (("&" if query else "?") + stream if stream else "")
        r = client.post(url, data=sentence_wav.read_bytes(), content_type="application/octet-stream")
        assert r.status_code == 200
        assert engine.last_options.vad is expected and engine.last_options.vad_params is None


@pytest.mark.parametrize(
    ("fields", "vad", "params"),
    [
        ({}, False, None),
        ({"vad": "true"}, True, None),
        ({"chunking_strategy": "auto"}, True, None),
        ({"chunking_strategy": "auto", "vad": "true"}, True, None),
        ({"chunking_strategy[type]": "server_vad"}, True, VadParams(0.5, 2.0, 0.4)),
        (
            {
                "chunking_strategy[type]": "server_vad",
                "chunking_strategy[threshold]": "0.6",
                "chunking_strategy[silence_duration_ms]": "1500",
                "chunking_strategy[prefix_padding_ms]": "200",
            },
            True,
            VadParams(0.6, 1.5, 0.2),
        ),
        ({"chunking_strategy": '{"type": "server_vad", "threshold": 0.3}'}, True, VadParams(0.3, 2.0, 0.4)),
    ],
)
def test_v1_vad_fields(tmp_path, sentence_wav, fields, vad, params):
    engine = FakeEngine()
    client = create_app(Settings(cache_dir=tmp_path), engine).test_client()
    r = client.post(
        "/v1/audio/transcriptions", data={"model": "m", **fields, "file": (sentence_wav.open("rb"), "s.wav")}
    )
    assert r.status_code == 200, r.get_json()
    assert engine.last_options.vad is vad and engine.last_options.vad_params == params


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"chunking_strategy": "sometimes"}, "chunking_strategy"),
        ({"chunking_strategy": "{not json"}, "chunking_strategy"),
        ({"chunking_strategy": "[1, 2]"}, "chunking_strategy"),
        ({"chunking_strategy[type]": "semantic_vad"}, "chunking_strategy"),
        ({"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "2"}, "chunking_strategy"),
        ({"chunking_strategy[type]": "server_vad", "chunking_strategy[silence_duration_ms]": "x"}, "chunking_strategy"),
        ({"chunking_strategy": "auto", "vad": "false"}, "vad"),
        ({"vad": "maybe"}, "vad"),
        ({"stream": "true", "response_format": "srt"}, "response_format"),
    ],
)
def test_v1_invalid_vad_and_stream_fields_are_422(tmp_path, sentence_wav, fields, param):
    engine = FakeEngine()
    client = create_app(Settings(cache_dir=tmp_path), engine).test_client()
    r = client.post(
        "/v1/audio/transcriptions", data={"model": "m", **fields, "file": (sentence_wav.open("rb"), "s.wav")}
    )
    assert r.status_code == 422
    error = r.get_json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert engine.calls == 0
