"""What a request asks of voice activity detection (VAD), as transcription options.

``/asr``: the ``vad`` query parameter. ``/v1/audio/transcriptions``: OpenAI's
``chunking_strategy`` form field, either ``"auto"`` (VAD with the server's ``VAD_*``
settings) or a ``server_vad`` object (its ``threshold``, ``silence_duration_ms`` and
``prefix_padding_ms`` tune this request; OpenAI's SDKs send it as
``chunking_strategy[type]=server_vad`` ... form keys, a JSON text works too), and this
server's own ``vad`` form field (``true``/``false``). A request that says nothing gets
``VAD_FILTER``.
"""

from __future__ import annotations

import json
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from werkzeug.datastructures import MultiDict

from app.audio.vad import VadParams
from app.errors import InvalidField
from app.settings import Settings

FIELD = "chunking_strategy"


class ServerVad(Schema):
    """OpenAI's ``{"type": "server_vad", ...}`` chunking strategy."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.Equal("server_vad"))
    threshold = fields.Float(validate=validate.Range(min=0, max=1, min_inclusive=False, max_inclusive=False))
    silence_duration_ms = fields.Integer(validate=validate.Range(min=1, max=60_000))
    prefix_padding_ms = fields.Integer(validate=validate.Range(min=0, max=5_000))


def _strategy(form: MultiDict) -> str | dict[str, Any] | None:
    """The chunking strategy as sent: ``None``, a string, or the object's fields."""
    prefix = FIELD + "["
    nested = {
        key[len(prefix) : -1]: form[key]
        for key in form
        if isinstance(key, str) and key.startswith(prefix) and key.endswith("]")
    }
    if nested:
        return nested
    value = (form.get(FIELD) or "").strip()
    if not value:
        return None
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise InvalidField(f"{FIELD} is not valid JSON.", param=FIELD) from None
        if not isinstance(parsed, dict):
            raise InvalidField(f'{FIELD} takes "auto" or a server_vad object.', param=FIELD)
        return parsed
    return value


def vad_from_form(form: MultiDict, settings: Settings) -> tuple[bool, VadParams | None]:
    """``(vad on?, its tuning or None for the settings')`` for a ``/v1`` form; 422 when invalid."""
    strategy = _strategy(form)
    explicit: bool | None = None
    if form.get("vad", "").strip():
        try:
            explicit = fields.Boolean().deserialize(form["vad"].strip())
        except ValidationError:
            raise InvalidField("vad takes true or false.", param="vad") from None
    if strategy is None:
        return (settings.vad_filter if explicit is None else explicit), None
    if explicit is False:
        raise InvalidField(f"{FIELD} asks for voice activity detection but vad=false turns it off.", param="vad")
    if strategy == "auto":
        return True, None
    if isinstance(strategy, str):
        raise InvalidField(f'{FIELD} takes "auto" or {{"type": "server_vad", ...}}.', param=FIELD)
    try:
        loaded = ServerVad().load(strategy)
    except ValidationError as exc:
        raise InvalidField(f"Invalid {FIELD}: {exc.messages}", param=FIELD) from None
    base = VadParams.from_settings(settings)
    return True, VadParams(
        threshold=loaded.get("threshold", base.threshold),
        min_silence_s=loaded["silence_duration_ms"] / 1000 if "silence_duration_ms" in loaded else base.min_silence_s,
        pad_s=loaded["prefix_padding_ms"] / 1000 if "prefix_padding_ms" in loaded else base.pad_s,
    )
