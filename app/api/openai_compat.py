"""OpenAI-compatible routes: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

The same engine, batching, limits and metrics as ``/asr``, in the shapes OpenAI's API and
SDKs use (``client.audio.transcriptions.create(model=..., file=...)``), errors included
(``{"error": {"message", "type", "param", "code"}}``, see :mod:`app.api.errors`).

Fields: ``file`` (required), ``model`` (required, as OpenAI's; any name is served by the
loaded model, so ``whisper-1`` works), ``language`` (``en`` only for English-only
models), ``response_format`` (``json`` | ``text`` | ``srt`` | ``vtt`` | ``verbose_json``),
``timestamp_granularities[]`` (``segment``), ``prompt`` and ``temperature`` (accepted for
compatibility; decoding is greedy with the fallback of :mod:`app.inference.fallback`).
Not yet: word timestamps, ``stream=true`` and ``/v1/audio/translations`` (each a 422 naming the field).
"""

from __future__ import annotations

import time

from flask import Response, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from app.api import context
from app.api.intake import audio_bytes_from_request
from app.api.subtitles import to_srt, to_vtt
from app.api.transcribe import decode, ready_engine, transcribe
from app.errors import BadRequest, InvalidField

blp = Blueprint("openai", __name__, url_prefix="/v1", description="OpenAI-compatible API")

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ENGLISH = ("en", "english")


class TranscriptionForm(Schema):
    class Meta:
        unknown = EXCLUDE

    model = fields.String(required=True, validate=validate.Length(min=1, max=256))
    language = fields.String(load_default=None, validate=validate.Length(max=32))
    prompt = fields.String(load_default=None, validate=validate.Length(max=10_000))
    response_format = fields.String(load_default="json", validate=validate.OneOf(FORMATS))
    temperature = fields.Float(load_default=0.0, validate=validate.Range(min=0.0, max=1.0))
    stream = fields.Boolean(load_default=False)


class TranscriptionJson(Schema):
    text = fields.String()


class VerboseSegment(Schema):
    id = fields.Integer()
    start = fields.Float()
    end = fields.Float()
    text = fields.String()


class TranscriptionVerbose(Schema):
    task = fields.String(metadata={"example": "transcribe"})
    language = fields.String(metadata={"example": "english"})
    duration = fields.Float()
    text = fields.String()
    segments = fields.List(fields.Nested(VerboseSegment))


class OpenAIErrorBody(Schema):
    message = fields.String()
    type = fields.String()
    param = fields.String(allow_none=True)
    code = fields.String()


class OpenAIError(Schema):
    error = fields.Nested(OpenAIErrorBody)


class Model(Schema):
    id = fields.String()
    object = fields.String(metadata={"example": "model"})
    created = fields.Integer()
    owned_by = fields.String()


class ModelList(Schema):
    object = fields.String(metadata={"example": "list"})
    data = fields.List(fields.Nested(Model))


_FORM = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "model": {"type": "string", "example": "whisper-1"},
                "language": {"type": "string", "example": "en"},
                "prompt": {"type": "string"},
                "response_format": {"type": "string", "enum": list(FORMATS)},
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment"]}},
                "stream": {"type": "boolean"},
            },
            "required": ["file", "model"],
        }
    }
}


def _form() -> dict:
    try:
        form = TranscriptionForm().load(request.form.to_dict(flat=True))
    except ValidationError as exc:
        field = next(iter(exc.messages), None)
        raise InvalidField(f"Invalid form field(s): {exc.messages}", param=str(field) if field else None) from None
    granularities = request.form.getlist("timestamp_granularities[]") or request.form.getlist("timestamp_granularities")
    if any(g not in ("segment", "word") for g in granularities):
        raise InvalidField("timestamp_granularities[] takes segment or word.", param="timestamp_granularities[]")
    if "word" in granularities:
        raise InvalidField("Word timestamps are not available yet on this server.", param="timestamp_granularities[]")
    if granularities and form["response_format"] != "verbose_json":
        raise InvalidField(
            "timestamp_granularities[] needs response_format=verbose_json.", param="timestamp_granularities[]"
        )
    if form["stream"]:
        raise InvalidField("stream=true is not available yet on this server; use POST /asr?stream=1.", param="stream")
    return form


@blp.route("/audio/transcriptions")
class Transcriptions(MethodView):
    @blp.doc(requestBody={"required": True, "content": _FORM})
    @blp.response(200, TranscriptionJson, description="`json` (default); other formats below.")
    @blp.alt_response(
        200, schema=TranscriptionVerbose, content_type="application/json", description="verbose_json", success=True
    )
    @blp.alt_response(200, content_type="text/plain", description="`text`: the transcript.", success=True)
    @blp.alt_response(200, content_type="application/x-subrip", description="`srt` subtitles.", success=True)
    @blp.alt_response(200, content_type="text/vtt", description="`vtt` subtitles.", success=True)
    @blp.alt_response(400, schema=OpenAIError, description="Not a multipart/form-data request.")
    @blp.alt_response(408, schema=OpenAIError, description="The upload did not arrive in time.")
    @blp.alt_response(413, schema=OpenAIError, description="Upload or audio duration over the limit.")
    @blp.alt_response(415, schema=OpenAIError, description="Not decodable audio.")
    @blp.alt_response(422, schema=OpenAIError, description="Invalid or unsupported field (`param` names it).")
    @blp.alt_response(429, schema=OpenAIError, description="Queue full; retry after `Retry-After` seconds.")
    @blp.alt_response(503, schema=OpenAIError, description="Model still loading, or the server is shutting down.")
    def post(self):
        """Transcribe an uploaded file (OpenAI's `audio.transcriptions.create`)."""
        engine = ready_engine()
        if request.mimetype != "multipart/form-data":
            raise BadRequest("Send the audio as multipart/form-data with a `file` field.", code="invalid_content_type")
        settings = context.settings()
        started = time.perf_counter()
        data = audio_bytes_from_request(settings)  # parses the form; 422 without `file`
        form = _form()
        if form["language"] and form["language"].lower() not in ENGLISH and not engine.info.get("multilingual"):
            raise InvalidField(
                f"The model {engine.info['model_id']} transcribes English only (language=en).", param="language"
            )
        result = transcribe(engine, decode(data))
        context.metrics().transcribed(result.audio_seconds, time.perf_counter() - started)
        fmt = form["response_format"]
        if fmt == "text":
            return Response(result.text + "\n", mimetype="text/plain")
        if fmt == "srt":
            return Response(to_srt(result.segments), mimetype="application/x-subrip")
        if fmt == "vtt":
            return Response(to_vtt(result.segments), mimetype="text/vtt")
        if fmt == "verbose_json":
            body = {
                "task": "transcribe",
                "duration": round(result.audio_seconds, 3),
                "text": result.text,
                "segments": [
                    {"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(result.segments)
                ],
            }
            if not engine.info.get("multilingual"):
                body["language"] = "english"
            return jsonify(body)  # not through the `json` schema, which would keep `text` only
        return {"text": result.text}


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelList)
    def get(self):
        """The model this server runs (any `model` name in a request is served by it)."""
        info = context.engine().info
        return {
            "object": "list",
            "data": [{"id": info["model_id"], "object": "model", "created": 0, "owned_by": "asr-api"}],
        }
