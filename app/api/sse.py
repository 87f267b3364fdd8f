"""``/v1/audio/transcriptions`` with ``stream=true``: server-sent events in OpenAI's shape.

One ``transcript.text.delta`` event per segment as soon as no later window can change
it, then ``transcript.text.done`` with the whole text (the deltas joined), as OpenAI's
SDKs read them (``TranscriptionTextDeltaEvent`` / ``TranscriptionTextDoneEvent``)::

    data: {"type": "transcript.text.delta", "delta": "The old lighthouse..."}

    data: {"type": "transcript.text.done", "text": "The old lighthouse... tower."}

Admission (429) and every request error come before the 200, as plain OpenAI-shaped
error replies; a failure after the stream began is a last ``{"type": "error", "error":
{...}}`` event (the SDKs raise it as an ``APIError``), never a silent truncation. A client
that hangs up cancels the request's windows not yet run.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flask import Response

from app.api import context
from app.api.transcribe import streamed_reply
from app.audio.decode import SAMPLE_RATE
from app.errors import ApiError
from app.inference.engine import Engine
from app.inference.options import TranscribeOptions
from app.inference.whisper import Segment


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _error_event(exc: ApiError) -> str:
    return _event({"type": "error", **exc.to_openai_dict()})


def transcript_events(engine: Engine, audio: np.ndarray, options: TranscribeOptions, started: float) -> Response:
    """The ``text/event-stream`` reply; raises (429, ...) before anything is sent."""
    audio_seconds = audio.shape[0] / SAMPLE_RATE
    metrics = context.metrics()
    segments = engine.stream(audio, progressive=True, options=options)  # admission (429) before the 200
    deltas: list[str] = []

    def delta(segment: Segment) -> str:
        # the transcript has no leading space; each later segment brings its own
        text = segment.text if deltas else segment.text.lstrip()
        deltas.append(text)
        return _event({"type": "transcript.text.delta", "delta": text})

    def done() -> str:
        metrics.transcribed(audio_seconds, time.perf_counter() - started)
        return _event({"type": "transcript.text.done", "text": "".join(deltas)})

    return streamed_reply(segments, "text/event-stream", item=delta, error=_error_event, done=done)
