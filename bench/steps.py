"""Where the time goes: one batch of windows through each stage of the engine, timed apart.

    .venv/bin/python bench/steps.py [--audio 3min] [--repeat 3] [--int8]

Loads the embedded model the way the server does (``load_model`` with default settings,
``CACHE_DIR=bench/out/cache``), cuts the benchmark audio into the server's windows
(30 s, stride 5 s) and times, in one process, side by side, the best of ``--repeat`` runs:

- ``features``: the log-mel feature extractor on all windows;
- ``encoder``: the encoder on all windows (fp32 on CPU);
- ``lean``: the server's decoder (``decoding.GreedyDecoder``: encoder + greedy loop);
- ``generate``: transformers' ``generate(return_timestamps=True)`` on the same features;
- ``--int8``: the encoder after ``torch.ao.quantization.quantize_dynamic`` (qint8 Linear
  layers), with its relative error against fp32: what dynamic int8 would buy on this CPU.

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

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", default="3min", choices=["clip60", "3min"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--int8", action="store_true", help="also time a dynamic-int8 encoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out_dir = ROOT / "bench" / "out"
    made = make(specs()[args.audio], out_dir / "audio")
    audio = decode_audio(made.path.read_bytes(), max_seconds=3600)
    windows = [c.audio for c in iter_chunks(audio, 30, 5)]
    loaded = load_model(Settings(cache_dir=out_dir / "cache", cpu_threads=args.threads))
    lean = WhisperRunner(loaded, max_new_tokens=128, decoder="lean")
    model = loaded.model

    def features():
        return loaded.feature_extractor(
            windows, sampling_rate=16000, return_tensors="pt", return_attention_mask=False
        ).input_features

    rows = []
    t, feats = best_of(args.repeat, features)
    rows.append(("features", t, ""))
    with torch.inference_mode():
        model.model.encoder(feats[:1])  # warm-up
        t, reference = best_of(args.repeat, lambda: model.model.encoder(feats).last_hidden_state)
        rows.append(("encoder (fp32)", t, ""))
        t, tokens = best_of(args.repeat, lambda: lean._lean(feats, lean._prompt, 128))
        rows.append(("lean decoder, encoder included", t, f"{sum(map(len, tokens))} tokens"))
        t, _ = best_of(
            max(1, args.repeat // 3), lambda: model.generate(feats, return_timestamps=True, max_new_tokens=128)
        )
        rows.append(("transformers generate, encoder included", t, ""))
        if args.int8:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantized = torch.ao.quantization.quantize_dynamic(
                    model.model.encoder, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
                )
            quantized(feats[:1])
            t, out = best_of(args.repeat, lambda: quantized(feats).last_hidden_state)
            error = float((out - reference).norm() / reference.norm())
            rows.append(("encoder (dynamic int8)", t, f"relative error {error:.3f}"))

    seconds = len(audio) / 16000
    print(f"{args.audio}: {seconds:.1f} s of audio, {len(windows)} windows in one batch, {args.threads} threads\n")
    print("| stage | seconds (best of runs) | notes |")
    print("| --- | ---: | --- |")
    for name, t, note in rows:
        print(f"| {name} | {t:.2f} | {note} |")


if __name__ == "__main__":
    main()
