"""Byte caps for request bodies (and a size formatter shared by the intake modules).

:func:`read_body_capped` reads a WSGI input stream without ever holding more than
``max_bytes + 64 KiB`` in memory: a declared ``Content-Length`` over the cap is refused
before a single byte is read, and a body that keeps coming past the cap (chunked upload,
absent or lying ``Content-Length``) is cut off as soon as it crosses the cap.
"""

from __future__ import annotations

from typing import Protocol

from app.errors import BadRequest, PayloadTooLarge

CHUNK_BYTES = 64 * 1024

_MB = 1024 * 1024


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def format_size(num_bytes: int) -> str:
    """``209715200`` → ``"200 MB"``; limits under 0.01 MB are given in bytes."""
    mb = round(num_bytes / _MB, 2)
    if mb == 0:
        return f"{num_bytes} bytes"
    return f"{mb:g} MB"


def too_large(max_bytes: int, *, what: str = "The request body") -> PayloadTooLarge:
    """The :class:`PayloadTooLarge` every byte cap raises (code ``payload_too_large``)."""
    return PayloadTooLarge(f"{what} is larger than this server's limit of {format_size(max_bytes)}.")


def read_body_capped(stream: _Readable, *, content_length: int | None, max_bytes: int) -> bytes:
    """Read ``stream`` to its end and return the bytes, refusing anything over ``max_bytes``.

    Raises :class:`~app.errors.PayloadTooLarge` (413) when ``content_length`` declares more
    than ``max_bytes`` (without reading) or as soon as more than ``max_bytes`` have arrived;
    :class:`~app.errors.BadRequest` (400) for a negative ``content_length``.
    ``content_length`` is only a hint: reading goes on until the stream ends, so a client
    that declares less than it sends is still capped.
    """
    if content_length is not None:
        if content_length < 0:
            raise BadRequest("The Content-Length header is invalid.", code="invalid_content_length")
        if content_length > max_bytes:
            raise too_large(max_bytes)
    parts: list[bytes] = []
    received = 0
    while True:
        # Never ask for more than one byte past the cap: that byte is enough to know.
        chunk = stream.read(min(CHUNK_BYTES, max_bytes - received + 1))
        if not chunk:
            break
        received += len(chunk)
        if received > max_bytes:
            raise too_large(max_bytes)
        parts.append(chunk)
    return b"".join(parts)
