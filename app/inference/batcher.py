"""Cross-request batching: chunks of every in-flight request share model batches.

Requests put their windows into a :class:`FairQueue` (one FIFO per request, served
round-robin, so a short request is not stuck behind every window of a long file).
One batcher greenlet takes up to ``max_batch_size`` windows, waiting at most
``max_wait_s`` for stragglers, and hands the batch to a dedicated native thread that
runs the model; the gevent hub stays free throughout. Each window's result is
delivered through a :class:`gevent.event.AsyncResult` to the request that owns it.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
from gevent.threadpool import ThreadPool

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The request gave up (its client hung up) before this window ran."""


@dataclass(eq=False)
class Job:
    """One window of one request waiting for the model."""

    owner: Any  # the Ticket it belongs to
    payload: Any
    result: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)
    queued_at: float = field(default_factory=time.monotonic)


class Ticket:
    """A request's handle on its queued windows; cancel() drops those not yet run.

    ``ramp``: a streaming request wants its first window back fast, so it gets at most
    one window in its first batch, two in the next, then four... (a plain request gets
    as many as fit, which is fastest overall).
    """

    _ids = itertools.count()

    def __init__(self, *, ramp: bool = False) -> None:
        self.id = next(self._ids)
        self.cancelled = False
        self.jobs: list[Job] = []
        self.quota: int | None = 1 if ramp else None

    def cancel(self) -> None:
        self.cancelled = True

    def ran_batch(self) -> None:
        if self.quota is not None:
            self.quota *= 2


class FairQueue:
    """Per-request FIFOs served round-robin. Greenlet-safe (runs on the hub only)."""

    def __init__(self) -> None:
        self._lanes: OrderedDict[int, deque[Job]] = OrderedDict()
        self._nonempty = gevent.event.Event()
        self.pending = 0

    def put_many(self, ticket: Ticket, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        self._lanes.setdefault(ticket.id, deque()).extend(jobs)
        self.pending += len(jobs)
        self._nonempty.set()

    def drop(self, ticket: Ticket) -> int:
        """Forget every queued job of ``ticket``; returns how many were dropped."""
        lane = self._lanes.pop(ticket.id, None)
        if not lane:
            return 0
        self.pending -= len(lane)
        if not self._lanes:
            self._nonempty.clear()
        return len(lane)

    def wait(self, timeout: float | None = None) -> bool:
        return self._nonempty.wait(timeout)

    def take(self, n: int, taken: Counter | None = None) -> list[Job]:
        """Up to ``n`` jobs, one per request in turn; cancelled requests' jobs are dropped.

        ``taken`` counts, per request, the jobs already in the batch being formed, so
        that a request's quota holds across several ``take`` calls for one batch.
        """
        taken = Counter() if taken is None else taken
        out: list[Job] = []
        progress = True
        while len(out) < n and progress:
            progress = False
            for key in list(self._lanes):
                lane = self._lanes[key]
                while lane and lane[0].owner.cancelled:
                    lane.popleft()
                    self.pending -= 1
                if not lane:
                    del self._lanes[key]
                    continue
                quota = lane[0].owner.quota
                if len(out) >= n or (quota is not None and taken[key] >= quota):
                    continue
                out.append(lane.popleft())
                self.pending -= 1
                taken[key] += 1
                progress = True
                # move this lane to the back so the next pick starts with the next request
                self._lanes.move_to_end(key)
                if not lane:
                    del self._lanes[key]
        if not self._lanes:
            self._nonempty.clear()
        return out


# Upper bounds (seconds) of the queue-wait buckets counted in BatchStats.waits.
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class BatchStats:
    batches: int = 0
    chunks: int = 0
    multi_request_batches: int = 0
    sizes: Counter = field(default_factory=Counter)
    busy_seconds: float = 0.0
    # queue wait of each window that reached a batch (submit -> its batch starts)
    waited_windows: int = 0
    wait_seconds: float = 0.0
    waits: Counter = field(default_factory=Counter)  # WAIT_BUCKETS bound (or inf) -> windows

    def record_wait(self, seconds: float) -> None:
        self.waited_windows += 1
        self.wait_seconds += seconds
        self.waits[next((b for b in WAIT_BUCKETS if seconds <= b), math.inf)] += 1

    @property
    def mean_occupancy(self) -> float:
        return self.chunks / self.batches if self.batches else 0.0


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        pool: ThreadPool | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue = FairQueue()
        self.stats = BatchStats()
        # One native thread owns the model: torch releases the GIL, the hub keeps serving.
        self._pool = pool if pool is not None else ThreadPool(1)
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = gevent.spawn(self._serve)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill()
            self._loop = None
        self._pool.kill()

    def submit(self, ticket: Ticket, payloads: Sequence[Any]) -> list[Job]:
        jobs = [Job(ticket, p) for p in payloads]
        ticket.jobs.extend(jobs)
        self.queue.put_many(ticket, jobs)
        return jobs

    def estimated_wait_s(self, windows: int) -> float:
        """Rough time to get through ``windows`` queued windows at the throughput seen so far."""
        if not self.stats.batches or self.stats.busy_seconds <= 0:
            return 1.0
        per_batch = self.stats.busy_seconds / self.stats.batches
        return max(1.0, per_batch * math.ceil(windows / self.max_batch_size))

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request's windows that have not reached the model (client went away).

        Whoever still waits on one of its windows gets :class:`Cancelled` at once.
        """
        ticket.cancel()
        self.queue.drop(ticket)
        for job in ticket.jobs:
            if not job.result.ready():
                job.result.set_exception(Cancelled())

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread, between batches; only the calling greenlet waits.

        For other torch work of a request (voice activity detection): every torch call of
        the process stays on this one native thread.
        """
        return self._pool.apply(fn, args)

    def run_sync(self, payloads: list[Any]) -> list[Any]:
        """Run one batch on the model thread right now (warm-up), bypassing the queue."""
        return self._pool.apply(self._run_batch, (payloads,))

    def _serve(self) -> None:
        while True:
            self.queue.wait()
            taken: Counter = Counter()
            batch = self.queue.take(self.max_batch_size, taken)
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.queue.wait(remaining):
                    break
                more = self.queue.take(self.max_batch_size - len(batch), taken)
                if not more:  # only quota-limited work left: run what we have
                    break
                batch.extend(more)
            if batch:
                now = time.monotonic()
                for job in batch:
                    self.stats.record_wait(now - job.queued_at)
                self._execute(batch)
                for owner in {id(j.owner): j.owner for j in batch}.values():
                    owner.ran_batch()

    def _execute(self, batch: list[Job]) -> None:
        started = time.monotonic()
        try:
            results = self._pool.apply(self._run_batch, ([j.payload for j in batch],))
        except Exception as exc:  # deliver the failure to every waiting request
            log.exception("model batch of %d chunks failed", len(batch))
            for job in batch:
                job.result.set_exception(exc)
            return
        finally:
            self.stats.busy_seconds += time.monotonic() - started
        self.stats.batches += 1
        self.stats.chunks += len(batch)
        self.stats.sizes[len(batch)] += 1
        if len({j.owner.id for j in batch}) > 1:
            self.stats.multi_request_batches += 1
        for job, result in zip(batch, results, strict=True):
            job.result.set(result)
