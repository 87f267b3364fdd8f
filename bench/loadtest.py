"""Bounded load test against the real gunicorn server, ending with a SIGTERM under load.

    .venv/bin/python bench/loadtest.py                      # 4 users, 480 s, then SIGTERM
    .venv/bin/python bench/loadtest.py --duration 60 --users 2

Loopback only; it starts the server itself (as bench/bench.py does) and stops by itself.
Several simulated users (threads, one keep-alive session each) send a random mix of
espeak-ng files (a 2-sentence clip, a ~60 s clip, the ~146 s passage) as plain and
``?stream=1`` requests, back to back. Every 200 answer's text is checked against the text
espeak-ng read (word error rate and longest lost/doubled run); 429 and 503 (the documented
overload/shutdown answers, with Retry-After) are allowed and honoured; anything else is
an error. The worker's RSS is sampled from /proc every second.

At the end (unless ``--no-sigterm``) the server gets SIGTERM while the users keep sending:
every request already accepted must still be answered in full with the right text, new
ones get 503 (or, once the worker has gone, a refused connection), and the time from the
last answer to the process exit is reported.

Prints a summary and writes it to bench/out/loadtest-<time>.{json,md}. Exit status 1 when
a check failed. Machine noise: it competes with whatever else runs (see "load average").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import speechgen  # noqa: E402  (bench/ is on sys.path as the script's directory)

from bench import git_commit, kill_group, proc_stats, start_server  # noqa: E402  (bench/bench.py)
from tests.speech import PASSAGE, longest_runs, wer  # noqa: E402

# what each user picks, and how often
MIX = {"sentence": 0.45, "clip60": 0.35, "passage": 0.20}
MAX_WER = {"sentence": 0.30, "clip60": 0.20, "passage": 0.20}
MAX_RUN = 5  # longest run of lost or doubled words: a lost or doubled window is ~50 words
ALLOWED = {429, 503}


def log(msg: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Result:
    audio: str
    stream: bool
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection refused/reset)
    outcome: str  # ok | wrong_text | allowed | unexpected | refused_after_exit
    detail: str = ""
    after_sigterm: bool = False  # sent after the SIGTERM


@dataclass
class Run:
    url: str
    files: dict
    seed: int
    stop_at: float
    sigterm_at: float | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    results: list[Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)


def check_text(name: str, reference: str, text: str) -> str:
    """'' when ``text`` is a right transcript of ``reference``, else why not."""
    rate = wer(reference, text)
    deleted, inserted = longest_runs(reference, text)
    if rate >= MAX_WER[name] or deleted > MAX_RUN or inserted > MAX_RUN:
        return f"WER {rate:.3f}, longest deletion {deleted}, insertion {inserted}: {text[:200]!r}"
    return ""


def one_request(session: requests.Session, run: Run, name: str, stream: bool) -> tuple[Result, float]:
    """Send one request; the result and how long to back off (Retry-After) before the next."""
    audio = run.files[name]
    started = time.monotonic()
    after = run.sigterm_at is not None
    url = run.url + ("/asr?stream=1" if stream else "/asr")
    try:
        with session.post(url, data=audio["bytes"], stream=stream, timeout=900) as r:
            if r.status_code in ALLOWED:
                wait = float(r.headers.get("Retry-After", "1"))
                body = r.json()["error"]
                result = Result(name, stream, started, time.monotonic(), r.status_code, "allowed", body["code"], after)
                return result, min(wait, 3.0)  # under the server's 5 s keep-alive
            if r.status_code != 200:
                detail = r.text[:300]
                return Result(name, stream, started, time.monotonic(), r.status_code, "unexpected", detail, after), 0
            if stream:
                lines = [json.loads(line) for line in r.iter_lines() if line]
                last = lines[-1] if lines else {}
                if not last.get("done"):
                    detail = f"stream ended without its done line: {last}"
                    return Result(name, stream, started, time.monotonic(), 200, "unexpected", detail, after), 0
                text = last["text"]
            else:
                text = r.json()["text"]
    except requests.ConnectionError as exc:
        # sent after the SIGTERM: the worker may have closed its socket; before it: a lost request
        outcome = "refused_after_exit" if after else "unexpected"
        return Result(name, stream, started, time.monotonic(), None, outcome, repr(exc)[:200], after), 0.2
    except (requests.RequestException, ValueError) as exc:
        return Result(name, stream, started, time.monotonic(), None, "unexpected", repr(exc)[:200], after), 0
    problem = check_text(name, audio["reference"], text)
    return Result(name, stream, started, time.monotonic(), 200, "wrong_text" if problem else "ok", problem, after), 0


def user(run: Run, index: int) -> None:
    rng = random.Random(run.seed * 1000 + index)
    names, weights = list(MIX), list(MIX.values())
    with requests.Session() as session:
        while not run.exited.is_set():
            if run.sigterm_at is None and time.monotonic() >= run.stop_at:
                break  # without --sigterm: stop at the deadline
            result, backoff = one_request(session, run, rng.choices(names, weights)[0], rng.random() < 0.5)
            run.add(result)
            if result.outcome == "refused_after_exit":
                break  # the draining worker has closed its socket: nothing more to send
            if backoff:
                time.sleep(backoff)


def worker_pid(master: int) -> int | None:
    return next((pid for pid, rest in proc_stats() if int(rest[1]) == master), None)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample_rss(pid: int, out: list[tuple[float, float]], stop: threading.Event, t0: float) -> None:
    while not stop.wait(1.0):
        value = rss_mb(pid)
        if value is not None:
            out.append((time.monotonic() - t0, value))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(run: Run, rss: list[tuple[float, float]], t0: float, args, extra: dict) -> dict:
    counts = Counter(r.outcome for r in run.results)
    by_status = Counter(str(r.status) for r in run.results)
    before = [r for r in run.results if not r.after_sigterm]
    rows = []
    for name in MIX:
        for stream in (False, True):
            sel = [r for r in before if r.audio == name and r.stream == stream and r.outcome == "ok"]
            lat = [r.ended - r.started for r in sel]
            rows.append(
                {
                    "audio": name,
                    "seconds": run.files[name]["seconds"],
                    "stream": stream,
                    "ok": len(sel),
                    "p50_s": statistics.median(lat) if lat else None,
                    "p95_s": pct(lat, 0.95) if lat else None,
                }
            )
    ok_audio = sum(run.files[r.audio]["seconds"] for r in before if r.outcome == "ok")
    load_s = (run.sigterm_at or run.stop_at) - t0
    # growth is judged over the load phase only (the drain after SIGTERM is not steady state)
    load = [(t, v) for t, v in rss if t <= load_s] or rss
    warm = [v for t, v in load if t >= args.rss_warmup_s] or [v for _, v in load]
    half = [v for t, v in load if t >= load_s / 2]
    rss_info = {
        "first_mb": rss[0][1] if rss else None,
        "after_warmup_mb": warm[0] if warm else None,
        "peak_mb": max(v for _, v in rss) if rss else None,  # drain included
        "last_mb": warm[-1] if warm else None,  # at the end of the load phase
        "growth_after_warmup_mb": (warm[-1] - warm[0]) if warm else None,
        # a leak keeps growing; allocator high-water marks (bigger batches) level off
        "growth_second_half_mb": (half[-1] - half[0]) if half else None,
        "samples": len(rss),
    }
    failures = [
        f"{r.outcome}: {r.audio} stream={r.stream} status={r.status} {r.detail}"
        for r in run.results
        if r.outcome in ("wrong_text", "unexpected")
    ]
    growth = rss_info["growth_second_half_mb"]
    if growth is not None and growth > args.max_rss_growth_mb:
        failures.append(f"RSS grew {growth:.0f} MB in the second half of the load (> {args.max_rss_growth_mb})")
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "bench/loadtest.py", *sys.argv[1:]]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "users": args.users,
        "duration_s": args.duration,
        "loadavg_start": extra["loadavg_start"],
        "loadavg_end": os.getloadavg(),
        "audio": {k: {"seconds": v["seconds"], "words": len(v["reference"].split())} for k, v in run.files.items()},
        "requests": len(run.results),
        "outcomes": dict(counts),
        "statuses": dict(by_status),
        "allowed_codes": dict(Counter(r.detail for r in run.results if r.outcome == "allowed")),
        "audio_seconds_ok_per_s": ok_audio / load_s if load_s > 0 else None,
        "latency": rows,
        "rss": rss_info,
        "sigterm": extra.get("sigterm"),
        "failures": failures,
        "passed": not failures,
    }


def render(s: dict) -> str:
    def f(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)

    out = [
        f"Command: `{s['command']}`  ",
        f"Date: {s['date']}; commit {s['commit']}; {s['users']} users for {s['duration_s']:.0f} s  ",
        f"Load average at start / end: {', '.join(f(x, '.2f') for x in s['loadavg_start'])} / "
        f"{', '.join(f(x, '.2f') for x in s['loadavg_end'])}  ",
        f"Requests: {s['requests']}; outcomes {s['outcomes']}; HTTP statuses {s['statuses']}; "
        f"429/503 codes {s['allowed_codes']}  ",
        f"Throughput (correct answers before SIGTERM): {f(s['audio_seconds_ok_per_s'], '.2f')} audio-s/s",
        "",
        "| audio | length (s) | mode | correct answers | p50 latency (s) | p95 latency (s) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in s["latency"]:
        out.append(
            f"| {row['audio']} | {row['seconds']:.0f} | {'stream' if row['stream'] else 'plain'} | {row['ok']} | "
            f"{f(row['p50_s'])} | {f(row['p95_s'])} |"
        )
    r = s["rss"]
    out += [
        "",
        f"Worker RSS (MB): first {f(r['first_mb'], '.0f')}, after warm-up {f(r['after_warmup_mb'], '.0f')}, "
        f"peak {f(r['peak_mb'], '.0f')} (drain included), at the end of the load {f(r['last_mb'], '.0f')}; "
        "growth after warm-up "
        f"{f(r['growth_after_warmup_mb'], '+.0f')} MB, in the second half of the load phase "
        f"**{f(r['growth_second_half_mb'], '+.0f')} MB** ({r['samples']} samples, one a second)",
    ]
    if s["sigterm"]:
        t = s["sigterm"]
        out += [
            "",
            f"SIGTERM under load: {t['in_flight_at_sigterm']} requests in flight ({t['in_flight_refused_503']} still "
            f"uploading, answered 503); of the accepted ones {t['accepted_ok']} answered with the right text, "
            f"{t['accepted_failed']} not; after it {t['refused_503']} new requests "
            f"got 503 `draining` and {t['refused_after_exit']} found the socket closed; last answer "
            f"{f(t['last_answer_after_sigterm_s'])} s after SIGTERM, process exit {f(t['exit_after_sigterm_s'])} s "
            f"after SIGTERM ({f(t['exit_after_last_answer_s'])} s after the last answer), "
            f"exit status {t['returncode']}",
        ]
    out += ["", f"**{'PASSED' if s['passed'] else 'FAILED'}**" + ("" if s["passed"] else f": {len(s['failures'])}")]
    out += [f"- {x}" for x in s["failures"][:20]]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=480.0, help="seconds of load before the SIGTERM (default 480)")
    p.add_argument("--users", type=int, default=4, help="concurrent simulated users (default 4)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server CPU_THREADS (default: all)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-sigterm", action="store_true", help="stop the users at the deadline instead")
    p.add_argument("--rss-warmup-s", type=float, default=60.0, help="'after warm-up' RSS is taken from here on")
    p.add_argument(
        "--max-rss-growth-mb", type=float, default=200.0, help="fail when RSS grows more in the load's second half"
    )
    p.add_argument(
        "--drain-timeout", type=float, default=240.0, help="server DRAIN_TIMEOUT_S: room for every accepted request"
    )
    p.add_argument("--max-queued-windows", type=int, default=24, help="server MAX_QUEUED_WINDOWS (small: shows 429s)")
    p.add_argument("--work-dir", type=Path, default=BENCH / "out" / "work", help="audio, model cache, server log")
    p.add_argument("--out", type=Path, default=None, help="report path without suffix (default bench/out/loadtest-*)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work_dir.resolve()
    (work / "audio").mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or BENCH / "out" / f"loadtest-{stamp}"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra: dict = {"loadavg_start": os.getloadavg()}

    specs = speechgen.specs()
    passage = speechgen.AudioSpec("passage", "tests/data/passage.txt, en-us 165 wpm", (speechgen.Segment(PASSAGE),))
    made = {
        "sentence": speechgen.make(specs["warmup"], work / "audio"),
        "clip60": speechgen.make(specs["clip60"], work / "audio"),
        "passage": speechgen.make(passage, work / "audio"),
    }
    files = {k: {"bytes": a.path.read_bytes(), "reference": a.reference, "seconds": a.seconds} for k, a in made.items()}
    log("audio: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in files.items()))

    # child_env() passes these on to the server
    os.environ["MAX_QUEUED_WINDOWS"] = str(args.max_queued_windows)
    os.environ["DRAIN_TIMEOUT_S"] = str(args.drain_timeout)
    os.environ["GRACEFUL_TIMEOUT_S"] = str(args.drain_timeout + 30)
    server = start_server(args.threads, work / "cache", work / "server.log", ready_timeout_s=600)
    rss: list[tuple[float, float]] = []
    stop_sampling = threading.Event()
    try:
        pid = worker_pid(server.proc.pid)
        if pid is None:
            raise RuntimeError("no gunicorn worker found")
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample_rss, args=(pid, rss, stop_sampling, t0), daemon=True)
        sampler.start()
        run = Run(server.url, files, args.seed, stop_at=t0 + args.duration)
        log(f"server {server.url} (worker pid {pid}) ready; {args.users} users for {args.duration:.0f} s")
        users = [threading.Thread(target=user, args=(run, i), daemon=True) for i in range(args.users)]
        for t in users:
            t.start()
        time.sleep(max(0.0, run.stop_at - time.monotonic()))
        if not args.no_sigterm:
            run.sigterm_at = time.monotonic()
            log("SIGTERM to the server while the users keep sending")
            os.killpg(server.proc.pid, signal.SIGTERM)
            returncode = server.proc.wait(args.drain_timeout + 60)
            exited_at = time.monotonic()
            run.exited.set()
            for t in users:
                t.join(900)
            in_flight = [r for r in run.results if not r.after_sigterm and r.ended >= run.sigterm_at]
            # in flight but not yet past admission (still uploading): 503 draining is the right answer
            accepted = [r for r in in_flight if r.status != 503]
            last_answer = max((r.ended for r in in_flight), default=run.sigterm_at)
            extra["sigterm"] = {
                "in_flight_at_sigterm": len(in_flight),
                "accepted_ok": sum(r.outcome == "ok" for r in accepted),
                "accepted_failed": sum(r.outcome != "ok" for r in accepted),
                "in_flight_refused_503": len(in_flight) - len(accepted),
                "refused_503": sum(r.after_sigterm and r.status == 503 for r in run.results),
                "refused_after_exit": sum(r.outcome == "refused_after_exit" for r in run.results),
                "last_answer_after_sigterm_s": last_answer - run.sigterm_at,
                "exit_after_sigterm_s": exited_at - run.sigterm_at,
                "exit_after_last_answer_s": exited_at - last_answer,
                "returncode": returncode,
            }
        else:
            for t in users:
                t.join(900)
    finally:
        stop_sampling.set()
        kill_group(server.proc)
    summary = summarize(run, rss, t0, args, extra)
    if summary["sigterm"] and summary["sigterm"]["returncode"] != 0:
        summary["failures"].append(f"server exit status {summary['sigterm']['returncode']}")
        summary["passed"] = False
    summary["rss_samples"] = rss
    text = render(summary)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.with_suffix(".md").write_text(text)
    print(text)
    log(f"wrote {out.with_suffix('.md')} and .json; server log {work / 'server.log'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
