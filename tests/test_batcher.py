"""The cross-request batcher on its own, with a fake model function (fast)."""

import gevent
import pytest

from app.inference.batcher import Batcher, Cancelled, Ticket


def _batcher(log: list) -> Batcher:
    def run(payloads):  # runs in the native model thread
        log.append(list(payloads))
        return [p * 10 for p in payloads]

    return Batcher(run, max_batch_size=4, max_wait_s=0.01)


def test_windows_of_two_requests_share_a_batch_and_come_back_to_their_owner():
    log: list = []
    batcher = _batcher(log)
    a, b = Ticket(), Ticket()
    jobs_a = batcher.submit(a, [1, 2])
    jobs_b = batcher.submit(b, [3])
    batcher.start()
    try:
        assert [j.result.get(timeout=5) for j in jobs_a] == [10, 20]
        assert jobs_b[0].result.get(timeout=5) == 30
    finally:
        batcher.stop()
    assert sorted(log[0]) == [1, 2, 3]
    assert batcher.stats.multi_request_batches == 1


def test_cancel_drops_queued_windows_and_wakes_their_waiter():
    log: list = []
    batcher = _batcher(log)
    ticket = Ticket()
    jobs = batcher.submit(ticket, list(range(10)))
    waiter = gevent.spawn(lambda: jobs[-1].result.get())
    gevent.sleep(0)
    batcher.cancel(ticket)
    with pytest.raises(Cancelled):
        waiter.get(timeout=5)
    assert batcher.queue.pending == 0
    batcher.start()
    try:
        other = batcher.submit(Ticket(), [7])
        assert other[0].result.get(timeout=5) == 70
    finally:
        batcher.stop()
    assert log == [[7]]  # nothing of the cancelled request reached the model


def test_queue_wait_of_each_window_is_counted_by_bucket():
    import time

    from app.inference.batcher import WAIT_BUCKETS

    def run(payloads):  # the model thread: each batch takes 1 s
        time.sleep(1.0)
        return payloads

    batcher = Batcher(run, max_batch_size=2, max_wait_s=0.0)
    jobs = batcher.submit(Ticket(), [1, 2, 3])
    batcher.start()
    try:
        assert [j.result.get(timeout=10) for j in jobs] == [1, 2, 3]
    finally:
        batcher.stop()
    stats = batcher.stats
    assert stats.waited_windows == 3 and sum(stats.waits.values()) == 3
    # the third window waited for the first batch (> 1 s); the first two hardly at all
    assert sum(n for bound, n in stats.waits.items() if bound > 1.0) == 1
    assert sum(n for bound, n in stats.waits.items() if bound <= 1.0) == 2
    assert set(stats.waits) <= set(WAIT_BUCKETS)
    assert 1.0 <= stats.wait_seconds < 1.0 + 10.0


def test_call_runs_other_work_on_the_model_thread():
    """Batcher.call (the VAD's way onto the model thread) runs where the batches run."""
    import threading

    batch_threads: list = []

    def run(payloads):
        batch_threads.append(threading.get_ident())
        return payloads

    batcher = Batcher(run, max_batch_size=4, max_wait_s=0.01)
    batcher.run_sync([1])
    try:
        assert batcher.call(lambda a, b: (threading.get_ident(), a + b), 2, 3) == (batch_threads[0], 5)
        assert batch_threads[0] != threading.get_ident()
    finally:
        batcher.stop()
