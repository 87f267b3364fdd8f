"""Audio intake: capped request bodies, safe URL/local-path fetching, decoding to 16 kHz mono.

* :mod:`app.audio.limits` – :func:`read_body_capped` for request bodies.
* :mod:`app.audio.fetch` – :func:`fetch_url` (SSRF-safe) and :func:`read_local_file`.
* :mod:`app.audio.decode` – :func:`decode_audio` (soundfile, then ffmpeg) to float32 at 16 kHz.

All functions are synchronous; every failure a client can cause is an
:class:`app.errors.ApiError`.
"""

from app.audio.decode import SAMPLE_RATE, audio_duration_s, decode_audio
from app.audio.fetch import fetch_url, is_address_permitted, read_local_file, resolve_local_path
from app.audio.limits import read_body_capped

__all__ = [
    "SAMPLE_RATE",
    "audio_duration_s",
    "decode_audio",
    "fetch_url",
    "is_address_permitted",
    "read_body_capped",
    "read_local_file",
    "resolve_local_path",
]
