"""MODEL_ID resolution: embedded names, CTranslate2 dirs, transformers dirs, hub ids."""

import pytest

from app.inference.engine import Engine, EngineState
from app.inference.model_loader import EMBEDDED_MODELS, ModelLoadError, resolve_checkpoint
from app.settings import Settings


def test_embedded_name_converts_into_cache(model_cache):
    path = resolve_checkpoint(Settings(cache_dir=model_cache))
    assert path.parent == model_cache / "converted"
    assert (path / "model.safetensors").is_file()


def test_ct2_directory_is_converted_and_transformers_directory_used_as_is(model_cache):
    ct2_dir = EMBEDDED_MODELS["embedded/whisper-tiny.en"]()
    converted = resolve_checkpoint(Settings(cache_dir=model_cache, model_id=str(ct2_dir)))
    assert (converted / "config.json").is_file() and converted.parent == model_cache / "converted"
    assert resolve_checkpoint(Settings(cache_dir=model_cache, model_id=str(converted))) == converted


def test_hub_ids_pass_through(tmp_path):
    assert resolve_checkpoint(Settings(cache_dir=tmp_path, model_id="openai/whisper-large-v3")) == (
        "openai/whisper-large-v3"
    )


def test_unknown_embedded_name_and_non_checkpoint_dir_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown embedded model"):
        resolve_checkpoint(Settings(cache_dir=tmp_path, model_id="embedded/whisper-huge"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither"):
        resolve_checkpoint(Settings(cache_dir=tmp_path, model_id=str(tmp_path / "empty")))


def test_a_model_that_fails_to_load_leaves_the_engine_failed(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    engine = Engine(Settings(cache_dir=tmp_path, model_id=str(tmp_path / "empty")))
    assert engine.wait_ready(60) is False
    assert engine.state is EngineState.FAILED
    assert "neither" in engine.error
    assert any("failed to load" in r.getMessage() for r in caplog.records)


def test_auto_dtype_is_bfloat16_on_amx_cpus_only(monkeypatch):
    import torch

    from app.inference import model_loader

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(model_loader, "cpu_has_amx", lambda: True)
    assert model_loader.pick_dtype(Settings(), cpu) is torch.bfloat16
    assert model_loader.pick_dtype(Settings(), cuda) is torch.float16
    assert model_loader.pick_dtype(Settings(dtype="float32"), cpu) is torch.float32
    monkeypatch.setattr(model_loader, "cpu_has_amx", lambda: False)
    assert model_loader.pick_dtype(Settings(), cpu) is torch.float32
