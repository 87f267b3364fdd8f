"""decode_audio on real encoded speech (espeak-ng + ffmpeg) and on broken input."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio.decode import SAMPLE_RATE, audio_duration_s, decode_audio
from app.errors import PayloadTooLarge, UnsupportedAudio

# ffmpeg output arguments per test format.
FORMATS: dict[str, list[str]] = {
    "wav": [],
    "flac": [],
    "ogg_vorbis": ["-c:a", "libvorbis", "-f", "ogg"],
    "ogg_opus": ["-c:a", "libopus", "-f", "ogg"],
    "mp3": ["-c:a", "libmp3lame", "-f", "mp3"],
    "webm_opus": ["-c:a", "libopus", "-f", "webm"],
    "m4a_aac": ["-c:a", "aac", "-f", "ipod"],
    "m4a_aac_faststart": ["-c:a", "aac", "-movflags", "+faststart", "-f", "ipod"],
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    wav = root / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(wav), "Hello world, this is a test of the audio decoder."], check=True, timeout=60
    )
    out = {"wav": wav}
    for name, args in FORMATS.items():
        if name == "wav":
            continue
        path = root / f"speech.{name}"
        _ffmpeg("-i", str(wav), *args, str(path))
        out[name] = path
    return out


@pytest.fixture(scope="module")
def wav_duration(media: dict[str, Path]) -> float:
    info = sf.info(str(media["wav"]))
    return info.frames / info.samplerate


def _assert_samples(samples: np.ndarray) -> None:
    assert isinstance(samples, np.ndarray)
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert samples.flags.c_contiguous
    assert np.isfinite(samples).all()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_decodes_each_format(fmt: str, media: dict[str, Path], wav_duration: float) -> None:
    samples = decode_audio(media[fmt].read_bytes(), max_seconds=60)
    _assert_samples(samples)
    assert abs(audio_duration_s(samples) - wav_duration) < 0.1
    assert np.abs(samples).max() > 0.05  # it is speech, not silence


def test_m4a_with_moov_at_end_needs_seekable_input(tmp_path: Path) -> None:
    # Large enough that ffmpeg cannot demux it from a pipe (checked below): needs the seekable path.
    path = tmp_path / "tone.m4a"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=20", "-c:a", "aac", "-f", "ipod", str(path))
    data = path.read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")
    samples = decode_audio(data, max_seconds=60)
    _assert_samples(samples)
    assert abs(audio_duration_s(samples) - 20.0) < 0.1
    piped = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", "pipe:0", "-f", "f32le", "pipe:1"],
        input=data, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert piped.stdout == b""


def test_stereo_44k1_is_downmixed_and_resampled() -> None:
    t = np.arange(2 * 44100) / 44100
    left = 0.8 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="WAV", subtype="PCM_16")
    samples = decode_audio(buf.getvalue(), max_seconds=60)
    _assert_samples(samples)
    assert abs(len(samples) - 2 * SAMPLE_RATE) <= 2
    # Mean of the channels: half the left channel's amplitude.
    assert 0.38 < np.abs(samples[1000:-1000]).max() < 0.42


def test_stereo_through_ffmpeg_is_downmixed(tmp_path: Path) -> None:
    path = tmp_path / "stereo.webm"
    tone = "sine=frequency=300:duration=1.5:sample_rate=48000"
    _ffmpeg("-f", "lavfi", "-i", tone, "-ac", "2", "-c:a", "libopus", str(path))
    samples = decode_audio(path.read_bytes(), max_seconds=60)
    _assert_samples(samples)
    assert abs(audio_duration_s(samples) - 1.5) < 0.1


def test_nan_and_inf_become_zero() -> None:
    data = np.full(SAMPLE_RATE, 0.25, dtype=np.float32)
    data[10], data[20], data[30] = np.nan, np.inf, -np.inf
    buf = io.BytesIO()
    sf.write(buf, data, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    samples = decode_audio(buf.getvalue(), max_seconds=60)
    _assert_samples(samples)
    assert samples[10] == samples[20] == samples[30] == 0.0
    assert samples[11] == pytest.approx(0.25)


def _corrupt_wav(media: dict[str, Path]) -> bytes:
    data = bytearray(media["wav"].read_bytes())
    data[8:16] = b"XXXXXXXX"  # "WAVEfmt " → garbage: no longer a RIFF/WAVE header
    return bytes(data)


BAD_INPUTS = {
    "empty": lambda media: b"",
    "random": lambda media: np.random.default_rng(0).bytes(20000),
    "text": lambda media: b"This is not audio, only a text file renamed to .mp3\n" * 200,
    "truncated_mp3": lambda media: media["mp3"].read_bytes()[:200],
    "corrupt_wav_header": _corrupt_wav,
    "hls_playlist_pointing_at_local_file": lambda media: (
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{media['wav']}\n#EXT-X-ENDLIST\n".encode()
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_unsupported_audio(name: str, media: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedAudio) as info:
        decode_audio(BAD_INPUTS[name](media), max_seconds=60)
    err = info.value
    assert err.status == 415
    assert err.code in ("unsupported_audio", "empty_audio")
    assert "/" not in err.message
    assert "pipe" not in err.message
    assert "invalid data" not in err.message.lower()


def test_empty_input_code(media: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedAudio) as info:
        decode_audio(b"", max_seconds=60)
    assert info.value.code == "empty_audio"


def test_zero_sample_wav_is_empty_audio() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, dtype=np.float32), SAMPLE_RATE, format="WAV")
    with pytest.raises(UnsupportedAudio) as info:
        decode_audio(buf.getvalue(), max_seconds=60)
    assert info.value.status == 415


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "webm_opus", "m4a_aac"])
def test_too_long_audio(fmt: str, media: dict[str, Path], wav_duration: float) -> None:
    assert wav_duration > 1.5
    with pytest.raises(PayloadTooLarge) as info:
        decode_audio(media[fmt].read_bytes(), max_seconds=1.0)
    assert info.value.status == 413
    assert info.value.code == "audio_too_long"
    assert "1 seconds" in info.value.message


def test_header_lying_about_length_is_capped(tmp_path: Path) -> None:
    # A raw PCM stream behind a WAV header that claims "unknown/huge" length is still cut at the cap.
    pcm = (np.sin(np.arange(5 * SAMPLE_RATE) / 10) * 10000).astype("<i2").tobytes()
    header = bytearray(b"RIFF\xff\xff\xff\xffWAVEfmt ")
    header += (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    header += SAMPLE_RATE.to_bytes(4, "little") + (2 * SAMPLE_RATE).to_bytes(4, "little")
    header += (2).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"data\xff\xff\xff\xff"
    with pytest.raises(PayloadTooLarge):
        decode_audio(bytes(header) + pcm, max_seconds=2.0)
    assert abs(audio_duration_s(decode_audio(bytes(header) + pcm, max_seconds=10)) - 5.0) < 0.01


def test_exact_limit_is_accepted() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.full(2 * SAMPLE_RATE, 0.1, dtype=np.float32), SAMPLE_RATE, format="FLAC")
    assert len(decode_audio(buf.getvalue(), max_seconds=2.0)) == 2 * SAMPLE_RATE


def test_ffmpeg_timeout(media: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedAudio) as info:
        decode_audio(media["webm_opus"].read_bytes(), max_seconds=60, timeout_s=0.001)
    assert info.value.status == 415
    assert info.value.code == "decode_timeout"


GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import sys

import gevent
from gevent import get_hub

from app.audio.decode import decode_audio
from app.errors import ApiError

data = open(sys.argv[1], "rb").read()


def run(**kwargs):
    try:
        return len(decode_audio(data, max_seconds=60, **kwargs))
    except ApiError as exc:
        return exc.code


pool = get_hub().threadpool
jobs = [pool.spawn(run), gevent.spawn(run), pool.spawn(run, timeout_s=0.001), gevent.spawn(run, timeout_s=0.001)]
print([job.get(timeout=30) for job in jobs])
"""


@pytest.mark.parametrize("fmt", ["webm_opus", "m4a_aac"])
def test_ffmpeg_path_works_under_gevent_threadpool_and_greenlets(fmt: str, media: dict[str, Path]) -> None:
    """gevent's patched subprocess cannot spawn from its native threadpool; decode must not rely on it."""
    pytest.importorskip("gevent")
    expected = len(decode_audio(media[fmt].read_bytes(), max_seconds=60))
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, str(media[fmt])],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([expected, expected, "decode_timeout", "decode_timeout"]), proc.stderr


_CONCURRENT_DECODES = """
from gevent import monkey

monkey.patch_all()  # as in a gunicorn gevent worker: soundfile is imported after this

import io

import gevent
import numpy as np
import soundfile as sf
from gevent.threadpool import ThreadPool

from app.audio.decode import decode_audio

buf = io.BytesIO()
sf.write(buf, np.zeros(1600, np.float32), 16000, format="WAV")
data = buf.getvalue()


def work(_):
    for _ in range(200):
        decode_audio(data, max_seconds=10)


pool = ThreadPool(8)
with gevent.Timeout(30):
    gevent.joinall([pool.spawn(work, i) for i in range(8)], raise_error=True)
print("done")
"""


def test_concurrent_decodes_in_native_threads_under_gevent_do_not_deadlock():
    """soundfile's class-level lock, created after monkey-patching, used to hang two threadpool decodes."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _CONCURRENT_DECODES], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
