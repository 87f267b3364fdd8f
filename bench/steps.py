"""Where the time goes, and what each optimisation bought: one batch of windows, timed apart.

    .venv/bin/python bench/steps.py [--audio 3min] [--repeat 3] [--int8-encoder]

Loads the embedded model as the server does (``load_model``, ``CACHE_DIR=bench/out/cache``)
in float32 and in bfloat16, cuts the benchmark audio into the server's windows (30 s,
stride 5 s) and times, in one process, side by side, the best of ``--repeat`` runs of:

- ``features``: the log-mel feature extractor on all windows;
- ``encoder``: the encoder on all windows, float32 and bfloat16;
- ``generate``: transformers' ``generate(return_timestamps=True)`` (encoder included), float32:
  what the reference pipeline spends per batch;
- the server's decoding path (``WhisperRunner.generate``: encoder, lean greedy loop, repetition
  fallback and early-stop continuation) with its optimisations switched on one by one:
  lean loop in float32; + int8 vocabulary projection; + bfloat16 (the default on AMX CPUs).
  Each row reports its word differences against the float32 lean row (``jiwer`` WER between
  the two transcripts), so a speed-up that changed words shows.
- ``--int8-encoder``: the encoder after ``torch.ao.quantization.quantize_dynamic`` (qint8 Linear
  layers), with its relative error against float32: tried, and why it is not used.

Prints a markdown table. No server, no HTTP: ``bench.py`` measures the round trip.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(repeat: int, fn):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    import torch
    from speechgen import make, specs  # bench/ is sys.path[0] (bench/bench.py shadows the folder)

    from app.audio.decode import decode_audio
    from app.inference.chunking import iter_chunks
    from app.inference.model_loader import load_model
    from app.inference.whisper import WhisperRunner
    from app.settings import Settings
    from tests.speech import wer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", default="3min", choices=["clip60", "3min"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--int8-encoder", action="store_true", help="also time a dynamic-int8 encoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out_dir = ROOT / "bench" / "out"
    made = make(specs()[args.audio], out_dir / "audio")
    audio = decode_audio(made.path.read_bytes(), max_seconds=3600)
    chunks = list(iter_chunks(audio, 30, 5))
    windows, ends = [c.audio for c in chunks], [c.length_s - c.stride_right_s for c in chunks]

    def settings(dtype: str) -> Settings:
        return Settings(cache_dir=out_dir / "cache", cpu_threads=args.threads, dtype=dtype)

    fp32, bf16 = load_model(settings("float32")), load_model(settings("bfloat16"))

    def features():
        return fp32.feature_extractor(
            windows, sampling_rate=16000, return_tensors="pt", return_attention_mask=False
        ).input_features

    rows: list[tuple[str, float, str]] = []
    t, feats = best_of(args.repeat, features)
    rows.append(("features (log-mel, all windows)", t, ""))
    with torch.inference_mode():
        for name, loaded in (("float32", fp32), ("bfloat16", bf16)):
            encoder, x = loaded.model.model.encoder, feats.to(loaded.dtype)
            encoder(x[:1])  # warm-up
            t, _ = best_of(args.repeat, lambda encoder=encoder, x=x: encoder(x))
            rows.append((f"encoder, {name}", t, ""))
        t, _ = best_of(
            max(1, args.repeat // 3), lambda: fp32.model.generate(feats, return_timestamps=True, max_new_tokens=128)
        )
        rows.append(("transformers generate, float32 (encoder included)", t, "the reference pipeline's decoder"))
        if args.int8_encoder:
            encoder = fp32.model.model.encoder
            reference = encoder(feats).last_hidden_state
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized = torch.ao.quantization.quantize_dynamic(
                    encoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
                )
            quantized(feats[:1])
            t, out = best_of(args.repeat, lambda: quantized(feats).last_hidden_state)
            error = float((out - reference).norm() / reference.norm())
            rows.append(("encoder, dynamic int8 Linear layers", t, f"relative error {error:.3f}: not used"))

    baseline = None
    for name, loaded, int8 in (
        ("server path: lean loop, float32", fp32, False),
        ("server path: + int8 vocabulary projection", fp32, True),
        ("server path: + bfloat16 (default on AMX CPUs)", bf16, True),
    ):
        runner = WhisperRunner(loaded, max_new_tokens=128, int8_projection=int8)
        runner.generate(windows[:1], ends[:1])  # warm-up
        t, tokens = best_of(args.repeat, lambda runner=runner: runner.generate(windows, ends))
        text = " ".join(runner._text(t) for t in tokens)
        baseline = text if baseline is None else baseline
        note = f"{sum(map(len, tokens))} tokens; words differing from the float32 row: {wer(baseline, text):.1%}"
        rows.append((name, t, note))

    seconds = len(audio) / 16000
    print(f"{args.audio}: {seconds:.1f} s of audio, {len(windows)} windows in one batch, {args.threads} threads\n")
    print("| stage | seconds (best of runs) | notes |")
    print("| --- | ---: | --- |")
    for name, t, note in rows:
        print(f"| {name} | {t:.2f} | {note} |")


if __name__ == "__main__":
    main()
