"""Turn uploaded bytes into what Whisper eats: float32 mono samples at 16 kHz.

Two decoders, tried in order:

1. **soundfile** (libsndfile: wav, flac, ogg vorbis/opus, mp3, aiff, ...), read in blocks,
   downmixed by the mean over channels and resampled with ``soxr`` (HQ) on the fly, so a
   long 48 kHz stereo file never sits in memory at its native size. The header's frame
   count is checked against the duration cap before any sample is decoded, and reading
   stops at the cap, so a header that lies cannot make it read more.
2. **ffmpeg** for everything else (webm, m4a/mp4, aac, wma, ...): the bytes are its stdin,
   ``f32le`` mono 16 kHz is its stdout, and ``-t`` stops it one second past the duration
   cap (a decompression bomb yields at most that much). Input is read through the
   ``pipe`` protocol only, so a playlist-style body (HLS, concat) cannot make ffmpeg open
   local files or URLs. An MP4/M4A/MOV whose ``moov`` atom sits after the media data
   cannot be demuxed from a pipe, so a body that looks like ISO-BMFF is first decoded from
   a seekable file instead, with the demuxer pinned to ``mov`` and only the ``file``
   protocol allowed (falling back to the pipe if that fails).

   ffmpeg's stdin, stdout and stderr are anonymous in-memory files (Linux ``memfd``;
   unnamed temporary files elsewhere), never named paths, and the process is started
   with ``posix_spawn`` and reaped by polling rather than through :mod:`subprocess`:
   under gevent's monkey-patching, :mod:`subprocess` cannot spawn from gevent's native
   threadpool. This way :func:`decode_audio` works unchanged in a plain thread, in
   gevent's threadpool and on a greenlet (where waiting is cooperative), and ffmpeg is
   killed when the call ends early (timeout, greenlet killed). Calling it from the
   threadpool is preferred: the soundfile/soxr path is CPU-bound and would block the hub.

Errors (all :class:`~app.errors.ApiError`, messages never contain paths or ffmpeg output,
which is logged at debug level instead):

* ``415 empty_audio``: zero bytes, or audio that decodes to zero samples.
* ``415 unsupported_audio``: nothing could decode the bytes.
* ``415 decode_timeout``: ffmpeg ran longer than ``timeout_s``. 415 rather than 422 or 5xx
  because, in practice, it means the input is not audio this server can decode in time;
  the message says so and names the limit.
* ``413 audio_too_long``: longer than ``max_seconds`` (10 ms of slack for resampler and
  codec-padding rounding).

NaN and ±inf samples become 0. Samples are not clipped to [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import posix
import shutil
import signal
import tempfile
import time
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from app.errors import PayloadTooLarge, UnsupportedAudio

SAMPLE_RATE = 16000

#: Durations may exceed the cap by this much before they count as too long.
DURATION_SLACK_S = 0.01

_SOUNDFILE_BLOCK_FRAMES = 1 << 18  # ~5.5 s at 48 kHz per block
_STDERR_LOG_CHARS = 2000
_ISO_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
# Python ignores SIGPIPE (and SIGXFSZ); give ffmpeg the default dispositions, as subprocess does.
_RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))

_UNDECODABLE_MESSAGE = "The request body is not audio that could be decoded (wav, flac, ogg, mp3, webm, m4a, ...)."

log = logging.getLogger(__name__)


def _use_a_native_lock_in_soundfile() -> None:
    """Make soundfile's ``sf_open`` lock an OS lock, not a gevent one.

    ``soundfile.SoundFile`` serializes opening with a class-level ``threading.Lock``. When
    soundfile is imported after gevent's monkey-patching (as in a gunicorn gevent worker)
    that is a gevent lock, which is not safe across native threads: two decodes in the
    hub's threadpool contending for it both block forever (seen with 16 concurrent
    uploads). An OS lock is correct in every thread; gevent's original is that lock.
    """
    from gevent.monkey import get_original

    sf.SoundFile._sf_error_lock = get_original("_thread", "allocate_lock")()


_use_a_native_lock_in_soundfile()


def audio_duration_s(samples: np.ndarray) -> float:
    """Duration in seconds of 16 kHz ``samples``."""
    return len(samples) / SAMPLE_RATE


def decode_audio(data: bytes, *, max_seconds: float, timeout_s: float = 300) -> np.ndarray:
    """Decode ``data`` to a 1-D, C-contiguous float32 array of mono samples at 16 kHz.

    ``max_seconds`` caps the decoded duration (413 ``audio_too_long``); ``timeout_s``
    bounds the ffmpeg fallback's wall time (415 ``decode_timeout``). See the module
    docstring for the decoders tried and every error raised.
    """
    if not data:
        raise UnsupportedAudio("The request body is empty; send the audio file's bytes.", code="empty_audio")
    samples = _decode_with_soundfile(data, max_seconds)
    if samples is None:
        samples = _decode_with_ffmpeg(data, max_seconds, timeout_s)
    if samples.size == 0:
        raise UnsupportedAudio("The audio contains no samples.", code="empty_audio")
    _check_duration(len(samples) / SAMPLE_RATE, max_seconds)
    np.nan_to_num(samples, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _too_long(max_seconds: float) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The audio is longer than this server's limit of {max_seconds:g} seconds.", code="audio_too_long"
    )


def _check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds + DURATION_SLACK_S:
        raise _too_long(max_seconds)


def _decode_with_soundfile(data: bytes, max_seconds: float) -> np.ndarray | None:
    """Samples via libsndfile, or ``None`` when libsndfile cannot read ``data``."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            if rate <= 0 or channels <= 0:
                return None
            if f.frames > 0:
                _check_duration(f.frames / rate, max_seconds)
            max_frames = math.floor((max_seconds + DURATION_SLACK_S) * rate)
            resampler = None
            if rate != SAMPLE_RATE:
                resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            parts: list[np.ndarray] = []
            frames_read = 0
            # Not f.blocks(): when the header's frame count overstates the data (a truncated
            # mp3), blocks() yields the unread tail of its reused buffer, i.e. stale samples.
            # read() without ``out`` returns exactly the frames decoded.
            while True:
                block = f.read(_SOUNDFILE_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                frames_read += len(block)
                if frames_read > max_frames:
                    raise _too_long(max_seconds)
                mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].copy()
                # NaN/inf would smear across neighbouring samples in the resampler.
                np.nan_to_num(mono, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                parts.append(resampler.resample_chunk(mono) if resampler else mono)
            if resampler is not None:
                parts.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        log.debug("soundfile could not decode the input (%s: %s); trying ffmpeg", type(exc).__name__, exc)
        return None
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _decode_with_ffmpeg(data: bytes, max_seconds: float, timeout_s: float) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    samples = None
    if _looks_like_iso_bmff(data):
        # MP4/M4A/MOV with the moov atom after the media data cannot be demuxed from a pipe.
        samples = _run_ffmpeg(data, max_seconds, deadline, timeout_s, seekable=True)
    if samples is None:
        samples = _run_ffmpeg(data, max_seconds, deadline, timeout_s, seekable=False)
    if samples is None:
        raise UnsupportedAudio(_UNDECODABLE_MESSAGE, code="unsupported_audio")
    return samples


def _looks_like_iso_bmff(data: bytes) -> bool:
    return data[4:8] in _ISO_BMFF_BOXES


def _ffmpeg_command(ffmpeg: str, max_seconds: float, *, seekable: bool) -> list[str]:
    if seekable:
        # stdin is a regular (memory) file; opening it by name makes it seekable. The demuxer
        # is pinned to mov (external data references are off by default), so no other file
        # can be pulled in although the file protocol is allowed.
        source = ["-protocol_whitelist", "file", "-f", "mov", "-i", "/dev/stdin"]
    else:
        source = ["-protocol_whitelist", "pipe", "-i", "pipe:0"]
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0",
        *source,
        "-vn", "-sn", "-dn",
        "-t", f"{max_seconds + 1:.3f}",
        "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1",
    ]  # fmt: skip


def _run_ffmpeg(
    data: bytes, max_seconds: float, deadline: float, timeout_s: float, *, seekable: bool
) -> np.ndarray | None:
    """Samples from one ffmpeg run, or ``None`` when it produced no audio."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        log.error("ffmpeg is not installed; only formats libsndfile reads can be decoded")
        raise UnsupportedAudio(
            "This server can only decode wav, flac, ogg and mp3 right now (its audio converter is unavailable).",
            code="unsupported_audio",
        )
    with _scratch_file("asr-ffmpeg-in") as stdin, _scratch_file("asr-ffmpeg-out") as stdout:
        with _scratch_file("asr-ffmpeg-err") as stderr:
            stdin.write(data)
            stdin.flush()
            stdin.seek(0)
            try:
                status = _spawn_and_wait(
                    _ffmpeg_command(ffmpeg, max_seconds, seekable=seekable),
                    (stdin.fileno(), stdout.fileno(), stderr.fileno()),
                    deadline,
                )
            except TimeoutError:
                log.info("ffmpeg decode exceeded %.1f s; giving up", timeout_s)
                raise UnsupportedAudio(
                    f"Decoding the audio took longer than this server's limit of {timeout_s:g} seconds; "
                    "the file is probably damaged or in a format that cannot be decoded in time.",
                    code="decode_timeout",
                ) from None
            except OSError as exc:
                log.error("could not run ffmpeg: %s", exc)
                raise UnsupportedAudio(_UNDECODABLE_MESSAGE, code="unsupported_audio") from None
            stderr.seek(0)
            errors = stderr.read()[-_STDERR_LOG_CHARS:].decode("utf-8", "replace")
        stdout.seek(0)
        samples = np.fromfile(stdout, dtype="<f4").astype(np.float32, copy=False)
    mode = "seekable file" if seekable else "pipe"
    if samples.size == 0:
        log.debug("ffmpeg (%s) produced no audio, exit status %s: %s", mode, status, errors)
        return None
    if errors or status:
        log.debug("ffmpeg (%s) exit status %s, stderr: %s", mode, status, errors)
    return samples


def _scratch_file(name: str) -> BinaryIO:
    """An anonymous read/write file, in memory where the OS allows (Linux memfd)."""
    if hasattr(posix, "memfd_create"):
        try:
            return open(posix.memfd_create(name, posix.MFD_CLOEXEC), "w+b")
        except OSError:
            pass
    return tempfile.TemporaryFile(prefix=name)


def _spawn_and_wait(argv: list[str], fds: tuple[int, int, int], deadline: float) -> int | None:
    """Run ``argv`` with stdin/stdout/stderr on ``fds``; return its exit code.

    Returns ``None`` when the exit status could not be collected (someone else reaped the
    child). Raises :class:`TimeoutError` at ``deadline``; the child is killed and reaped
    whenever this function does not return normally (timeout, greenlet kill, ...).

    This deliberately avoids :mod:`subprocess`: under gevent's monkey-patching, spawning
    from a native threadpool thread fails ("child watchers are only available on the
    default loop") and a patched ``os.close`` can deadlock the stdlib implementation.
    ``posix.posix_spawn`` and ``posix.waitpid(WNOHANG)`` are never patched, and the polling
    ``time.sleep`` is cooperative on a greenlet and a plain sleep in a thread.
    """
    file_actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
    pid = posix.posix_spawn(argv[0], argv, os.environ, file_actions=file_actions, setsigdef=_RESET_SIGNALS)
    reaped = False
    try:
        delay = 0.001
        while True:
            try:
                done, status = posix.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (e.g. a SIGCHLD handler reaping all children)
                reaped = True
                return None
            if done:
                reaped = True
                return os.waitstatus_to_exitcode(status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
    finally:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                posix.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                posix.waitpid(pid, 0)
