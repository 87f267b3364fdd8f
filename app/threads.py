"""Run blocking work in a native thread so the gevent hub keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent

T = TypeVar("T")


def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in gevent's native thread pool; only the calling greenlet waits."""
    return gevent.get_hub().threadpool.apply(fn, args, kwargs)
