"""The steps every transcription route shares: readiness, decoding, a watched transcription,
a streamed reply."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from flask import Response, request, stream_with_context

from app.api import context
from app.api.disconnect import watch_disconnect
from app.audio.decode import SAMPLE_RATE, decode_audio
from app.errors import ApiError, ClientClosedRequest, InternalError, InvalidField, ServiceUnavailable
from app.inference.batcher import Cancelled
from app.inference.engine import Engine, SegmentStream
from app.inference.languages import language_code
from app.inference.options import DEFAULT_OPTIONS, TranscribeOptions
from app.inference.whisper import Segment, Transcription
from app.threads import run_blocking

log = logging.getLogger(__name__)


def ready_engine() -> Engine:
    """The engine, or 503 with Retry-After while it loads (or after it failed to, or shuts down)."""
    if context.drain().draining:
        raise ServiceUnavailable(
            "The server is shutting down; retry (another instance).", code="draining", retry_after=5
        )
    engine = context.engine()
    if not engine.ready:
        if engine.state.value == "failed":
            raise ServiceUnavailable(
                "The model failed to load on this server; see its log.", code="model_unavailable", retry_after=60
            )
        raise ServiceUnavailable("The model is still loading; retry shortly.", code="loading", retry_after=5)
    return engine


def decode(data: bytes):
    """16 kHz mono float32 samples of ``data`` (in a native thread), counted in the metrics."""
    settings = context.settings()
    audio = run_blocking(
        decode_audio, data, max_seconds=settings.max_audio_seconds, timeout_s=settings.decode_timeout_s
    )
    context.metrics().audio_received.inc(audio.shape[0] / SAMPLE_RATE)
    return audio


def transcribe(engine: Engine, audio, options: TranscribeOptions = DEFAULT_OPTIONS) -> Transcription:
    """The whole transcript; a client that hangs up meanwhile cancels its windows (499)."""
    segments = engine.stream(audio, options=options)
    try:
        with watch_disconnect(request.environ, segments.cancel):
            result = segments.collect()
    except Cancelled:  # nobody reads this reply
        raise ClientClosedRequest("The client closed the connection.") from None
    log.info("transcribed %.2f s of audio into %d segments", result.audio_seconds, len(result.segments))
    return result


def check_can_translate(engine: Engine, *, param: str) -> None:
    """422 (naming ``param``) when the loaded model is English-only and so cannot translate."""
    if not engine.info.get("multilingual"):
        raise InvalidField(
            f"The model {engine.info['model_id']} is English-only and cannot translate; "
            "run a multilingual model (MODEL_ID=embedded/whisper-base).",
            param=param,
        )


def request_options(
    engine: Engine,
    *,
    language: str | None = None,
    task: str = "transcribe",
    prompt: str | None = None,
    temperature: float = 0.0,
    **fields,
) -> TranscribeOptions:
    """A request's options, checked against the loaded model (422 naming the field);
    ``fields``: the other :class:`TranscribeOptions` (word timestamps, VAD)."""
    multilingual = bool(engine.info.get("multilingual"))
    code = None
    if language:
        code = language_code(language)
        if code is None:
            raise InvalidField(
                f"Unknown language {language!r}: use an ISO 639-1 code such as `de` or a name such as `german`.",
                param="language",
            )
        if code not in engine.languages:
            raise InvalidField(
                f"The model {engine.info['model_id']} transcribes English only (language=en)."
                if not multilingual
                else f"The model {engine.info['model_id']} does not know the language {code!r}.",
                param="language",
            )
    if task == "translate":
        check_can_translate(engine, param="task")
    return TranscribeOptions(
        language=code,
        task="translate" if task == "translate" else "transcribe",
        prompt=prompt or None,
        temperature=temperature,
        **fields,
    )


def streamed_reply(
    segments: SegmentStream,
    mimetype: str,
    *,
    item: Callable[[Segment], str],
    error: Callable[[ApiError], str],
    done: Callable[[], str],
) -> Response:
    """A reply that sends each segment as soon as it is final (``/asr?stream=1``, ``/v1`` ``stream=true``).

    ``item`` writes one segment, ``done`` the last message once every segment is sent.
    A failure after the stream began is a last ``error`` message, never a silent
    truncation; a client that hangs up (or closes the reply) cancels the windows not yet run.
    """
    environ = request.environ

    def body() -> Iterator[str]:
        try:
            with watch_disconnect(environ, segments.cancel):
                for segment in segments:
                    yield item(segment)
        except Cancelled:  # the client hung up; its windows are dropped
            return
        except ApiError as exc:
            yield error(exc)
            return
        except Exception:
            log.exception("streaming transcription failed")
            yield error(InternalError("The server failed while transcribing."))
            return
        yield done()

    response = Response(stream_with_context(body()), mimetype=mimetype)
    response.call_on_close(segments.cancel)  # also when the body was never started
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # tell nginx-style proxies not to buffer the stream
    return response
