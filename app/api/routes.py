"""HTTP routes: ``GET /hc`` and ``POST /asr``. Transcription itself lives in the engine."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from flask import Flask, Response, current_app, g, jsonify, request, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from app import __version__
from app.api.schemas import AsrQuery, AsrResponse, AsrUrlRequest, ErrorResponse, HealthResponse, StreamDone
from app.audio.decode import SAMPLE_RATE, decode_audio
from app.audio.fetch import fetch_url, read_local_file
from app.audio.limits import read_body_capped
from app.errors import ApiError, BadRequest, InvalidField, RequestTimeout, ServiceUnavailable, UpstreamTimeout
from app.inference.engine import Engine
from app.metrics import HttpMetrics
from app.settings import Settings
from app.threads import run_blocking

log = logging.getLogger(__name__)
blp = Blueprint("asr", __name__, description="Speech recognition")

MAX_JSON_BYTES = 64 * 1024
_AUDIO_BODY = {"schema": {"type": "string", "format": "binary"}}


def _engine() -> Engine:
    return current_app.extensions["asr_engine"]


def _settings() -> Settings:
    return current_app.extensions["asr_settings"]


def _metrics() -> HttpMetrics:
    return current_app.extensions["asr_metrics"]


def register_request_metrics(app: Flask) -> None:
    @app.before_request
    def _start_timer():
        g.asr_started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics = app.extensions["asr_metrics"]
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if "asr_started" in g:
            metrics.latency.labels(route).observe(time.perf_counter() - g.asr_started)
        return response


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.response(200, description="Prometheus text format.", content_type="text/plain")
    def get(self):
        """Prometheus metrics: requests, audio seconds, realtime factor, queue depth, batch sizes."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(current_app.extensions["asr_metrics_registry"])
        return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0], headers={"Content-Type": CONTENT_TYPE_LATEST})


@blp.route("/hc")
class Health(MethodView):
    @blp.response(200, HealthResponse, description="The model is loaded and warmed; ready for traffic.")
    @blp.alt_response(503, description='Still loading (`{"status": "loading"}`) or failed to load.')
    def get(self):
        """Readiness probe: 200 once the model is loaded and warmed, 503 before."""
        engine = _engine()
        if not engine.ready:
            response = jsonify({"status": engine.state.value if engine.state.value != "idle" else "loading"})
            response.status_code = 503
            response.headers["Retry-After"] = "5"
            return response
        info = engine.info
        return {
            "status": "ok",
            "version": __version__,
            "model_id": info["model_id"],
            "device": info["device_name"],
        }


@contextmanager
def _deadline(seconds: float, error: ApiError):
    """Raise ``error`` if the block (cooperative I/O on this greenlet) takes longer than ``seconds``."""
    timeout = gevent.Timeout(seconds)
    timeout.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        raise error from None
    finally:
        timeout.close()


def _read_body(settings: Settings, max_bytes: int) -> bytes:
    limit = settings.upload_timeout_s
    with _deadline(limit, RequestTimeout(f"The request body did not arrive within {limit:g} seconds.")):
        return read_body_capped(request.stream, content_length=request.content_length, max_bytes=max_bytes)


def _audio_bytes_from_request(settings: Settings) -> bytes:
    """The audio bytes, wherever the client put them (JSON url/path, multipart file, raw body)."""
    mimetype = request.mimetype or ""
    if mimetype == "application/json" or mimetype.endswith("+json"):
        raw = _read_body(settings, MAX_JSON_BYTES)
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest("The request body is not valid JSON.", code="malformed_json") from None
        if not isinstance(payload, dict):
            raise InvalidField('Expected a JSON object like {"url": "https://..."}.')
        try:
            url = AsrUrlRequest().load(payload)["url"]
        except ValidationError as exc:
            raise InvalidField(f"Invalid request body: {exc.messages}") from None
        if "://" in url:
            limit = settings.fetch_timeout_s
            with _deadline(limit, UpstreamTimeout(f"Downloading the audio URL took longer than {limit:g} seconds.")):
                return fetch_url(url, settings)
        return run_blocking(read_local_file, url, settings)
    if mimetype == "multipart/form-data":
        with _deadline(settings.upload_timeout_s, RequestTimeout("The upload did not arrive in time.")):
            upload = request.files.get("file")
        if upload is None:
            raise InvalidField('multipart/form-data requests need the audio in a field named "file".')
        return upload.read()
    return _read_body(settings, settings.max_upload_bytes)


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
    @blp.alt_response(503, schema=ErrorResponse, description="Model still loading.")
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
    def post(self, stream: bool = False):
        """Transcribe audio given as a URL, a local path, or the raw request body."""
        engine = _engine()
        settings = _settings()
        if not engine.ready:
            if engine.state.value == "failed":
                raise ServiceUnavailable(
                    "The model failed to load on this server; see its log.", code="model_unavailable", retry_after=60
                )
            raise ServiceUnavailable("The model is still loading; retry shortly.", code="loading", retry_after=5)
        started = time.perf_counter()
        data = _audio_bytes_from_request(settings)
        audio = run_blocking(
            decode_audio, data, max_seconds=settings.max_audio_seconds, timeout_s=settings.decode_timeout_s
        )
        del data
        _metrics().audio_received.inc(audio.shape[0] / SAMPLE_RATE)
        if stream:
            return _ndjson_response(engine, audio, started)
        result = engine.transcribe(audio)
        elapsed = time.perf_counter() - started
        _metrics().transcribed(result.audio_seconds, elapsed)
        return result.to_dict(), 200, _timing_headers(engine, result.audio_seconds, elapsed)


def _timing_headers(engine: Engine, audio_seconds: float, elapsed: float) -> dict[str, Any]:
    info = engine.info
    return {
        "X-Processing-Time": f"{elapsed:.3f}",
        "X-Audio-Length": f"{audio_seconds:.3f}",
        "X-Realtime-Factor": f"{(audio_seconds / elapsed) if elapsed > 0 else 0.0:.2f}",
        "X-Model-ID": info["model_id"],
        "X-GPU-Name": info["device_name"],
    }


def _ndjson_response(engine: Engine, audio, started: float) -> Response:
    audio_seconds = audio.shape[0] / SAMPLE_RATE
    info = engine.info
    metrics = _metrics()

    def lines() -> Iterator[str]:
        texts: list[str] = []
        try:
            for segment in engine.stream(audio, progressive=True):
                texts.append(segment.text)
                yield json.dumps(segment.to_dict()) + "\n"
        except ApiError as exc:
            yield json.dumps(exc.to_dict()) + "\n"
            return
        except Exception:  # never a silent truncation: the client gets a last error line
            log.exception("streaming transcription failed")
            err = ApiError("The server failed while transcribing.", code="internal_error")
            err.status = 500
            yield json.dumps(err.to_dict()) + "\n"
            return
        elapsed = time.perf_counter() - started
        metrics.transcribed(audio_seconds, elapsed)
        yield (
            json.dumps(
                {
                    "done": True,
                    "text": "".join(texts).strip(),
                    "audio_length": round(audio_seconds, 3),
                    "processing_time": round(elapsed, 3),
                    "realtime_factor": round(audio_seconds / elapsed, 2) if elapsed > 0 else 0.0,
                    "model_id": info["model_id"],
                    "device": info["device_name"],
                }
            )
            + "\n"
        )

    response = Response(stream_with_context(lines()), mimetype="application/x-ndjson")
    response.headers["X-Audio-Length"] = f"{audio_seconds:.3f}"
    response.headers["X-Model-ID"] = info["model_id"]
    response.headers["X-GPU-Name"] = info["device_name"]
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # tell nginx-style proxies not to buffer the stream
    return response
