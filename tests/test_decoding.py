"""The lean greedy loop against transformers' generate() on the same weights and windows."""

import pytest

from app.audio.decode import decode_audio
from app.inference.chunking import iter_chunks
from app.inference.model_loader import load_model
from app.inference.whisper import WhisperRunner
from app.settings import Settings

pytestmark = pytest.mark.slow


def test_lean_loop_matches_generate(model_cache, passage_wav):
    loaded = load_model(Settings(cache_dir=model_cache))
    lean = WhisperRunner(loaded, max_new_tokens=128, decoder="lean")
    reference = WhisperRunner(loaded, max_new_tokens=128, decoder="generate")
    assert (lean.decoder_name, reference.decoder_name) == ("lean", "generate")
    audio = decode_audio(passage_wav.read_bytes(), max_seconds=600)
    windows = [c.audio for c in iter_chunks(audio, 30, 5)]
    ours, theirs = lean.generate(windows), reference.generate(windows)
    tok = loaded.tokenizer
    for a, b in zip(ours, theirs, strict=True):
        # same greedy rules: identical tokens until one of them stops (generate sometimes
        # runs on past a final timestamp pair into the cut-off tail of the window)
        shorter = min(len(a), len(b))
        assert a[:shorter] == b[:shorter], (tok.decode(a), tok.decode(b))
        assert shorter >= 0.75 * max(len(a), len(b))
