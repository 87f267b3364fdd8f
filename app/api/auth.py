"""Optional API key: ``Authorization: Bearer <API_KEY>`` on every route but the open ones.

Unset ``API_KEY``: no auth at all. Set: every request needs the key, except ``/hc`` (probes
carry no credentials) and, by settings, the docs (``PUBLIC_DOCS``, default open) and
``/metrics`` (``PUBLIC_METRICS``, default closed). Unknown paths need the key too (401, not
404, so the route list does not leak). A missing or wrong key is a 401 with
``WWW-Authenticate: Bearer`` in the route's error envelope (OpenAI's on ``/v1``: code
``invalid_api_key``, as OpenAI's SDKs expect). Keys are compared in constant time (their
SHA-256 digests with :func:`hmac.compare_digest`, so not even the length leaks).

The OpenAPI document declares the bearer scheme when a key is set (Swagger UI at ``/docs``
then shows the lock and an Authorize button); open operations say ``security: []``.
"""

from __future__ import annotations

import hashlib
import hmac

from apispec import BasePlugin
from flask import Flask, request

from app.errors import Unauthorized
from app.settings import Settings

SCHEME = "bearerAuth"
HEALTH_PATH = "/hc"
DOCS_PATHS = ("/docs", "/openapi.json")  # and everything under /docs/ (Swagger UI's assets)
METRICS_PATH = "/metrics"


def is_public(path: str, settings: Settings) -> bool:
    if path == HEALTH_PATH:
        return True
    if settings.public_docs and (path in DOCS_PATHS or path.startswith("/docs/")):
        return True
    return settings.public_metrics and path == METRICS_PATH


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def register_auth(app: Flask, settings: Settings) -> None:
    """Add the key check (after the request id, so a 401 carries one). No-op without API_KEY."""
    if settings.api_key is None:
        return
    expected = _digest(settings.api_key.get_secret_value())

    @app.before_request
    def _require_api_key():
        if is_public(request.path, settings):
            return None
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "This server needs an API key: send `Authorization: Bearer <API_KEY>`."
        elif hmac.compare_digest(_digest(token.strip()), expected):
            return None
        else:
            message = "The API key is not valid for this server."
        raise Unauthorized(message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="asr"'})


class SecurityPlugin(BasePlugin):
    """apispec plugin: open operations get ``security: []``; the others document the 401."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        for operation in (operations or {}).values():
            if is_public(path or "", self.settings):
                operation["security"] = []
            else:
                operation.setdefault("responses", {}).setdefault(
                    "401", {"description": "Missing or wrong API key (`Authorization: Bearer <API_KEY>`)."}
                )


def spec_kwargs(settings: Settings) -> dict:
    """flask-smorest ``Api(spec_kwargs=...)``: the bearer scheme, required by default, when a key is set."""
    if settings.api_key is None:
        return {}
    return {
        "extra_plugins": [SecurityPlugin(settings)],
        "security": [{SCHEME: []}],
        "components": {"securitySchemes": {SCHEME: {"type": "http", "scheme": "bearer"}}},
    }
