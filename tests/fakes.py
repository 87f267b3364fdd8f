"""A fake engine for fast API tests (the real one is exercised in test_engine/test_e2e)."""

from __future__ import annotations

from app.inference.chunking import SAMPLE_RATE
from app.inference.engine import EngineState
from app.inference.whisper import Segment, Transcription


class FakeEngine:
    def __init__(self, ready: bool = True) -> None:
        self.state = EngineState.READY if ready else EngineState.LOADING
        self.calls = 0

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @property
    def info(self) -> dict:
        return {"model_id": "fake/whisper", "device": "cpu", "device_name": "FakeCPU"}

    def start(self) -> None:
        pass

    def transcribe(self, audio) -> Transcription:
        self.calls += 1
        seconds = audio.shape[0] / SAMPLE_RATE
        return Transcription(
            text=f"{seconds:.1f} seconds",
            segments=[Segment(0.0, round(seconds, 3), f" {seconds:.1f} seconds")],
            audio_seconds=seconds,
        )
