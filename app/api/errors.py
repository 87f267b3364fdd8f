"""Render every error, ours or the framework's, as one JSON envelope."""

from __future__ import annotations

import logging

from flask import Flask, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from app.errors import ApiError, InternalError

log = logging.getLogger(__name__)


OPENAI_PREFIX = "/v1/"


def error_response(exc: ApiError):
    # the /v1 routes speak OpenAI's error shape, which its SDKs parse; the rest our own
    openai = has_request_context() and request.path.startswith(OPENAI_PREFIX)
    body = exc.to_openai_dict() if openai else exc.to_dict()
    if has_request_context() and g.get("request_id") and not openai:  # OpenAI's clients read the header
        body["error"]["request_id"] = g.request_id
    response = jsonify(body)
    response.status_code = exc.status
    for key, value in exc.headers.items():
        response.headers[key] = value
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        # webargs/flask-smorest attach validation details as exc.data["messages"]
        data = getattr(exc, "data", None)
        if isinstance(data, dict) and data.get("messages"):
            message = f"Invalid request: {data['messages']}"
        err = ApiError(message, code=_http_code(exc))
        err.status = status
        response = error_response(err)
        for key, value in exc.get_headers() if hasattr(exc, "get_headers") else []:
            if key.lower() not in ("content-type", "content-length"):
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(InternalError("The server failed to process this request."))
