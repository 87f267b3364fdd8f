"""Server-sent events on /v1 and voice activity detection, through the live gunicorn server.

The client is the official openai SDK (``stream=True`` iterates its typed events;
``chunking_strategy`` turns VAD on), plus plain requests for ``/asr?vad=``.
"""

import time
from types import SimpleNamespace

import numpy as np
import openai
import pytest
import requests
import soundfile

from app.audio.decode import SAMPLE_RATE, decode_audio
from app.inference.chunking import iter_chunks
from tests.speech import MAX_PASSAGE_WER, PASSAGE, SENTENCE, speak, wer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIRST = "The old lighthouse stood on a rocky island at the mouth of the harbor."
SECOND = "The keeper lived alone in a small stone cottage beside the tower."
#: how far (seconds) a segment's time may lie outside the spoken samples: the VAD's 0.4 s
#: padding and Whisper's 20 ms timestamp steps, with room to spare
SLACK_S = 1.0


@pytest.fixture(scope="module")
def client(live_server):
    with openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=300) as c:
        yield c


def _open(path):
    return (path.name, path.read_bytes())


# ---- streaming ------------------------------------------------------------------------
def test_stream_deltas_arrive_early_and_add_up_to_the_plain_transcript(client, passage_wav):
    started = time.perf_counter()
    arrivals, events = [], []
    with client.audio.transcriptions.create(model="whisper-1", file=_open(passage_wav), stream=True) as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        for event in stream:
            arrivals.append(time.perf_counter() - started)
            events.append(event)
    *deltas, done = events
    assert [e.type for e in deltas] == ["transcript.text.delta"] * len(deltas)
    assert done.type == "transcript.text.done"
    assert len(deltas) > 5  # one per segment, as soon as it is final
    # the first window is decoded on its own; the rest follow while the client reads
    # (a bound with room for a CPU shared with other work; decoded in one go the ratio is ~1)
    assert arrivals[0] < 0.75 * arrivals[-1], arrivals
    assert "".join(e.delta for e in deltas) == done.text
    assert wer(PASSAGE, done.text) < MAX_PASSAGE_WER, done.text
    plain = client.audio.transcriptions.create(model="whisper-1", file=_open(passage_wav))
    assert done.text == plain.text


def test_stream_with_text_format_and_what_cannot_stream(client, sentence_wav):
    with client.audio.transcriptions.create(
        model="whisper-1", file=_open(sentence_wav), stream=True, response_format="text"
    ) as stream:
        events = list(stream)
    assert events[-1].type == "transcript.text.done" and wer(SENTENCE, events[-1].text) < 0.2
    for fmt in ("srt", "vtt", "verbose_json"):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.audio.transcriptions.create(
                model="whisper-1", file=_open(sentence_wav), stream=True, response_format=fmt
            )
        assert caught.value.body["param"] == "response_format"
        assert caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as caught:  # errors found before the stream are plain replies
        client.audio.transcriptions.create(model="whisper-1", file=("junk.wav", b"not audio"), stream=True)
    assert caught.value.status_code == 415 and caught.value.body["code"] == "unsupported_audio"


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_client_hanging_up_mid_stream_frees_its_remaining_windows(client, live_server, passage_wav):
    windows_total = len(list(iter_chunks(decode_audio(passage_wav.read_bytes(), max_seconds=600), 30.0, 5.0)))
    assert windows_total >= 6
    before = _metric(requests.get(live_server.url + "/metrics", timeout=5).text, "asr_batch_windows_total")
    with client.audio.transcriptions.create(model="whisper-1", file=_open(passage_wav), stream=True) as stream:
        first = next(iter(stream))
        assert first.type == "transcript.text.delta" and first.delta.strip()
    deadline = time.monotonic() + 60
    while _metric(requests.get(live_server.url + "/metrics", timeout=5).text, "asr_queue_windows") > 0:
        assert time.monotonic() < deadline, "queued windows never drained"
        time.sleep(0.2)
    time.sleep(3)  # give a wrongly still-running request time to show up in the counters
    after = _metric(requests.get(live_server.url + "/metrics", timeout=5).text, "asr_batch_windows_total")
    assert after - before <= 4 < windows_total  # the first window, maybe a batch of two, not the rest


# ---- voice activity detection ---------------------------------------------------------
def _voiced(clip: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(clip) > 0.02)
    return int(loud[0]), int(loud[-1]) + 1


@pytest.fixture(scope="module", params=["silence", "noise"])
def gapped(request, tmp_path_factory):
    """Two sentences with a minute of silence (or low white noise) between: (wav, spoken regions in s)."""
    d = tmp_path_factory.mktemp(f"gap-{request.param}")
    a, b = (decode_audio(speak(t, d / f"{i}.wav").read_bytes(), max_seconds=60) for i, t in enumerate((FIRST, SECOND)))
    minute = 60 * SAMPLE_RATE
    rng = np.random.default_rng(11)
    gap = np.zeros(minute, np.float32) if request.param == "silence" else 0.01 * rng.standard_normal(minute)
    lead = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([lead, a, gap.astype(np.float32), b, lead])
    (a0, a1), (b0, b1) = _voiced(a), _voiced(b)
    off = lead.size + a.size + gap.size
    spoken = [(lead.size + a0, lead.size + a1), (off + b0, off + b1)]
    spoken = [(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in spoken]
    path = d / "gapped.wav"
    soundfile.write(path, audio, SAMPLE_RATE)
    return path, spoken


def _check_vad_segments(segments, spoken, duration):
    """No text in the gap; every segment inside a spoken region (original time); each sentence heard."""
    (a0, a1), (b0, b1) = spoken
    assert duration > 60
    first = [s for s in segments if a0 - SLACK_S <= s.start and s.end <= a1 + SLACK_S]
    second = [s for s in segments if b0 - SLACK_S <= s.start and s.end <= b1 + SLACK_S]
    assert len(first) + len(second) == len(segments), [(s.start, s.end, s.text) for s in segments]
    assert not [s for s in segments if s.end > a1 + SLACK_S and s.start < b0 - SLACK_S]  # nothing in the gap
    assert wer(FIRST, "".join(s.text for s in first)) < 0.3
    assert wer(SECOND, "".join(s.text for s in second)) < 0.3


def test_vad_on_v1_skips_the_gap_and_keeps_original_times(client, gapped):
    path, spoken = gapped
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=_open(path),
        response_format="verbose_json",
        chunking_strategy="auto",
        timestamp_granularities=["word", "segment"],
    )
    _check_vad_segments(result.segments, spoken, result.duration)
    assert wer(f"{FIRST} {SECOND}", result.text) < 0.25, result.text
    # word timestamps are mapped back to the original audio too: each word lies in a spoken region
    (a0, a1), (b0, b1) = spoken
    assert result.words and [w.start for w in result.words] == sorted(w.start for w in result.words)
    for w in result.words:
        assert a0 - SLACK_S <= w.start <= w.end <= a1 + SLACK_S or b0 - SLACK_S <= w.start <= w.end <= b1 + SLACK_S, w
    heard_second = " ".join(w.word for w in result.words if w.start >= b0 - SLACK_S)
    assert wer(SECOND, heard_second) < 0.3, heard_second
    # streamed, with OpenAI's server_vad object (sent as chunking_strategy[...] form fields): same text
    with client.audio.transcriptions.create(
        model="whisper-1",
        file=_open(path),
        stream=True,
        chunking_strategy={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 2000},
    ) as stream:
        events = list(stream)
    assert events[-1].type == "transcript.text.done" and events[-1].text == result.text


def test_vad_on_asr_route(live_server, gapped):
    path, spoken = gapped
    r = requests.post(live_server.url + "/asr?vad=true", data=path.read_bytes(), timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    segments = [SimpleNamespace(start=c["timestamp"][0], end=c["timestamp"][1], text=c["text"]) for c in body["chunks"]]
    _check_vad_segments(segments, spoken, float(r.headers["X-Audio-Length"]))
    assert wer(f"{FIRST} {SECOND}", body["text"]) < 0.25, body["text"]


def test_vad_request_errors_name_the_field(client, sentence_wav):
    for strategy, param in (
        ("sometimes", "chunking_strategy"),
        ({"type": "semantic"}, "chunking_strategy"),
        ({"type": "server_vad", "threshold": 1.5}, "chunking_strategy"),
    ):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.audio.transcriptions.create(model="whisper-1", file=_open(sentence_wav), chunking_strategy=strategy)
        assert caught.value.body["param"] == param
