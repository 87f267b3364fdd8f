"""``X-Request-ID``: taken from the client when sane, else a fresh uuid4; echoed on every response.

The id is kept in ``flask.g.request_id``: log lines written during the request carry it
(:mod:`app.logs`), error envelopes include it, and the response header returns it, for
errors and NDJSON streams alike (the header is set before the body is sent).
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, g, request

HEADER = "X-Request-ID"
# printable ASCII (spaces inside allowed), 1 to 128 characters; anything else is replaced
_SANE = re.compile(r"[!-~](?:[ -~]{0,126}[!-~])?")


def sane_request_id(value: str | None) -> str:
    """``value`` stripped if it is a usable id, else a new uuid4 (hex with dashes)."""
    if value is not None:
        value = value.strip()
        if _SANE.fullmatch(value):
            return value
    return str(uuid.uuid4())


def register_request_id(app: Flask) -> None:
    """Register first: the other before-request hooks (auth) and their errors see the id."""

    @app.before_request
    def _assign_request_id():
        g.request_id = sane_request_id(request.headers.get(HEADER))

    @app.after_request
    def _echo_request_id(response):
        request_id = g.get("request_id")
        if request_id is not None:
            response.headers[HEADER] = request_id
        return response
