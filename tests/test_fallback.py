"""Windows whose greedy text is a repetition loop are decoded again at a temperature."""

import numpy as np
import pytest

from app.inference.fallback import COMPRESSION_RATIO_THRESHOLD, compression_ratio, redecode_loops
from app.inference.model_loader import load_model
from app.inference.whisper import WhisperRunner
from app.settings import Settings
from tests.speech import normalize

LOOP = "the new content was created by the new people. " * 6


def test_compression_ratio_flags_loops_not_language():
    assert compression_ratio("") == 0.0
    assert compression_ratio(LOOP) > COMPRESSION_RATIO_THRESHOLD
    prose = "People who had borrowed books as children wrote letters to the newspaper about the library."
    assert compression_ratio(prose) < COMPRESSION_RATIO_THRESHOLD


def test_redecode_loops_tries_rising_temperatures_and_keeps_the_least_repetitive():
    texts = {(1,): LOOP, (2,): LOOP + LOOP, (3,): "a plain sentence of ordinary words", (4,): "fine"}
    calls = []

    def decode(audios, temperature, seed):
        calls.append((len(audios), temperature, seed))
        return [(2,)] if temperature < 0.4 else [(3,)]

    audios = [np.zeros(16000, np.float32)] * 2
    out, redecodes = redecode_loops(audios, [(1,), (4,)], decode, lambda t: texts[tuple(t)])
    assert out == [(3,), (4,)] and redecodes == 2
    assert calls == [(1, 0.2, 0), (1, 0.4, 0)]  # one window at a time, fixed seed, stops once fine


def test_redecode_loops_keeps_the_best_attempt_when_all_loop():
    texts = {(1,): LOOP + LOOP, (2,): LOOP}

    def decode(audios, temperature, seed):
        return [(2,)]

    out, redecodes = redecode_loops([np.zeros(1, np.float32)], [(1,)], decode, lambda t: texts[tuple(t)])
    assert out == [(2,)] and redecodes == 5


@pytest.mark.slow
def test_real_loop_is_replaced_by_the_speech(model_cache, bench_20min_audio):
    """Greedy tiny.en loops on window 40 (800-830 s) of the benchmark's 20-minute file."""
    window = bench_20min_audio[800 * 16000 : 830 * 16000]
    runner = WhisperRunner(load_model(Settings(cache_dir=model_cache)), max_new_tokens=128)
    (plain,) = runner._decode([window])
    assert compression_ratio(runner._text(plain)) > COMPRESSION_RATIO_THRESHOLD  # the loop is real
    (first,) = runner.generate([window])
    (second,) = runner.generate([window])
    assert first == second  # seeded: same audio, same text
    text = normalize(runner._text(first))
    assert runner.fallbacks >= 1
    assert compression_ratio(runner._text(first)) <= COMPRESSION_RATIO_THRESHOLD
    assert "wrote letters to the newspaper" in text
    assert text.count("the new content was created") <= 1
