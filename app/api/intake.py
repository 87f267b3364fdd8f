"""Where a request's audio bytes come from: JSON url/path, multipart file or raw body.

Each source is bounded: a byte cap, and a deadline on the cooperative I/O (a stalled
upload gets 408, a slow download 504) so a slow client cannot hold a request forever.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import gevent
from flask import request
from marshmallow import ValidationError

from app.api.schemas import AsrUrlRequest
from app.audio.fetch import fetch_url, read_local_file
from app.audio.limits import read_body_capped
from app.errors import ApiError, BadRequest, InvalidField, RequestTimeout, UpstreamTimeout
from app.settings import Settings
from app.threads import run_blocking

MAX_JSON_BYTES = 64 * 1024


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


def audio_bytes_from_request(settings: Settings) -> bytes:
    """The audio bytes, wherever the client put them (JSON url/path, multipart file, raw body)."""
    mimetype = request.mimetype or ""
    if mimetype == "application/json" or mimetype.endswith("+json"):
        raw = _read_body(settings, MAX_JSON_BYTES)
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
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
