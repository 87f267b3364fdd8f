"""Fetch and prepare the checkpoint for ``MODEL_ID`` ahead of time, so a server starts without network.

``python -m app.inference.prefetch`` reads the same settings as the server (``MODEL_ID``,
``CACHE_DIR``) and leaves the checkpoint where ``load_model`` looks for it: an embedded or
CTranslate2 model converted under ``CACHE_DIR/converted``, a hub id downloaded into
``CACHE_DIR/hub`` (transformers' cache layout, which ``from_pretrained`` finds offline).

``--output DIR`` instead writes a self-contained transformers checkpoint directory; serving it
is ``MODEL_ID=DIR``. The Dockerfile bakes models this way (``/opt/model``), outside the ``/data``
volume, so a volume mounted over ``/data`` cannot hide the baked weights.

Prints the checkpoint directory on stdout; exits 1 with the reason on stderr when the model
cannot be fetched (unknown name, no network for a hub id, a directory that is no checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from app.inference.model_loader import ModelLoadError, resolve_checkpoint
from app.settings import Settings

log = logging.getLogger(__name__)

# Everything from_pretrained needs for a Whisper checkpoint (config, tokenizer, feature
# extractor, weights), without the TensorFlow/Flax/ONNX/GGML copies many hub repos also hold.
HUB_PATTERNS = ["*.json", "*.txt", "*.tiktoken", "*.safetensors"]
LEGACY_WEIGHTS = ["pytorch_model*.bin"]  # only fetched when a repo has no safetensors


def _download(repo_id: str, *, cache_dir: Path | None = None, local_dir: Path | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    kwargs = {"local_dir": local_dir} if local_dir is not None else {"cache_dir": cache_dir}
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, **kwargs))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, allow_patterns=LEGACY_WEIGHTS, **kwargs))
    except (OSError, HfHubHTTPError) as exc:
        raise ModelLoadError(f"could not download {repo_id}: {exc}") from exc
    return path


def _check_checkpoint(path: Path, model_id: str) -> None:
    weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
    if not (path / "config.json").is_file() or not weights:
        raise ModelLoadError(f"{model_id} gave no transformers checkpoint (config.json and weights) in {path}")


def prefetch(settings: Settings, output: Path | None = None) -> Path:
    """Make ``settings.model_id`` loadable offline; return the checkpoint directory."""
    checkpoint = resolve_checkpoint(settings)
    if isinstance(checkpoint, str):  # a hub id
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            path = _download(checkpoint, local_dir=output)
        else:
            path = _download(checkpoint, cache_dir=settings.cache_dir / "hub")
    elif output is not None:
        shutil.copytree(checkpoint, output, dirs_exist_ok=True)
        path = output
    else:
        path = checkpoint
    _check_checkpoint(path, settings.model_id)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.inference.prefetch",
        description="Download/convert the checkpoint for MODEL_ID into CACHE_DIR (or --output) for offline serving.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="write a self-contained transformers checkpoint here instead; serve it with MODEL_ID=<this dir>",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = Settings()
    try:
        path = prefetch(settings, args.output)
    except ModelLoadError as exc:
        print(f"prefetch failed: {exc}", file=sys.stderr)
        return 1
    log.info("%s is ready for offline serving", settings.model_id)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
