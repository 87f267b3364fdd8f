from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.speech import PASSAGE, SENTENCE, speak

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CACHE_DIR for the whole run, so the embedded model is converted once."""
    override = os.environ.get("ASR_TEST_CACHE_DIR")
    return Path(override) if override else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def sentence_wav(speech_dir: Path) -> Path:
    return speak(SENTENCE, speech_dir / "sentence.wav")


@pytest.fixture(scope="session")
def bench_20min_audio(tmp_path_factory: pytest.TempPathFactory):
    """The benchmark's 20-minute espeak-ng file (bench/speechgen.py), decoded to 16 kHz samples."""
    from app.audio.decode import decode_audio
    from bench.speechgen import make, specs

    made = make(specs()["20min"], tmp_path_factory.mktemp("bench-audio"))
    return decode_audio(made.path.read_bytes(), max_seconds=1300)


@pytest.fixture(scope="session")
def passage_wav(speech_dir: Path) -> Path:
    """About 146 s of read speech: five 30 s windows with four borders."""
    return speak(PASSAGE, speech_dir / "passage.wav")


@pytest.fixture(scope="session")
def long_wav(speech_dir: Path, passage_wav: Path) -> Path:
    """The passage four times over (~10 min, 29 windows): seconds of work even for a fast model."""
    import numpy as np
    import soundfile

    audio, rate = soundfile.read(passage_wav, dtype="float32")
    out = speech_dir / "long.wav"
    soundfile.write(out, np.tile(audio, 4), rate)
    return out


@pytest.fixture(scope="module")
def engine(model_cache: Path):
    """The real engine on the embedded tiny.en model, one per test module (loaded and warmed)."""
    from app.inference.engine import Engine
    from app.settings import Settings

    eng = Engine(Settings(cache_dir=model_cache))
    assert eng.wait_ready(240), eng.error
    yield eng
    eng.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    local_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    env_overrides: dict[str, str], log_path: Path, local_dir: Path, *, wait_ready: bool = True, cwd: Path = ROOT
):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID",)}
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "PYTHONUNBUFFERED": "1", **env_overrides})
    with log_path.open("wb") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path, local_dir)
    if wait_ready:
        try:
            _wait_ready(server)
        except BaseException:
            stop_server(server)  # never leave a server behind
            raise
    return server


def _wait_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{server.log()}")
        try:
            if requests.get(server.url + "/hc", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or busy importing torch
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server never became ready:\n{server.log()}")


def stop_server(server: LiveServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[LiveServer]:
    """gunicorn + gevent serving the embedded tiny.en model, as the README starts it."""
    local_dir = tmp_path_factory.mktemp("local-audio")
    log_path = tmp_path_factory.mktemp("logs") / "gunicorn.log"
    server = start_server(
        {
            "CACHE_DIR": str(model_cache),
            "LOCAL_AUDIO_DIR": str(local_dir),
            "URL_ALLOWED_NETWORKS": "127.0.0.1/32",  # lets the URL test reach its loopback file server
        },
        log_path,
        local_dir,
    )
    yield server
    stop_server(server)
