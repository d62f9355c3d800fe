"""A bounded, ordered queue of work done on background threads.

In a fused Beam stage every DoFn runs on the bundle's one thread, depth first: RunInference
hands a batch's results to the postprocessing DoFn one by one, and only when they are all
done does it read and infer the next batch. TensorFlow releases the GIL while it infers, and
the postprocessing is mostly numpy and zlib, which release it too; so postprocessing batch N
on a background thread while the bundle thread goes on to infer batch N+1 keeps both busy.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Callable, Iterator


class OrderedBackgroundQueue:
  """Runs submitted calls on `threads` background threads and hands their results back in
  submission order. At most `max_pending` calls are queued or running: `submit` waits for the
  oldest beyond that, so memory is bounded by `max_pending`, not by the bundle."""

  def __init__(self, *, threads: int, max_pending: int):
    if threads < 1 or max_pending < 1:
      raise ValueError(f"threads and max_pending must be at least 1, got {threads}, {max_pending}")
    self._executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=threads, thread_name_prefix="segbeam-background"
    )
    self._max_pending = max_pending
    self._pending: collections.deque[concurrent.futures.Future] = collections.deque()

  def submit(self, function: Callable[..., Any], *args: Any) -> list[Any]:
    """Queues `function(*args)`; returns the results, oldest first, of the calls at the front
    of the queue that are done (waiting for the oldest while more than `max_pending` are
    queued). A call's exception is raised when its result is due."""
    self._pending.append(self._executor.submit(function, *args))
    ready = []
    while self._pending and (self._pending[0].done() or len(self._pending) > self._max_pending):
      ready.append(self._pending.popleft().result())
    return ready

  def drain(self) -> Iterator[Any]:
    """Yields the results of every queued call, oldest first, waiting for each."""
    while self._pending:
      yield self._pending.popleft().result()

  def discard(self) -> None:
    """Forgets queued calls (a failed bundle's, which Beam retries from its start)."""
    for future in self._pending:
      future.cancel()
    self._pending.clear()

  def close(self) -> None:
    self.discard()
    self._executor.shutdown(wait=True)
