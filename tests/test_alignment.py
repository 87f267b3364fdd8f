"""Token times from alignment-head attention, words from tokens (app/inference/alignment.py)."""

import itertools

import numpy as np
import pytest

from app.inference.alignment import FRAMES_PER_SECOND, Word, fit_words, group_words, snap_to_sound, token_boundaries


def _diagonal_scores(bounds: list[int], frames: int, heads: int = 3) -> np.ndarray:
    """Attention logits where row r attends to frames [bounds[r], bounds[r+1]) (noise elsewhere)."""
    rng = np.random.default_rng(0)
    rows = len(bounds) - 1
    scores = rng.normal(0, 0.3, size=(heads, rows, frames))
    for r in range(rows):
        scores[:, r, bounds[r] : bounds[r + 1]] += 6.0
    return scores


def test_boundaries_follow_the_attended_frames():
    bounds = [0, 30, 45, 100, 160, 200]  # 5 rows: 4 tokens and the end of text
    times = token_boundaries(_diagonal_scores(bounds, 300), 200)
    assert len(times) == 5
    expected = np.array(bounds[:-1]) / FRAMES_PER_SECOND
    # the median filter (7 frames) may shift a boundary by a few frames
    assert np.abs(times - expected).max() <= 4 / FRAMES_PER_SECOND
    assert list(times) == sorted(times)


def test_frames_past_the_real_audio_are_ignored():
    bounds = [0, 50, 100, 150]
    scores = _diagonal_scores(bounds, 1500)
    scores[:, 2, 1000:1400] += 20.0  # padding frames a row attends to strongly
    times = token_boundaries(scores, 150)
    assert times.max() < 150 / FRAMES_PER_SECOND
    assert times == pytest.approx([0.0, 1.0, 2.0], abs=0.1)


VOCAB = {1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: ".", 6: ' "', 7: "Hi", 8: '"', 9: " again"}


def _decode(tokens: list[int]) -> str:
    return "".join(VOCAB[t] for t in tokens)


def _times(n: int) -> list[tuple[float, float]]:
    return [(float(i), float(i) + 1) for i in range(n)]


def test_words_start_at_spaces_and_punctuation_joins_its_neighbour():
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    words = group_words(tokens, _times(len(tokens)), _decode)
    assert [w.word for w in words] == [" Hello,", " world.", ' "Hi"', " again"]
    assert "".join(w.word for w in words) == _decode(tokens)
    # a word's times are its own tokens' (punctuation moves no times): "world" is tokens 2..3
    assert (words[1].start, words[1].end) == (2.0, 4.0)
    assert (words[0].start, words[0].end) == (0.0, 1.0)
    # '"' is punctuation, so it opens a word that "Hi" (no space) joins, as in openai-whisper
    assert (words[2].start, words[2].end) == (5.0, 7.0)


def test_languages_without_spaces_split_per_character_even_across_byte_tokens(model_cache):
    from transformers import AutoTokenizer

    from app.inference.model_loader import EMBEDDED_MODELS, converted_checkpoint

    name = "embedded/whisper-tiny.en"
    tok = AutoTokenizer.from_pretrained(converted_checkpoint(EMBEDDED_MODELS[name](), model_cache, name))
    text = "你好世界"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # byte-level BPE: some characters take several tokens

    def decode(t):
        return tok.decode(t)

    words = group_words(ids, _times(len(ids)), decode, language="zh")
    assert [w.word for w in words] == list(text)
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))
    english = group_words(tok.encode(" The cat sat.", add_special_tokens=False), _times(4), decode)
    assert [w.word for w in english] == [" The", " cat", " sat."]


def _tone(spans: list[tuple[float, float]], total: float) -> np.ndarray:
    audio = np.zeros(int(total * 16000), dtype=np.float32)
    t = np.arange(audio.size) / 16000
    for a, b in spans:
        on = (t >= a) & (t < b)
        audio[on] = 0.3 * np.sin(2 * np.pi * 220 * t[on])
    return audio


def test_spans_are_fitted_to_the_sound_inside_and_next_to_them():
    audio = _tone([(1.0, 1.5), (2.0, 2.4), (3.0, 3.2)], 5.0)
    spans = [(0.2, 1.6), (1.6, 2.2), (2.2, 2.8), (3.1, 3.15)]
    snapped = snap_to_sound(spans, audio)
    assert snapped[0] == pytest.approx((1.0, 1.5))  # the pause before the word left out
    assert snapped[1] == pytest.approx((2.0, 2.2))  # starts in silence: moved to the sound
    # starts inside the sound the previous token kept: it cannot reach back into it
    assert snapped[2] == pytest.approx((2.2, 2.4))
    assert snapped[3] == pytest.approx((3.0, 3.2))  # a start late in the sound extends back to its onset
    silent = snap_to_sound([(4.0, 4.5)], audio)
    assert silent == [(4.0, 4.5)]


def test_fit_words_clamps_to_the_segment_and_keeps_order():
    words = [Word(" a", 0.5, 1.0), Word(" b", 0.9, 1.2), Word(" c", 1.1, 9.0)]
    fitted = fit_words(words, 0.8, 3.0)
    starts = [w.start for w in fitted]
    assert starts == sorted(starts) and starts[0] == 0.8
    assert all(0.8 <= w.start <= w.end <= 3.0 for w in fitted)
    # the last word stretched over the pause after it is cut to twice the median word (0.5 s)
    assert fitted[-1].end - fitted[-1].start == pytest.approx(1.0)


def test_a_word_whose_sound_went_to_a_timestamp_token_finds_it_nearby():
    audio = _tone([(1.0, 1.5), (3.0, 3.4), (4.8, 5.3)], 6.0)
    # DTW left " B" an empty span at 4.0: its sound (3.0-3.4) went to the timestamps between
    spans = [(0.9, 1.6), (4.0, 4.0), (4.0, 4.0), (5.0, 5.5)]
    snapped = snap_to_sound(spans, audio, starts_word=[True, True, True, True])
    assert snapped[0] == pytest.approx((1.0, 1.5))
    assert snapped[1] == pytest.approx((3.0, 3.4))
    # sound that runs on into the next token's span (4.8-5.3) is that token's, not this one's
    assert snapped[2] == pytest.approx((4.0, 4.0))
    assert snapped[3] == pytest.approx((4.8, 5.3))
    # a token inside a word (no leading space) is not moved to sound elsewhere
    assert snap_to_sound(spans, audio, starts_word=[True, False, False, True])[1] == (4.0, 4.0)
