"""``POST /asr``: transcribe, as one JSON reply or (``?stream=1``) NDJSON chunk by chunk."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from app.api import context
from app.api.intake import audio_bytes_from_request
from app.api.schemas import AsrQuery, AsrResponse, AsrUrlRequest, ErrorResponse, StreamDone
from app.api.subtitles import to_srt, to_vtt
from app.api.transcribe import decode, ready_engine, request_options, streamed_reply, transcribe
from app.audio.decode import SAMPLE_RATE
from app.errors import InvalidField
from app.inference.engine import Engine
from app.inference.options import TranscribeOptions

blp = Blueprint("asr", __name__, description="Speech recognition")

_AUDIO_BODY = {"schema": {"type": "string", "format": "binary"}}


@blp.route("/asr")
class Asr(MethodView):
    @blp.doc(
        requestBody={
            "required": True,
            "description": "Either JSON with a `url` (http(s) URL or allowed local path) or the raw audio bytes.",
            "content": {
                "application/json": {"schema": AsrUrlRequest},
                "application/octet-stream": _AUDIO_BODY,
                "audio/*": _AUDIO_BODY,
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    )
    @blp.arguments(AsrQuery, location="query", as_kwargs=True)
    @blp.response(
        200,
        AsrResponse,
        description="The transcript (or, with `?stream=1`, NDJSON lines: chunks, then the final line).",
        headers={
            "X-Processing-Time": {"description": "Seconds spent on this request", "schema": {"type": "number"}},
            "X-Audio-Length": {"description": "Audio duration in seconds", "schema": {"type": "number"}},
            "X-Realtime-Factor": {"description": "Audio seconds per processing second", "schema": {"type": "number"}},
            "X-Model-ID": {"description": "MODEL_ID serving the request", "schema": {"type": "string"}},
            "X-GPU-Name": {"description": "GPU name, or the CPU description", "schema": {"type": "string"}},
        },
    )
    @blp.alt_response(400, schema=ErrorResponse, description="Malformed request (e.g. invalid JSON).")
    @blp.alt_response(403, schema=ErrorResponse, description="URL or path not allowed.")
    @blp.alt_response(404, schema=ErrorResponse, description="Local file not found.")
    @blp.alt_response(413, schema=ErrorResponse, description="Body, download or audio duration over the limit.")
    @blp.alt_response(415, schema=ErrorResponse, description="Not decodable audio.")
    @blp.alt_response(422, schema=ErrorResponse, description="Invalid field.")
    @blp.alt_response(502, schema=ErrorResponse, description="The audio URL failed.")
    @blp.alt_response(408, schema=ErrorResponse, description="The request body did not arrive in time.")
    @blp.alt_response(429, schema=ErrorResponse, description="Queue full; retry after `Retry-After` seconds.")
    @blp.alt_response(503, schema=ErrorResponse, description="Model still loading, or the server is shutting down.")
    @blp.alt_response(504, schema=ErrorResponse, description="The audio URL timed out.")
    @blp.alt_response(
        200,
        schema=StreamDone,
        content_type="application/x-ndjson",
        description=(
            "The transcript as JSON; with `?stream=1`, NDJSON: one TimedChunk object per line as soon as it is "
            "final, then the StreamDone line."
        ),
        success=True,
    )
    @blp.alt_response(200, content_type="application/x-subrip", description="`?format=srt`", success=True)
    @blp.alt_response(200, content_type="text/vtt", description="`?format=vtt`", success=True)
    def post(
        self,
        stream: bool = False,
        format: str = "json",
        return_timestamps: str = "segment",
        vad: bool | None = None,
        language: str | None = None,
        task: str = "transcribe",
    ):
        """Transcribe audio given as a URL, a local path, or the raw request body."""
        if stream and format != "json":
            raise InvalidField("format=srt|vtt cannot be streamed; drop stream=1.", param="format")
        if return_timestamps == "word" and format != "json":
            raise InvalidField("return_timestamps=word needs format=json.", param="return_timestamps")
        engine = ready_engine()
        settings = context.settings()
        options = request_options(
            engine,
            language=language,
            task=task,
            word_timestamps=return_timestamps == "word",
            vad=settings.vad_filter if vad is None else vad,
        )
        started = time.perf_counter()
        audio = decode(audio_bytes_from_request(settings))
        if stream:
            return _ndjson_response(engine, audio, started, options)
        result = transcribe(engine, audio, options)
        elapsed = time.perf_counter() - started
        context.metrics().transcribed(result.audio_seconds, elapsed)
        headers = _timing_headers(engine, result.audio_seconds, elapsed)
        if format == "srt":
            return Response(to_srt(result.segments), mimetype="application/x-subrip", headers=headers)
        if format == "vtt":
            return Response(to_vtt(result.segments), mimetype="text/vtt", headers=headers)
        return result.to_dict(), 200, headers


def _timing_headers(engine: Engine, audio_seconds: float, elapsed: float) -> dict[str, Any]:
    info = engine.info
    return {
        "X-Processing-Time": f"{elapsed:.3f}",
        "X-Audio-Length": f"{audio_seconds:.3f}",
        "X-Realtime-Factor": f"{(audio_seconds / elapsed) if elapsed > 0 else 0.0:.2f}",
        "X-Model-ID": info["model_id"],
        "X-GPU-Name": info["device_name"],
    }


def _ndjson_response(engine: Engine, audio, started: float, options: TranscribeOptions) -> Response:
    audio_seconds = audio.shape[0] / SAMPLE_RATE
    info = engine.info
    metrics = context.metrics()
    segments = engine.stream(audio, progressive=True, options=options)  # admission (429) before the 200 is sent
    texts: list[str] = []

    def line(segment) -> str:
        texts.append(segment.text)
        return json.dumps(segment.to_dict()) + "\n"

    def done() -> str:
        elapsed = time.perf_counter() - started
        metrics.transcribed(audio_seconds, elapsed)
        return (
            json.dumps(
                {
                    "done": True,
                    "text": "".join(texts).strip(),
                    "audio_length": round(audio_seconds, 3),
                    "processing_time": round(elapsed, 3),
                    "realtime_factor": round(audio_seconds / elapsed, 2) if elapsed > 0 else 0.0,
                    "model_id": info["model_id"],
                    "device": info["device_name"],
                    "language": segments.language,
                }
            )
            + "\n"
        )

    response = streamed_reply(
        segments,
        "application/x-ndjson",
        item=line,
        error=lambda exc: json.dumps(exc.to_dict()) + "\n",
        done=done,
    )
    response.headers["X-Audio-Length"] = f"{audio_seconds:.3f}"
    response.headers["X-Model-ID"] = info["model_id"]
    response.headers["X-GPU-Name"] = info["device_name"]
    return response
