"""Voice activity detection: where in a recording someone speaks (Silero VAD).

The model is the TorchScript file that the ``silero-vad`` PyPI package ships
(``silero_vad/data/silero_vad.jit``); the speech regions come from that package's own
``get_speech_timestamps_from_probs``. Everything torch here must run on the engine's
model thread (see :class:`app.inference.engine.Engine`): the engine passes its
``run`` (which executes a function there) to :meth:`VoiceDetector.speech_regions`.

The model reads 512-sample frames (32 ms at 16 kHz) with a recurrent state. A long file
is scored in blocks of :data:`BLOCK_FRAMES` frames, each its own call on the model
thread, so that the batches of other requests run in between; each block after the
first starts :data:`WARMUP_FRAMES` frames early and drops those scores, so its state
has settled by the time its own frames come.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.audio.decode import SAMPLE_RATE

if TYPE_CHECKING:
    from app.settings import Settings

FRAME = 512
#: frames scored per call on the model thread (~2 min of audio, a fraction of a second)
BLOCK_FRAMES = 4096
#: frames (~8 s) a block re-reads before its own, to settle the model's state (its scores
#: then differ from one pass over the whole file by < 0.01)
WARMUP_FRAMES = 256

Run = Callable[..., Any]


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@dataclass(frozen=True)
class VadParams:
    #: speech probability above which a frame is speech
    threshold: float = 0.5
    #: silences at least this long are cut out (shorter pauses stay in)
    min_silence_s: float = 2.0
    #: audio kept on each side of a speech region
    pad_s: float = 0.4

    @classmethod
    def from_settings(cls, settings: Settings) -> VadParams:
        return cls(settings.vad_threshold, settings.vad_min_silence_s, settings.vad_speech_pad_s)


DEFAULT_PARAMS = VadParams()


def _model_path() -> Path:
    # Found without importing the package: importing silero_vad calls
    # torch.set_num_threads(1) for the whole process (silero_vad/model.py).
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then put back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _timestamps_from_probs() -> Callable[..., list[dict]]:
    import torch

    # the package's import calls torch.set_num_threads(1): undone on leaving the block
    with _torch_threads(torch.get_num_threads()):
        from silero_vad import get_speech_timestamps_from_probs
    return get_speech_timestamps_from_probs


class VoiceDetector:
    """Silero VAD, loaded on first use in the thread that first calls it."""

    def __init__(self) -> None:
        self._model: Any = None
        self._to_regions: Callable[..., list[dict]] | None = None

    def _load(self) -> None:
        if self._model is None:
            import torch

            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript loading in favour of torch.export; the
                # package ships this model as TorchScript (its own loader calls jit.load too)
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                model = torch.jit.load(str(_model_path()), map_location="cpu")
            model.eval()
            self._to_regions = _timestamps_from_probs()
            self._model = model

    def _block_probabilities(self, audio: np.ndarray) -> np.ndarray:
        import torch

        self._load()
        # One thread: the model runs thousands of tiny steps, and an OpenMP team of several
        # threads made them ~90x slower on a busy 2-core machine (87 s instead of 0.95 s for
        # 136 s of audio). Safe to change here: every torch call runs on this one thread.
        with _torch_threads(1), torch.inference_mode():
            probs = self._model.audio_forward(torch.from_numpy(np.ascontiguousarray(audio)), SAMPLE_RATE)
        return probs[0].numpy()

    def probabilities(self, audio: np.ndarray, run: Run = _direct) -> np.ndarray:
        """Speech probability of each 512-sample frame of 16 kHz ``audio``."""
        frames = -(-audio.shape[0] // FRAME)
        out: list[np.ndarray] = []
        for first in range(0, frames, BLOCK_FRAMES):
            warmup = min(first, WARMUP_FRAMES)
            block = audio[(first - warmup) * FRAME : (first + BLOCK_FRAMES) * FRAME]
            out.append(run(self._block_probabilities, block)[warmup:])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def speech_regions(
        self, audio: np.ndarray, params: VadParams = DEFAULT_PARAMS, run: Run = _direct
    ) -> list[tuple[int, int]]:
        """Sorted, disjoint ``[start, end)`` sample ranges of 16 kHz ``audio`` that hold speech.

        ``run(fn, *args)`` calls ``fn`` where torch may run (the engine's model thread).
        """
        probs = self.probabilities(audio, run)
        if probs.size == 0:
            return []
        regions = run(self._regions, probs.tolist(), audio.shape[0], params)
        return [(int(r["start"]), int(r["end"])) for r in regions]

    def _regions(self, probs: list[float], samples: int, params: VadParams) -> list[dict]:
        self._load()
        assert self._to_regions is not None
        return self._to_regions(
            probs,
            sampling_rate=SAMPLE_RATE,
            threshold=params.threshold,
            min_silence_duration_ms=round(params.min_silence_s * 1000),
            speech_pad_ms=round(params.pad_s * 1000),
            audio_length_samples=samples,
        )
