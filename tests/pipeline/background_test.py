import threading
import time

import pytest

from segbeam.pipeline import background


def test_results_come_back_in_submission_order_even_when_later_calls_finish_first():
  queue = background.OrderedBackgroundQueue(threads=4, max_pending=100)
  delays = [0.05, 0.0, 0.03, 0.0, 0.01]

  def work(index, delay):
    time.sleep(delay)
    return index

  early = [result for i, delay in enumerate(delays) for result in queue.submit(work, i, delay)]
  assert early + list(queue.drain()) == list(range(len(delays)))
  queue.close()


def test_submit_waits_once_max_pending_calls_are_queued():
  release = threading.Event()
  running = []

  def work(index):
    running.append(index)
    release.wait(5)
    return index

  queue = background.OrderedBackgroundQueue(threads=1, max_pending=2)
  assert queue.submit(work, 0) == [] and queue.submit(work, 1) == []
  threading.Timer(0.2, release.set).start()
  started = time.monotonic()
  third = queue.submit(work, 2)
  assert third[0] == 0  # had to wait for the oldest: memory stays bounded
  assert time.monotonic() - started >= 0.1
  assert third + list(queue.drain()) == [0, 1, 2]
  queue.close()


def test_work_runs_off_the_submitting_thread():
  queue = background.OrderedBackgroundQueue(threads=1, max_pending=4)
  (worker,) = queue.submit(threading.get_ident) + list(queue.drain())
  assert worker != threading.get_ident()
  queue.close()


def test_an_exception_is_raised_when_its_result_is_due():
  queue = background.OrderedBackgroundQueue(threads=2, max_pending=4)

  def fail():
    raise RuntimeError("boom")

  with pytest.raises(RuntimeError, match="boom"):
    queue.submit(fail)
    list(queue.drain())
  queue.close()


def test_discard_forgets_queued_work():
  release = threading.Event()
  queue = background.OrderedBackgroundQueue(threads=1, max_pending=10)
  for _ in range(3):
    assert queue.submit(release.wait, 5) == []
  queue.discard()
  release.set()
  assert list(queue.drain()) == []
  queue.close()


@pytest.mark.parametrize("threads,max_pending", [(0, 1), (1, 0)])
def test_refuses_empty_pools(threads, max_pending):
  with pytest.raises(ValueError):
    background.OrderedBackgroundQueue(threads=threads, max_pending=max_pending)
