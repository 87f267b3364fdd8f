"""Run blocking work in a native thread so the gevent hub keeps serving."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

import gevent

T = TypeVar("T")


def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in gevent's native thread pool; only the calling greenlet waits.

    Exceptions come back as values and are re-raised here, in the caller: gevent's pool
    would otherwise also print every one of them (a client's undecodable upload
    included) to stderr as if the server had failed. ``fn`` runs in a copy of the caller's
    context variables, so what it logs carries the request's id.
    """
    context = contextvars.copy_context()

    def call() -> tuple[bool, Any]:
        try:
            return True, context.run(fn, *args, **kwargs)
        except Exception as exc:
            return False, exc

    ok, value = gevent.get_hub().threadpool.apply(call)
    if ok:
        return value
    raise value
