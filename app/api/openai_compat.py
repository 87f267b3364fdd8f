"""OpenAI-compatible routes: ``POST /v1/audio/transcriptions``, ``POST /v1/audio/translations``
and ``GET /v1/models``.

The same engine, batching, limits and metrics as ``/asr``, in the shapes OpenAI's API and
SDKs use (``client.audio.transcriptions.create(model=..., file=...)``), errors included
(``{"error": {"message", "type", "param", "code"}}``, see :mod:`app.api.errors`).

Fields: ``file`` (required), ``model`` (required, as OpenAI's; any name is served by the
loaded model, so ``whisper-1`` works), ``language`` (code or English name; omitted: detected
on multilingual models; ``en`` only for English-only models), ``response_format`` (``json`` |
``text`` | ``srt`` | ``vtt`` | ``verbose_json``), ``timestamp_granularities[]`` (``segment``
and/or ``word``, with ``verbose_json``: word timestamps add a top-level ``words: [{word,
start, end}]``), ``prompt`` (conditions the decoder, as OpenAI's: ``<|startofprev|>`` and its
last 223 tokens), ``temperature`` (0: greedy with the loop fallback of
:mod:`app.inference.fallback`; above 0: sampled at that temperature), ``stream`` (``true``:
server-sent events, see :mod:`app.api.sse`; ``json``/``text`` only), ``chunking_strategy`` /
``vad`` (voice activity detection, see :mod:`app.api.vad_request`).
``/v1/audio/translations`` takes the same fields but ``language`` and answers in English
(multilingual models only).
"""

from __future__ import annotations

import time

from flask import Response, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from app.api import context
from app.api.intake import audio_bytes_from_request
from app.api.sse import transcript_events
from app.api.subtitles import to_srt, to_vtt
from app.api.transcribe import check_can_translate, decode, ready_engine, request_options, transcribe
from app.api.vad_request import vad_from_form
from app.errors import BadRequest, InvalidField
from app.inference.languages import language_name

blp = Blueprint("openai", __name__, url_prefix="/v1", description="OpenAI-compatible API")

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAMABLE = ("json", "text")


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


class VerboseWord(Schema):
    word = fields.String()
    start = fields.Float()
    end = fields.Float()


class TranscriptionVerbose(Schema):
    task = fields.String(metadata={"example": "transcribe"})
    language = fields.String(metadata={"example": "english"})
    duration = fields.Float()
    text = fields.String()
    segments = fields.List(fields.Nested(VerboseSegment))
    words = fields.List(
        fields.Nested(VerboseWord), metadata={"description": "With `timestamp_granularities[]=word` only."}
    )


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
                "timestamp_granularities[]": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["segment", "word"]},
                },
                "stream": {
                    "type": "boolean",
                    "description": "`true`: text/event-stream of `transcript.text.delta` events, then "
                    "`transcript.text.done` (response_format json or text only).",
                },
                "chunking_strategy": {
                    "description": '`"auto"` or `{"type": "server_vad", "threshold", "silence_duration_ms", '
                    '"prefix_padding_ms"}`: cut long silences out with voice activity detection before decoding.',
                    "oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "object"}],
                },
                "vad": {"type": "boolean", "description": "Voice activity detection on/off (default: VAD_FILTER)."},
            },
            "required": ["file", "model"],
        }
    }
}


class TranslationForm(TranscriptionForm):
    class Meta:
        unknown = EXCLUDE
        exclude = ("language",)


def _form(schema: type[Schema] = TranscriptionForm) -> dict:
    try:
        form = schema().load(request.form.to_dict(flat=True))
    except ValidationError as exc:
        field = next(iter(exc.messages), None)
        raise InvalidField(f"Invalid form field(s): {exc.messages}", param=str(field) if field else None) from None
    granularities = request.form.getlist("timestamp_granularities[]") or request.form.getlist("timestamp_granularities")
    if any(g not in ("segment", "word") for g in granularities):
        raise InvalidField("timestamp_granularities[] takes segment or word.", param="timestamp_granularities[]")
    if granularities and form["response_format"] != "verbose_json":
        raise InvalidField(
            "timestamp_granularities[] needs response_format=verbose_json.", param="timestamp_granularities[]"
        )
    form["granularities"] = set(granularities) or {"segment"}
    if form["stream"] and form["response_format"] not in STREAMABLE:
        raise InvalidField("stream=true works with response_format json or text.", param="response_format")
    return form


def _audio_responses(text: str, unprocessable: str):
    """The OpenAPI replies both audio routes share (their formats, then OpenAI-shaped errors)."""
    replies = [
        (200, {"schema": TranscriptionVerbose, "content_type": "application/json", "description": "verbose_json"}),
        (200, {"content_type": "text/plain", "description": f"`text`: the {text}."}),
        (200, {"content_type": "application/x-subrip", "description": "`srt` subtitles."}),
        (200, {"content_type": "text/vtt", "description": "`vtt` subtitles."}),
        (
            200,
            {
                "content_type": "text/event-stream",
                "description": "`stream=true`: `transcript.text.delta` events, then `transcript.text.done`.",
            },
        ),
    ]
    errors = [
        (400, "Not a multipart/form-data request."),
        (408, "The upload did not arrive in time."),
        (413, "Upload or audio duration over the limit."),
        (415, "Not decodable audio."),
        (422, unprocessable),
        (429, "Queue full; retry after `Retry-After` seconds."),
        (503, "Model still loading, or the server is shutting down."),
    ]

    def decorate(view):
        for status, description in reversed(errors):
            view = blp.alt_response(status, schema=OpenAIError, description=description)(view)
        for status, kwargs in reversed(replies):
            view = blp.alt_response(status, success=True, **kwargs)(view)
        return view

    return decorate


@blp.route("/audio/transcriptions")
class Transcriptions(MethodView):
    @blp.doc(requestBody={"required": True, "content": _FORM})
    @blp.response(200, TranscriptionJson, description="`json` (default); other formats below.")
    @_audio_responses("transcript", "Invalid or unsupported field (`param` names it).")
    def post(self):
        """Transcribe an uploaded file (OpenAI's `audio.transcriptions.create`)."""
        return _audio_request("transcribe")


_TRANSLATION_FORM = {
    "multipart/form-data": {
        "schema": {
            **_FORM["multipart/form-data"]["schema"],
            "properties": {
                k: v for k, v in _FORM["multipart/form-data"]["schema"]["properties"].items() if k != "language"
            },
        }
    }
}


@blp.route("/audio/translations")
class Translations(MethodView):
    @blp.doc(requestBody={"required": True, "content": _TRANSLATION_FORM})
    @blp.response(200, TranscriptionJson, description="`json` (default): the English text; other formats below.")
    @_audio_responses("translation", "Invalid field, or an English-only model (which cannot translate).")
    def post(self):
        """Translate an uploaded file's speech into English (OpenAI's `audio.translations.create`)."""
        return _audio_request("translate")


def _audio_request(task: str):
    engine = ready_engine()
    if request.mimetype != "multipart/form-data":
        raise BadRequest("Send the audio as multipart/form-data with a `file` field.", code="invalid_content_type")
    settings = context.settings()
    started = time.perf_counter()
    data = audio_bytes_from_request(settings)  # parses the form; 422 without `file`
    form = _form(TranscriptionForm if task == "transcribe" else TranslationForm)
    if task == "translate":
        check_can_translate(engine, param="model")  # /v1 has no `task` field: the model is what cannot
    vad, vad_params = vad_from_form(request.form, settings)
    options = request_options(
        engine,
        language=form.get("language"),
        task=task,
        prompt=form["prompt"],
        temperature=form["temperature"],
        word_timestamps="word" in form["granularities"],
        vad=vad,
        vad_params=vad_params,
    )
    if form["stream"]:
        return transcript_events(engine, decode(data), options, started)
    result = transcribe(engine, decode(data), options)
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
            "task": task,
            # the language of the speech (forced or detected), by English name as OpenAI's API names it
            "language": language_name(result.language or "en"),
            "duration": round(result.audio_seconds, 3),
            "text": result.text,
        }
        if "segment" in form["granularities"]:
            body["segments"] = [
                {"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(result.segments)
            ]
        if options.word_timestamps:  # OpenAI's words carry no surrounding spaces
            body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for w in result.words]
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
