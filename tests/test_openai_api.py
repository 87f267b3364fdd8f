"""The /v1 routes through the official openai SDK against the live gunicorn server."""

import io
import itertools

import openai
import pytest
import srt
import webvtt

from tests.speech import SENTENCE, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(live_server):
    with openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120) as c:
        yield c


def _create(client, sentence_wav, **kwargs):
    with sentence_wav.open("rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=("s.wav", f), **kwargs)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["embedded/whisper-tiny.en"]


def test_json_and_text(client, sentence_wav):
    assert wer(SENTENCE, _create(client, sentence_wav).text) < 0.2
    text = _create(client, sentence_wav, response_format="text")
    assert isinstance(text, str) and wer(SENTENCE, text) < 0.2


def test_verbose_json_segments_are_timed(client, sentence_wav):
    result = _create(client, sentence_wav, response_format="verbose_json", timestamp_granularities=["segment"])
    assert result.language == "english"
    assert result.duration == pytest.approx(8.8, abs=2.5)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and all(s.start < s.end <= result.duration + 0.01 for s in result.segments)
    assert "".join(s.text for s in result.segments).strip() == result.text


def test_srt_and_vtt_parse_and_cover_the_speech(client, sentence_wav):
    subs = list(srt.parse(_create(client, sentence_wav, response_format="srt")))
    assert len(subs) >= 2
    assert wer(SENTENCE, " ".join(s.content.replace("\n", " ") for s in subs)) < 0.2
    assert all(s.start < s.end for s in subs) and all(a.end <= b.start for a, b in itertools.pairwise(subs))
    assert all(len(line) <= 42 for s in subs for line in s.content.splitlines())
    vtt = webvtt.from_buffer(io.StringIO(_create(client, sentence_wav, response_format="vtt")))
    assert [c.text.replace("\n", " ") for c in vtt] == [s.content.replace("\n", " ") for s in subs]
    assert vtt[-1].end_in_seconds > 5


def test_errors_are_openai_shaped_and_name_the_field(client, sentence_wav):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _create(client, sentence_wav, response_format="json", timestamp_granularities=["word"])
    error = caught.value.body
    assert error["param"] == "timestamp_granularities[]" and error["type"] == "invalid_request_error"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _create(client, sentence_wav, language="de")
    assert caught.value.body["param"] == "language"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _create(client, sentence_wav, response_format="mp4")
    assert caught.value.body["param"] == "response_format"
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("junk.wav", b"not audio"))
    assert caught.value.status_code == 415 and caught.value.body["code"] == "unsupported_audio"


def test_english_only_model_refuses_translation(client, live_server, sentence_wav):
    import warnings

    import requests

    with warnings.catch_warnings(), sentence_wav.open("rb") as f:
        warnings.simplefilter("ignore", DeprecationWarning)  # openai 3.x marks translations deprecated
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.audio.translations.create(model="whisper-1", file=("s.wav", f))
    assert caught.value.body["param"] == "model" and "English-only" in caught.value.body["message"]
    r = requests.post(live_server.url + "/asr?task=translate", data=sentence_wav.read_bytes(), timeout=120)
    assert r.status_code == 422 and "English-only" in r.json()["error"]["message"]
    r = requests.post(live_server.url + "/asr?language=en", data=sentence_wav.read_bytes(), timeout=120)
    assert r.status_code == 200 and r.json()["language"] == "en" and wer(SENTENCE, r.json()["text"]) < 0.2


def test_asr_route_serves_subtitles_too(live_server, sentence_wav):
    import requests

    r = requests.post(live_server.url + "/asr?format=vtt", data=sentence_wav.read_bytes(), timeout=120)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/vtt")
    cues = webvtt.from_buffer(io.StringIO(r.text))
    assert wer(SENTENCE, " ".join(c.text.replace("\n", " ") for c in cues)) < 0.2
