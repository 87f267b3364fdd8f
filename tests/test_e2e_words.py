"""Word timestamps through the live gunicorn server: the openai SDK on /v1 and /asr."""

import difflib
import json

import numpy as np
import openai
import pytest
import requests
import soundfile

from tests.speech import normalize, place_words

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORDS = ["apple", "river", "mountain", "yellow", "window", "garden", "thunder", "silver"]
STARTS = [1.0, 4.2, 7.5, 10.1, 13.6, 17.0, 20.4, 23.3]
#: isolated words measured within 0.04 s of the truth (tests/test_word_timestamps.py)
TOLERANCE_S = 0.3


@pytest.fixture(scope="module")
def words_wav(speech_dir):
    path = speech_dir / "placed-words.wav"
    soundfile.write(path, place_words(WORDS, STARTS, 25.0, speech_dir), 16000)
    return path


@pytest.fixture(scope="module")
def client(live_server):
    with openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=180) as c:
        yield c


def start_errors(words: list[dict]) -> list[float]:
    """Predicted minus true start, for each placed word the transcript has (matched in order)."""
    predicted = [normalize(w["word"]) for w in words]
    matcher = difflib.SequenceMatcher(None, WORDS, predicted, autojunk=False)
    return [
        words[block.b + k]["start"] - STARTS[block.a + k]
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    ]


def check_words(words: list[dict], text: str) -> None:
    errors = start_errors(words)
    assert len(errors) >= 6, text  # tiny.en may mishear a word or two
    assert max(map(abs, errors)) <= TOLERANCE_S, (np.round(errors, 2), text)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["start"] <= w["end"] <= 25.0 for w in words)


def test_openai_sdk_word_timestamps(client, words_wav):
    with words_wav.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=("w.wav", f), response_format="verbose_json", timestamp_granularities=["word"]
        )
    words = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words]
    check_words(words, result.text)
    assert all(w["word"] == w["word"].strip() and w["word"] for w in words)  # OpenAI's words: no spaces
    assert " ".join(w["word"] for w in words) == result.text.strip()
    assert not result.segments  # only the granularity asked for


def test_openai_sdk_word_and_segment_timestamps_together(client, words_wav):
    with words_wav.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=("w.wav", f),
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.words and result.segments
    for seg in result.segments:
        inside = [w for w in result.words if seg.start <= w.start < seg.end]
        assert all(w.end <= seg.end for w in inside)
    assert sum(len(s.text.split()) for s in result.segments) == len(result.words)


def test_asr_return_timestamps_word_json_and_stream(live_server, words_wav):
    data = words_wav.read_bytes()
    r = requests.post(live_server.url + "/asr?return_timestamps=word", data=data, timeout=180)
    assert r.status_code == 200, r.text
    body = r.json()
    words = [w for chunk in body["chunks"] for w in chunk["words"]]
    check_words(words, body["text"])
    for chunk in body["chunks"]:
        start, end = chunk["timestamp"]
        assert "".join(w["word"] for w in chunk["words"]) == chunk["text"]
        assert all(start <= w["start"] <= w["end"] <= end for w in chunk["words"])

    streamed = requests.post(live_server.url + "/asr?stream=1&return_timestamps=word", data=data, timeout=180)
    assert streamed.status_code == 200
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert lines[-1]["done"] is True
    assert [c["words"] for c in lines[:-1]] == [c["words"] for c in body["chunks"]]

    plain = requests.post(live_server.url + "/asr", data=data, timeout=180).json()
    assert plain["text"] == body["text"] and all("words" not in c for c in plain["chunks"])


@pytest.mark.parametrize(
    "query", ["return_timestamps=word&format=srt", "return_timestamps=word&format=vtt", "return_timestamps=letters"]
)
def test_asr_word_option_errors(live_server, words_wav, query):
    r = requests.post(f"{live_server.url}/asr?{query}", data=words_wav.read_bytes(), timeout=60)
    assert r.status_code == 422, r.text
    assert "return_timestamps" in r.text
