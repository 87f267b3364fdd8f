"""Marshmallow schemas: request and response shapes, also the OpenAPI source."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


class AsrUrlRequest(Schema):
    url = fields.String(
        required=True,
        validate=validate.Length(min=1, max=8192),
        metadata={
            "description": "An http(s) URL to download, or a path inside LOCAL_AUDIO_DIR on the server.",
            "example": "https://example.com/audio.mp3",
        },
    )


class AsrQuery(Schema):
    class Meta:
        unknown = EXCLUDE

    stream = fields.Boolean(
        load_default=False,
        metadata={
            "description": (
                "`1`/`true`: respond with `application/x-ndjson`, one line per timed chunk as soon as it is final, "
                'then a last line `{"done": true, "text": ...}` with the full text and timing; an error after '
                'streaming began arrives as a last `{"error": {...}}` line.'
            )
        },
    )

    language = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=32),
        metadata={
            "description": (
                "The spoken language as an ISO 639-1 code (`de`) or English name (`german`). Omitted: detected "
                "(multilingual models); English-only models take `en` only."
            )
        },
    )
    task = fields.String(
        load_default="transcribe",
        validate=validate.OneOf(["transcribe", "translate"]),
        metadata={"description": "`transcribe` (default) or `translate` (into English; multilingual models only)."},
    )

    format = fields.String(
        load_default="json",
        validate=validate.OneOf(["json", "srt", "vtt"]),
        metadata={
            "description": "`json` (default), or subtitles: `srt` (SubRip) or `vtt` (WebVTT); not with `stream`."
        },
    )

    return_timestamps = fields.String(
        load_default="segment",
        validate=validate.OneOf(["segment", "word"]),
        metadata={
            "description": (
                "`segment` (default): timed chunks; `word`: each chunk also gets `words` "
                "(`[{word, start, end}]`, seconds of the whole file, from the alignment heads' "
                "cross-attention); JSON and NDJSON only."
            )
        },
    )

    vad = fields.Boolean(
        load_default=None,
        metadata={
            "description": (
                "Voice activity detection: `true` cuts silences of VAD_MIN_SILENCE_S or longer out before decoding "
                "(no invented text there; timestamps still in the original audio); default VAD_FILTER."
            )
        },
    )


class StreamDone(Schema):
    done = fields.Boolean(metadata={"example": True})
    text = fields.String()
    audio_length = fields.Float(metadata={"description": "seconds"})
    processing_time = fields.Float(metadata={"description": "seconds"})
    realtime_factor = fields.Float()
    model_id = fields.String()
    device = fields.String()
    language = fields.String(
        allow_none=True, metadata={"description": "ISO 639-1 code of the speech (forced or detected)."}
    )


class TimedWord(Schema):
    word = fields.String(metadata={"description": "The word as in the chunk's text, with its leading space."})
    start = fields.Float(metadata={"description": "seconds"})
    end = fields.Float(metadata={"description": "seconds"})


class TimedChunk(Schema):
    timestamp = fields.List(
        fields.Float(), validate=validate.Length(equal=2), metadata={"description": "[start, end] in seconds"}
    )
    text = fields.String()
    words = fields.List(
        fields.Nested(TimedWord),
        metadata={"description": "With `return_timestamps=word` only: the chunk's words; joined, its text."},
    )


class AsrResponse(Schema):
    text = fields.String(metadata={"description": "The whole transcript."})
    chunks = fields.List(fields.Nested(TimedChunk), metadata={"description": "Timed segments in audio order."})
    language = fields.String(
        metadata={"description": "ISO 639-1 code of the speech: the one asked for, or the detected one."}
    )


class HealthResponse(Schema):
    status = fields.String(metadata={"example": "ok"})
    version = fields.String()
    model_id = fields.String()
    device = fields.String(metadata={"description": "GPU name, or the CPU description."})


class ErrorBody(Schema):
    code = fields.String(metadata={"description": "Stable machine-readable error code."})
    message = fields.String()
    status = fields.Integer()
    request_id = fields.String(metadata={"description": "The request's id, as in its X-Request-ID header."})


class ErrorResponse(Schema):
    error = fields.Nested(ErrorBody)
