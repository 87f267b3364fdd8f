"""Notice a client that hangs up while its request waits for the model.

A hung-up client is otherwise seen only when the server next writes to it, and a write
into a closed socket usually succeeds (the kernel buffers it): a streaming request would
learn of it a window or two late, a plain request not until the whole file was
transcribed. :func:`watch_disconnect` waits for the socket to turn readable in a
greenlet of its own: end-of-file there (the client closed or reset the connection) runs
``on_gone`` at once. Data there (a pipelined next request) ends the watch; it is left
unread for the server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import gevent
import gevent.socket

log = logging.getLogger(__name__)


def _watch(sock: socket.socket, on_gone: Callable[[], None]) -> None:
    while True:
        try:
            gevent.socket.wait_read(sock.fileno())
        except (OSError, ValueError):  # closed under us: the request is over
            return
        try:
            peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:  # readable was spurious: nothing there yet, keep watching
            continue
        except OSError:  # reset: gone
            peeked = b""
        if peeked == b"":
            log.info("client hung up; cancelling its queued work")
            on_gone()
        return  # gone, or a pipelined next request (left unread for the server)


@contextlib.contextmanager
def watch_disconnect(environ: dict, on_gone: Callable[[], None]) -> Iterator[None]:
    """While the block runs, call ``on_gone`` as soon as the client hangs up (gunicorn only)."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not hasattr(sock, "recv"):  # test client, other servers: nothing to watch
        yield
        return
    watcher = gevent.spawn(_watch, sock, on_gone)
    try:
        yield
    finally:
        watcher.kill(block=False)
