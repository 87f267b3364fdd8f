"""Voice activity detection on real (espeak-ng) speech, and the time map back to the original audio."""

import numpy as np
import pytest

from app.audio.decode import SAMPLE_RATE, decode_audio
from app.audio.timemap import TimeMap, compact
from app.audio.vad import BLOCK_FRAMES, FRAME, VadParams, VoiceDetector, _torch_threads
from tests.speech import speak

FIRST = "The old lighthouse stood on a rocky island at the mouth of the harbor."
SECOND = "The keeper lived alone in a small stone cottage beside the tower."


# ---- time map ------------------------------------------------------------------------
def test_time_map_maps_each_piece_back_to_where_it_was_cut_from():
    sr = SAMPLE_RATE
    tm = TimeMap.from_regions([(1 * sr, 3 * sr), (10 * sr, 14 * sr), (30 * sr, 31 * sr)])
    assert tm.compact_seconds == 7
    # inside the pieces: original = piece start + offset into the piece
    assert tm.to_original(0.0) == 1.0
    assert tm.to_original(1.5) == 2.5
    assert tm.to_original(2.5) == 10.5
    assert tm.to_original(6.25) == 30.25
    # where two pieces meet (compacted 2.0 s), a start belongs to the later piece, an end to the earlier
    assert tm.to_original(2.0) == 10.0
    assert tm.to_original(2.0, end=True) == 3.0
    assert tm.to_original(6.0) == 30.0 and tm.to_original(6.0, end=True) == 14.0
    # a segment spanning a cut keeps both ends in original time
    assert (tm.to_original(1.0), tm.to_original(4.0, end=True)) == (2.0, 12.0)
    # outside the compacted audio: clamped to the first / last piece
    assert tm.to_original(-0.5) == 1.0
    assert tm.to_original(9.0, end=True) == 31.0 and tm.to_original(9.0) == 31.0


def test_time_map_puts_times_in_the_padding_between_pieces_on_the_speech_side():
    sr = SAMPLE_RATE
    # pieces of 0.4 s padding + speech + 0.4 s padding; compacted, they meet at 4.0 s
    tm = TimeMap.from_regions([(1 * sr, 5 * sr), (60 * sr, 64 * sr)], snap_s=0.4)
    # a segment starting in the first piece's trailing padding starts where the next piece does
    assert tm.to_original(3.7) == 60.0 and tm.to_original(3.5) == 3.5 + 1
    # a segment ending in the second piece's leading padding ends where the first piece does
    assert tm.to_original(4.3, end=True) == 5.0 and tm.to_original(4.5, end=True) == 60.5
    # the first piece's start and the last piece's end do not move
    assert tm.to_original(0.1) == 1.1 and tm.to_original(7.9, end=True) == 63.9


def test_compact_keeps_exactly_the_regions_in_order():
    audio = np.arange(100, dtype=np.float32)
    out, tm = compact(audio, [(10, 20), (50, 55)])
    assert out.tolist() == list(range(10, 20)) + list(range(50, 55))
    assert tm.original_starts == (10 / SAMPLE_RATE, 50 / SAMPLE_RATE)
    assert tm.compact_starts == (0.0, 10 / SAMPLE_RATE)
    empty, tm = compact(audio, [])
    assert empty.shape == (0,) and tm.compact_seconds == 0.0


# ---- speech regions on built audio ----------------------------------------------------
@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    d = tmp_path_factory.mktemp("vad")
    return tuple(
        decode_audio(speak(text, d / f"{i}.wav").read_bytes(), max_seconds=60) for i, text in enumerate((FIRST, SECOND))
    )


def _voiced(clip: np.ndarray) -> tuple[int, int]:
    """First and last sample of a clip that is not espeak-ng's leading/trailing silence."""
    loud = np.flatnonzero(np.abs(clip) > 0.02)
    return int(loud[0]), int(loud[-1]) + 1


def _layout(sentences, gap: np.ndarray, lead_s: float = 1.0):
    """lead silence, sentence 1, gap, sentence 2, 1 s silence -> (audio, spoken [start, end) sample ranges)."""
    a, b = sentences
    lead = np.zeros(round(lead_s * SAMPLE_RATE), np.float32)
    tail = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([lead, a, gap, b, tail])
    (a0, a1), (b0, b1) = _voiced(a), _voiced(b)
    off_b = lead.size + a.size + gap.size
    return audio, [(lead.size + a0, lead.size + a1), (off_b + b0, off_b + b1)]


@pytest.fixture(scope="module")
def detector():
    return VoiceDetector()


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_regions_cover_each_sentence_and_skip_a_minute_between(detector, sentences, kind):
    minute = 60 * SAMPLE_RATE
    rng = np.random.default_rng(7)
    gap = np.zeros(minute, np.float32) if kind == "silence" else (0.01 * rng.standard_normal(minute)).astype("float32")
    audio, spoken = _layout(sentences, gap)
    params = VadParams(threshold=0.5, min_silence_s=2.0, pad_s=0.4)
    regions = detector.speech_regions(audio, params)
    assert len(regions) == 2, regions
    pad = round(0.4 * SAMPLE_RATE)
    for (r0, r1), (s0, s1) in zip(regions, spoken, strict=True):
        assert r0 <= s0 and r1 >= s1  # every spoken sample is kept...
        # ...and little else (a region ends once the silence after it reaches min_silence_s)
        assert r0 >= s0 - pad - SAMPLE_RATE // 2 and r1 <= s1 + pad + 2 * SAMPLE_RATE
    kept, tm = compact(audio, regions)
    assert kept.size < 12 * SAMPLE_RATE  # a minute and more of the 70 s is gone
    # the second sentence's first spoken sample maps back to where it was said
    b_in_compact = (regions[0][1] - regions[0][0] + spoken[1][0] - regions[1][0]) / SAMPLE_RATE
    assert tm.to_original(b_in_compact) == pytest.approx(spoken[1][0] / SAMPLE_RATE, abs=1e-6)


def test_short_pauses_stay_inside_one_region(detector, sentences):
    audio, spoken = _layout(sentences, np.zeros(SAMPLE_RATE, np.float32))  # 1 s < min silence 2 s
    regions = detector.speech_regions(audio, VadParams(min_silence_s=2.0, pad_s=0.4))
    assert len(regions) == 1
    assert regions[0][0] <= spoken[0][0] and regions[0][1] >= spoken[1][1]


def test_silence_and_noise_alone_have_no_speech(detector):
    rng = np.random.default_rng(3)
    assert detector.speech_regions(np.zeros(30 * SAMPLE_RATE, np.float32)) == []
    assert detector.speech_regions((0.01 * rng.standard_normal(30 * SAMPLE_RATE)).astype("float32")) == []
    assert detector.speech_regions(np.zeros(0, np.float32)) == []


def test_long_audio_is_scored_in_blocks_like_one_pass(detector, sentences):
    """Blocks (each a separate call on the model thread) give the scores of one pass over the file."""
    import torch

    block_s = BLOCK_FRAMES * FRAME / SAMPLE_RATE
    # the second sentence straddles the first block border
    gap = np.zeros(round((block_s - 3.0) * SAMPLE_RATE) - sentences[0].size - SAMPLE_RATE, np.float32)
    audio, spoken = _layout(sentences, gap)
    assert spoken[1][0] < BLOCK_FRAMES * FRAME < spoken[1][1]
    calls = []

    def run(fn, *args):
        calls.append(fn.__name__)
        return fn(*args)

    blocked = detector.probabilities(audio, run)
    assert calls.count("_block_probabilities") == 2
    with _torch_threads(1), torch.inference_mode():  # one pass over the whole file, as silero runs it
        whole = detector._model.audio_forward(torch.from_numpy(audio), SAMPLE_RATE)[0].numpy()
    assert blocked.shape == whole.shape
    assert np.abs(blocked - whole).max() < 0.02
    regions = detector.speech_regions(audio, VadParams(), run)
    assert len(regions) == 2 and regions[1][0] <= spoken[1][0] and regions[1][1] >= spoken[1][1]


def test_using_the_detector_leaves_torch_threads_alone(sentences):
    """silero_vad's import sets torch.set_num_threads(1); the detector undoes that."""
    import sys

    import torch

    for name in [m for m in sys.modules if m == "silero_vad" or m.startswith("silero_vad.")]:
        del sys.modules[name]  # so that this detector imports it afresh
    before = torch.get_num_threads()
    assert before > 1  # (this machine has more than one core, so a drop to 1 would show)
    assert VoiceDetector().speech_regions(sentences[0])
    assert "silero_vad" in sys.modules
    assert torch.get_num_threads() == before
