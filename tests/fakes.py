"""A fake engine for fast API tests (the real one is exercised in test_engine/test_e2e)."""

from __future__ import annotations

from app.inference.chunking import SAMPLE_RATE
from app.inference.engine import EngineState, SegmentStream
from app.inference.whisper import Segment, Transcription


class FakeEngine:
    def __init__(self, ready: bool = True, fail_after: int | None = None) -> None:
        self.state = EngineState.READY if ready else EngineState.LOADING
        self.calls = 0
        self.fail_after = fail_after  # raise after yielding this many segments

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def info(self) -> dict:
        return {"model_id": "fake/whisper", "device": "cpu", "device_name": "FakeCPU"}

    languages = frozenset({"en"})  # an English-only model

    def start(self) -> None:
        pass

    def stream(self, audio, *, progressive: bool = False, options=None) -> SegmentStream:
        """One segment per started second: " second 0", " second 1", ..."""
        self.calls += 1
        self.last_options = options
        seconds = audio.shape[0] / SAMPLE_RATE
        return SegmentStream(self._segments(seconds), lambda: None, seconds)

    def _segments(self, seconds: float):
        for i in range(int(seconds) + (seconds % 1 > 0)):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("simulated model failure")
            yield Segment(float(i), min(i + 1.0, round(seconds, 3)), f" second {i}")

    def transcribe(self, audio, options=None) -> Transcription:
        return self.stream(audio, options=options).collect()
