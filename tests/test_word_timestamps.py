"""Word timestamps on real speech with known word times (engine, real tiny.en weights).

espeak-ng reads single words that are placed at known offsets with silence between them,
or trimmed and put back to back as continuous sentences (truth: where each word's sound
begins). Tolerances come from measurements (tiny.en on this 2-core CPU):

- isolated words: all within 0.04 s (0.16 s before the sound fitting of
  ``alignment.snap_to_sound``; 1-2.6 s with openai-whisper's text-only sequence);
- continuous sentences (~50 s, 80 matched words): 90% within 0.3 s, mean 0.15 s; the
  worst are sentence-final words that DTW squeezes against the next timestamp token
  (up to 1.24 s late).
"""

import difflib

import numpy as np
import pytest

from app.inference.chunking import SAMPLE_RATE
from app.inference.options import TranscribeOptions
from app.settings import Settings
from tests.speech import PASSAGE, normalize, place_words, spoken_words

pytestmark = pytest.mark.slow

WORDS = ["apple", "river", "mountain", "yellow", "window", "garden", "thunder", "silver"]
STARTS = [1.0, 4.2, 7.5, 10.1, 13.6, 17.0, 20.4, 23.3]
MORE = ["orange", "doctor", "camera", "forest", "monkey", "hammer", "button", "kitchen"]
MORE_STARTS = [26.0, 28.1, 30.4, 33.0, 39.5, 43.0, 46.4, 48.2]
ISOLATED_TOLERANCE_S = 0.3
CONTINUOUS_TOLERANCE_S = 0.35
CONTINUOUS_WITHIN_SHARE = 0.85
CONTINUOUS_MEAN_S = 0.25
CONTINUOUS_WORST_S = 2.0  # a word placed in the wrong window or sentence is off by far more
WORD_OPTIONS = TranscribeOptions(word_timestamps=True)


def matched_starts(result, truth_words, truth_starts):
    """(truth start, predicted start) for each truth word the transcript has, matched in order."""
    predicted = [normalize(w.word) for w in result.words]
    matcher = difflib.SequenceMatcher(None, truth_words, predicted, autojunk=False)
    pairs = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            pairs.append((truth_starts[block.a + k], result.words[block.b + k].start))
    return pairs


def check_continuous_errors(pairs, text):
    errors = np.abs([p - t for t, p in pairs])
    detail = (errors.round(2), text)
    assert np.mean(errors <= CONTINUOUS_TOLERANCE_S) >= CONTINUOUS_WITHIN_SHARE, detail
    assert errors.mean() <= CONTINUOUS_MEAN_S and errors.max() <= CONTINUOUS_WORST_S, detail


def check_consistent(result, duration):
    assert result.words
    for seg in result.segments:
        assert seg.words is not None
        assert "".join(w.word for w in seg.words).split() == seg.text.split()
        assert all(seg.start <= w.start <= w.end <= seg.end for w in seg.words)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and starts[-1] <= duration


def test_isolated_words_start_where_they_are_spoken(engine, speech_dir):
    audio = place_words(WORDS, STARTS, 25.0, speech_dir)
    result = engine.transcribe(audio, WORD_OPTIONS)
    check_consistent(result, 25.0)
    pairs = matched_starts(result, WORDS, STARTS)
    assert len(pairs) >= 6, result.text  # tiny.en may mishear a word or two
    errors = [round(p - t, 2) for t, p in pairs]
    assert max(map(abs, errors)) <= ISOLATED_TOLERANCE_S, (errors, result.text)
    # the option changes nothing else: same text and segments as without it
    plain = engine.transcribe(audio)
    assert plain.text == result.text and all(s.words is None for s in plain.segments)
    assert [(s.start, s.end) for s in plain.segments] == [(s.start, s.end) for s in result.segments]


def test_words_across_window_borders_keep_whole_file_times(engine, speech_dir):
    """~50 s of sentences: windows 0-30, 20-50 (and 40-50) s. The words at 20-30 s are heard
    by two windows and must keep the times of the window the merge kept them from."""
    (speech_dir / "border").mkdir(exist_ok=True)
    sentences = [s.strip() + "." for s in PASSAGE.replace("\n", " ").split(".") if s.strip()][:12]
    audio, truth = spoken_words(sentences, speech_dir / "border", pause_s=0.8)
    duration = len(audio) / SAMPLE_RATE
    while duration > 56:  # keep ~50 s, cutting whole sentences
        sentences.pop()
        audio, truth = spoken_words(sentences, speech_dir / "border", pause_s=0.8)
        duration = len(audio) / SAMPLE_RATE
    assert duration > 40 and len(engine.chunks_for(audio)) >= 2
    result = engine.transcribe(audio, WORD_OPTIONS)
    check_consistent(result, duration)
    pairs = matched_starts(result, [w for w, _ in truth], [t for _, t in truth])
    assert len(pairs) >= 0.75 * len(truth), result.text
    assert sum(20 < t < 30 for t, _ in pairs) >= 10  # words in the overlap were checked
    assert sum(t > 30 for t, _ in pairs) >= 10  # ... and words after the first window
    check_continuous_errors(pairs, result.text)


def test_continuous_speech(engine, speech_dir):
    sentence = "the keeper lived alone in a small stone cottage beside the tower"
    audio, truth = spoken_words([sentence, "and every evening he climbed the stairs to light the lamp"], speech_dir)
    text = [w for w, _ in truth]
    result = engine.transcribe(audio, WORD_OPTIONS)
    check_consistent(result, len(audio) / SAMPLE_RATE)
    pairs = matched_starts(result, text, [t for _, t in truth])
    assert len(pairs) >= 0.75 * len(text), result.text
    check_continuous_errors(pairs, result.text)


def test_generate_decoder_gets_the_same_word_times(model_cache, speech_dir):
    """DECODER=generate: the same alignment pass answers word requests (built on first use)."""
    from app.inference.model_loader import load_model
    from app.inference.whisper import WhisperRunner

    loaded = load_model(Settings(cache_dir=model_cache, dtype="float32"))
    lean = WhisperRunner(loaded, max_new_tokens=128, decoder="lean")
    reference = WhisperRunner(loaded, max_new_tokens=128, decoder="generate")
    audio = place_words(WORDS, STARTS, 25.0, speech_dir)
    decoded = lean.decode_windows([audio])
    assert reference._aligner is None
    ours = lean.token_times([audio], decoded, [WORD_OPTIONS])
    theirs = reference.token_times([audio], decoded, [WORD_OPTIONS])
    assert ours == theirs and ours[0] is not None
    assert sum(t is not None for t in ours[0]) == sum(tok < lean._eot for tok in decoded[0].tokens)
    assert lean.token_times([audio], decoded, [TranscribeOptions()]) == [None]  # not asked: nothing
