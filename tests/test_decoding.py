"""The lean greedy loop against transformers' generate() on the same weights and windows."""

import pytest

from app.audio.decode import decode_audio
from app.inference.chunking import iter_chunks
from app.inference.model_loader import load_model
from app.inference.whisper import WhisperRunner
from app.settings import Settings
from tests.speech import PASSAGE, wer

pytestmark = pytest.mark.slow


def test_lean_loop_matches_generate(model_cache, passage_wav):
    # float32: the same rules give the same tokens (in bfloat16 the two differ in rounding order)
    loaded = load_model(Settings(cache_dir=model_cache, dtype="float32"))
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


def test_int8_output_projection_keeps_the_transcript(model_cache, passage_wav):
    """The int8 vocabulary projection (INT8_OUTPUT_PROJECTION, CPU default) changes words only rarely."""
    loaded = load_model(Settings(cache_dir=model_cache))
    exact = WhisperRunner(loaded, max_new_tokens=128)
    int8 = WhisperRunner(loaded, max_new_tokens=128, int8_projection=True)
    assert int8._lean._project is not exact._lean._project
    audio = decode_audio(passage_wav.read_bytes(), max_seconds=600)
    windows = [c.audio for c in iter_chunks(audio, 30, 5)]

    def text(runner):
        return " ".join(runner._text(t) for t in runner.generate(windows))

    a, b = text(exact), text(int8)
    assert wer(PASSAGE, b) <= wer(PASSAGE, a) + 0.015
    assert wer(a, b) < 0.05  # a handful of words at most


def test_bfloat16_with_int8_projection_is_as_accurate_as_float32(model_cache, passage_wav):
    """bfloat16 (DTYPE=auto on AMX CPUs) plus the int8 projection vs plain float32, same windows."""
    audio = decode_audio(passage_wav.read_bytes(), max_seconds=600)
    chunks = list(iter_chunks(audio, 30, 5))
    windows, ends = [c.audio for c in chunks], [c.length_s - c.stride_right_s for c in chunks]

    def text(dtype: str, int8: bool) -> str:
        runner = WhisperRunner(load_model(Settings(cache_dir=model_cache, dtype=dtype)), max_new_tokens=128)
        if int8:
            runner = WhisperRunner(runner.loaded, max_new_tokens=128, int8_projection=True)
        return " ".join(runner._text(t) for t in runner.generate(windows, ends))

    exact, fast = text("float32", False), text("bfloat16", True)
    assert wer(exact, fast) < 0.05  # a handful of words differ at most
    assert wer(PASSAGE, fast) <= wer(PASSAGE, exact) + 0.02


def test_int8_projection_is_batch_invariant():
    """A window's logits must not depend on which other windows share its batch."""
    from types import SimpleNamespace

    from app.inference.decoding import GreedyDecoder

    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 64, generator=gen) * 0.05
    fake = SimpleNamespace(_proj_bias=torch.zeros(1000))
    project = GreedyDecoder._projection(fake, weight, True)
    rows = torch.randn(8, 64, generator=gen)
    rows[3] *= 40  # one loud row would widen a shared per-tensor range
    together = project(rows)
    for i in range(8):
        assert torch.equal(project(rows[i : i + 1])[0], together[i])
    assert (together - rows @ weight.T).abs().max() < 0.05 * (rows @ weight.T).abs().max()
