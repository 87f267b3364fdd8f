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
