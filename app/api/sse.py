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
import logging
import time
from collections.abc import Iterator

import numpy as np
from flask import Response, request, stream_with_context

from app.api import context
from app.api.disconnect import watch_disconnect
from app.audio.decode import SAMPLE_RATE
from app.errors import ApiError, InternalError
from app.inference.batcher import Cancelled
from app.inference.engine import Engine
from app.inference.options import TranscribeOptions

log = logging.getLogger(__name__)


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _error_event(exc: ApiError) -> str:
    return _event({"type": "error", **exc.to_openai_dict()})


def transcript_events(engine: Engine, audio: np.ndarray, options: TranscribeOptions, started: float) -> Response:
    """The ``text/event-stream`` reply; raises (429, ...) before anything is sent."""
    audio_seconds = audio.shape[0] / SAMPLE_RATE
    metrics = context.metrics()
    segments = engine.stream(audio, progressive=True, options=options)  # admission (429) before the 200
    environ = request.environ

    def events() -> Iterator[str]:
        deltas: list[str] = []
        try:
            with watch_disconnect(environ, segments.cancel):
                for segment in segments:
                    # the transcript has no leading space; each later segment brings its own
                    delta = segment.text if deltas else segment.text.lstrip()
                    deltas.append(delta)
                    yield _event({"type": "transcript.text.delta", "delta": delta})
        except Cancelled:  # the client hung up; its windows are dropped
            return
        except ApiError as exc:
            yield _error_event(exc)
            return
        except Exception:
            log.exception("streaming transcription failed")
            yield _error_event(InternalError("The server failed while transcribing."))
            return
        metrics.transcribed(audio_seconds, time.perf_counter() - started)
        yield _event({"type": "transcript.text.done", "text": "".join(deltas)})

    response = Response(stream_with_context(events()), mimetype="text/event-stream")
    response.call_on_close(segments.cancel)  # also when the body was never started
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # tell nginx-style proxies not to buffer the stream
    return response
