"""``python -m app.inference.prefetch``: the Dockerfile's model-baking step, and the image's layout
serving that baked model offline (the build context and stages rebuilt on disk, no Docker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from docker.utils.build import exclude_paths

from app.inference.model_loader import resolve_checkpoint
from app.settings import EMBEDDED_TINY_EN, Settings
from tests.conftest import ROOT, start_server, stop_server
from tests.speech import SENTENCE, wer


def run_prefetch(tmp_path: Path, *args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "CACHE_DIR", "PYTHONPATH")}
    environ.update({"CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "app.inference.prefetch", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_embedded_model_is_converted_into_cache_dir_once(tmp_path):
    first = run_prefetch(tmp_path)
    assert first.returncode == 0, first.stderr
    checkpoint = Path(first.stdout.strip())
    assert checkpoint.parent == tmp_path / "cache" / "converted"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "tokenizer.json").is_file()
    # the server resolves the same checkpoint, already there
    assert resolve_checkpoint(Settings(cache_dir=tmp_path / "cache")) == checkpoint
    again = run_prefetch(tmp_path)
    assert again.returncode == 0 and Path(again.stdout.strip()) == checkpoint
    assert "converting" in first.stderr and "converting" not in again.stderr


def test_output_is_a_self_contained_checkpoint_served_as_model_id(tmp_path):
    out = tmp_path / "opt-model"
    result = run_prefetch(tmp_path, "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == out
    shutil.rmtree(tmp_path / "cache")  # the Dockerfile drops the conversion cache too
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert resolve_checkpoint(Settings(cache_dir=tmp_path / "empty", model_id=str(out))) == out


def test_hub_id_without_network_fails_with_the_reason(tmp_path):
    result = run_prefetch(tmp_path, MODEL_ID="openai/whisper-tiny.en")
    assert result.returncode == 1
    assert "prefetch failed: could not download openai/whisper-tiny.en" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unknown_embedded_name_fails_with_the_known_names(tmp_path):
    result = run_prefetch(tmp_path, MODEL_ID="embedded/whisper-huge")
    assert result.returncode == 1
    assert "unknown embedded model" in result.stderr and EMBEDDED_TINY_EN in result.stderr
    assert "Traceback" not in result.stderr


def _copy(paths: set[str], src: Path, dst: Path) -> None:
    for rel in paths:
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)


@pytest.mark.e2e
@pytest.mark.slow
def test_image_layout_serves_the_baked_model_offline(tmp_path, sentence_wav):
    """The Dockerfile's stages on disk: the model stage sees only the modules it copies, the
    runtime stage only the build context; the server then starts on /opt/model with no network
    and nothing converted into CACHE_DIR, and the image's HEALTHCHECK command passes."""
    from tests.test_deploy_files import _one, _stages

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    context = exclude_paths(str(ROOT), [p for p in patterns if not p.startswith("#")])

    model_src = tmp_path / "model-stage"  # COPY app/__init__.py app/settings.py app/ + COPY app/inference/
    model_files = {"app/__init__.py", "app/settings.py"} | {p for p in context if p.startswith("app/inference/")}
    _copy(model_files, ROOT, model_src)
    opt_model = tmp_path / "opt" / "model"
    baked = run_prefetch(tmp_path, "--output", str(opt_model), cwd=model_src)
    assert baked.returncode == 0, baked.stderr
    shutil.rmtree(tmp_path / "cache")

    srv = tmp_path / "srv"
    _copy(context, ROOT, srv)
    data = tmp_path / "data"
    data.mkdir()
    server = start_server(
        {"MODEL_ID": str(opt_model), "CACHE_DIR": str(data), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        tmp_path / "gunicorn.log",
        tmp_path,
        cwd=srv,
    )
    healthcheck = json.loads(_one(_stages("Dockerfile")["runtime"], "HEALTHCHECK").split("CMD", 1)[1])
    assert healthcheck[0] == "python"
    port = server.url.rsplit(":", 1)[1]
    probe_env = {**os.environ, "PORT": port, "PYTHONPATH": ""}
    try:
        hc = requests.get(server.url + "/hc", timeout=5)
        assert hc.status_code == 200 and hc.json()["model_id"] == str(opt_model)
        r = requests.post(
            server.url + "/asr",
            data=sentence_wav.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert wer(SENTENCE, r.json()["text"]) < 0.3, r.json()["text"]
        # the metric the Kubernetes HPA scales on (deploy/k8s/hpa.yaml) is exported
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        assert "\nasr_queue_windows " in metrics
        ok = subprocess.run(healthcheck, cwd=srv, env=probe_env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        stop_server(server)
    assert not (data / "converted").exists()  # served from the baked checkpoint, not converted again
    down = subprocess.run(healthcheck, cwd=srv, env=probe_env, capture_output=True, timeout=30)
    assert down.returncode != 0  # the same check fails once the server is gone
