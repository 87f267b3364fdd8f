"""Graceful shutdown: on SIGTERM, drain the worker before it exits.

gunicorn's own SIGTERM handling closes the listening socket at once, so there is no moment
in which ``/hc`` could tell a load balancer to stop sending traffic. Instead, the worker
gets a handler of its own (:func:`install_sigterm_drain`, from gunicorn.conf.py's
``post_worker_init``) that:

1. marks the app *draining*: ``GET /hc`` answers 503 ``{"status": "draining"}`` and every
   new ``/asr`` or ``/v1`` request 503 with ``Retry-After`` (code ``draining``), while
   requests already accepted, queued windows and open streams carry on;
2. keeps the socket open for ``DRAIN_PRESTOP_S`` (default 0), so probes see the 503;
3. waits until no request is in flight, at most ``DRAIN_TIMEOUT_S``;
4. then stops the worker the way gunicorn does (``worker.alive = False``: it closes the
   socket and ends), or, if the drain timed out, at once, dropping what is left.

The in-flight count is a WSGI middleware (:meth:`Drain.wrap`): a request counts from the
moment its headers reached the app until its response body, a stream included, is closed.
Everything here runs on the gevent hub; the signal handler only spawns a greenlet.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
from werkzeug.wsgi import ClosingIterator

log = logging.getLogger(__name__)


class Drain:
    """Draining flag and in-flight request count of one app."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = gevent.event.Event()
        self._idle.set()

    def wrap(self, wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """WSGI middleware counting requests from call to the close of their body."""

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self._enter()
            try:
                body = wsgi_app(environ, start_response)
            except BaseException:
                self._leave()
                raise
            return ClosingIterator(body, self._leave)

        return counted

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    def begin(self) -> None:
        self.draining = True

    def wait_idle(self, timeout: float | None) -> bool:
        """True once no request is in flight; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)


def drain_then_stop(worker: Any, drain: Drain, *, prestop_s: float, timeout_s: float) -> None:
    """Refuse new work, let in-flight requests finish, then end the gunicorn worker."""
    drain.begin()
    log.info(
        "SIGTERM: draining, %d request(s) in flight; /hc and new work answer 503 (pre-stop %.1fs, timeout %.1fs)",
        drain.in_flight,
        prestop_s,
        timeout_s,
    )
    if prestop_s:
        gevent.sleep(prestop_s)
    if drain.wait_idle(timeout_s):
        log.info("drained: no request in flight; worker stopping")
        worker.alive = False  # gunicorn's loop closes the socket and returns
        return
    log.warning("drain timed out after %.1fs with %d request(s) still in flight; exiting", timeout_s, drain.in_flight)
    sys.exit(0)  # raised in the main greenlet by gevent's hub, as gunicorn's own quick quit does


def finish_worker(drain: Drain, engine: Any) -> None:
    """gunicorn ``worker_exit``: stop the engine and end the worker process now.

    Python's normal exit does not finish here: its atexit hook for ``concurrent.futures``
    joins executor threads that were started inside the (now stopped) model thread, where
    gevent's monkey-patching made them greenlets of that thread's hub, so the join waits in
    the main hub for ever (observed after a load test: until the master's SIGKILL at
    graceful_timeout). And after a drain that timed out, requests still wait and the model
    thread may be mid-batch; stopping gevent's thread pool would wait for that batch. The
    worker has nothing left to do: logs are flushed and the process ends with ``os._exit``.
    """
    busy = engine.model_busy
    if drain.in_flight > 0 or busy:
        log.warning("worker exiting with %d request(s) abandoned (model thread busy: %s)", drain.in_flight, busy)
    else:
        engine.stop()
    log.info("worker process exiting")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def install_sigterm_drain(worker: Any, drain: Drain, *, prestop_s: float, timeout_s: float) -> None:
    """Replace gunicorn's worker SIGTERM handler (stop at once) with a drain."""

    def on_sigterm(signum: int, frame: Any) -> None:
        if drain.draining:  # the master forwards the signal the worker may already have had
            return
        drain.draining = True  # at once, before the greenlet first runs
        gevent.spawn(drain_then_stop, worker, drain, prestop_s=prestop_s, timeout_s=timeout_s)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn: no EINTR in the middle of a request
