"""The one error type every layer raises, and the JSON envelope it becomes.

Every failure a client can cause is an :class:`ApiError` with an HTTP status, a
stable machine-readable ``code`` and a human message that never contains a stack
trace or a server path. The HTTP layer renders it as::

    {"error": {"code": "unsupported_audio", "message": "...", "status": 415}}
"""

from __future__ import annotations


class ApiError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.param = param  # the request field at fault, where there is one

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}

    def to_openai_dict(self) -> dict:
        """OpenAI's envelope, for the ``/v1`` routes that OpenAI's SDKs call."""
        if self.status == 429:
            kind = "rate_limit_error"
        elif self.status >= 500:
            kind = "server_error"
        else:  # OpenAI answers a bad key with 401 invalid_request_error / invalid_api_key too
            kind = "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class RequestTimeout(ApiError):
    status, code = 408, "upload_timeout"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedAudio(ApiError):
    status, code = 415, "unsupported_audio"


class InvalidField(ApiError):
    status, code = 422, "invalid_field"


class TooManyRequests(ApiError):
    status, code = 429, "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after)))})


class ServiceUnavailable(ApiError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after)))})


class ClientClosedRequest(ApiError):
    """The client hung up before its reply was ready (nginx's 499); logged, never read."""

    status, code = 499, "client_closed_request"


class InternalError(ApiError):
    """A failure of the server itself; the message never carries its details."""

    status, code = 500, "internal_error"


class UpstreamError(ApiError):
    status, code = 502, "upstream_error"


class UpstreamTimeout(ApiError):
    status, code = 504, "upstream_timeout"
