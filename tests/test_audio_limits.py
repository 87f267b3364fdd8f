"""read_body_capped: declared, lying and absent Content-Length."""

from __future__ import annotations

import io

import pytest

from app.audio.limits import CHUNK_BYTES, format_size, read_body_capped
from app.errors import BadRequest, PayloadTooLarge


class CountingStream(io.BytesIO):
    """A BytesIO that records how many bytes were handed out."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.handed_out = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.handed_out += len(chunk)
        return chunk


def test_declared_too_big_is_refused_before_reading() -> None:
    stream = CountingStream(b"x" * 10)
    with pytest.raises(PayloadTooLarge) as info:
        read_body_capped(stream, content_length=11 * 1024 * 1024, max_bytes=10 * 1024 * 1024)
    assert info.value.status == 413
    assert "10 MB" in info.value.message
    assert stream.handed_out == 0


def test_lying_content_length_is_still_capped() -> None:
    max_bytes = 3 * CHUNK_BYTES
    stream = CountingStream(b"x" * (50 * CHUNK_BYTES))
    with pytest.raises(PayloadTooLarge):
        read_body_capped(stream, content_length=100, max_bytes=max_bytes)
    # Stops right after crossing the cap instead of draining the whole stream.
    assert stream.handed_out <= max_bytes + 1


def test_absent_content_length_is_capped() -> None:
    with pytest.raises(PayloadTooLarge):
        read_body_capped(CountingStream(b"x" * 1001), content_length=None, max_bytes=1000)


@pytest.mark.parametrize("content_length", [None, 1000])
def test_exact_limit_is_ok(content_length: int | None) -> None:
    data = bytes(range(256)) * 4
    assert read_body_capped(io.BytesIO(data[:1000]), content_length=content_length, max_bytes=1000) == data[:1000]


def test_multi_chunk_body_is_returned_whole() -> None:
    data = b"abc" * CHUNK_BYTES
    assert read_body_capped(io.BytesIO(data), content_length=len(data), max_bytes=len(data) + 5) == data


def test_empty_body() -> None:
    assert read_body_capped(io.BytesIO(b""), content_length=0, max_bytes=10) == b""


def test_negative_content_length() -> None:
    with pytest.raises(BadRequest):
        read_body_capped(io.BytesIO(b""), content_length=-1, max_bytes=10)


def test_format_size() -> None:
    assert format_size(200 * 1024 * 1024) == "200 MB"
    assert format_size(int(1.5 * 1024 * 1024)) == "1.5 MB"
    assert format_size(100) == "100 bytes"
