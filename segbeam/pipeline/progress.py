"""A run's progress: images done of the total, failed so far, img/s, time left.

segbeam's DoFns count through `Counter`s. Each is a Beam counter in the `segbeam` namespace
(the job's metrics: on Dataflow, the job page's counters, which `segbeam submit --wait`
prints) and also a tally in the process that runs the DoFn, which `Reporter` reads from a
thread while a local run goes: the local runner runs the pipeline in `segbeam run`'s own
process, where Beam's counters are only read once the run is over.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Mapping, Optional, TextIO

import apache_beam as beam

from segbeam import constants

LISTED = "inputs_listed"  # set at once where the listing knows the total: image files
SEEN = "inputs_seen"
SEGMENTED = "segmented"
SKIPPED = "skipped_existing"
RESUMED = "resumed"  # done by an earlier attempt at this output (`journal`)
FAILED_READ = "failed_read"
FAILED_VALIDATE = "failed_validate"
FAILED = "failed"  # at inference or postprocessing
FAILURE_COUNTERS = (FAILED_READ, FAILED_VALIDATE, FAILED)
# Tiled images (`tiled`): one large image may take minutes, its tiles show it going.
TILES_CUT = "tiles_cut"
TILES_INFERRED = "tiles_inferred"

_LOCK = threading.Lock()
_TALLY: dict[str, int] = {}


class Counter:
  """A Beam counter in segbeam's namespace that also counts into this process's tally."""

  def __init__(self, name: str):
    self.name = name
    self._counter = beam.metrics.Metrics.counter(constants.METRICS_NAMESPACE, name)

  def inc(self, n: int = 1) -> None:
    self._counter.inc(n)
    with _LOCK:
      _TALLY[self.name] = _TALLY.get(self.name, 0) + n


def tally() -> dict[str, int]:
  """What the `Counter`s counted in this process since the last `reset_tally`."""
  with _LOCK:
    return dict(_TALLY)


def reset_tally() -> None:
  with _LOCK:
    _TALLY.clear()


@dataclasses.dataclass(frozen=True)
class Figures:
  """A run's progress at one moment."""

  done: int  # images that ended as a row, an error row or skipped
  seen: int  # inputs read so far
  failed: int
  total: Optional[int]  # None where not known up front (TFRecord shards)
  images_per_second: Optional[float]  # since the first image was done: start-up left out
  resumed: int = 0  # of `done`, those an earlier attempt did (`--resume`)
  tiles_cut: int = 0  # of large images, with --tile
  tiles_inferred: int = 0

  @classmethod
  def from_counts(
    cls, counts: Mapping[str, int], images_per_second: Optional[float] = None
  ) -> "Figures":
    """The figures of segbeam's counters (`Counter` names -> counts)."""
    failed = sum(counts.get(name, 0) for name in FAILURE_COUNTERS)
    resumed = counts.get(RESUMED, 0)
    done = counts.get(SEGMENTED, 0) + counts.get(SKIPPED, 0) + resumed + failed
    total = counts.get(LISTED) or None
    return cls(
      done,
      counts.get(SEEN, 0),
      failed,
      total,
      images_per_second,
      resumed,
      counts.get(TILES_CUT, 0),
      counts.get(TILES_INFERRED, 0),
    )

  def line(self) -> str:
    """One log-friendly line: '1,200 of 4,500 images (27%), 3 failed, 85.1 img/s, about 39 s
    left'; without a total, the images done of those read so far."""
    if self.total is not None:
      share = self.done / self.total if self.total else 1.0
      parts = [f"{self.done:,} of {self.total:,} images ({share:.0%})"]
    else:
      parts = [
        f"{self.done:,} images done of {self.seen:,} read so far (the total is counted as "
        "they are read)"
      ]
    parts.append(f"{self.failed:,} failed")
    if self.tiles_cut:
      parts.append(f"{self.tiles_inferred:,} of {self.tiles_cut:,} tiles inferred")
    if self.resumed:
      parts.append(f"{self.resumed:,} done before (resumed)")
    if self.images_per_second:
      parts.append(f"{self.images_per_second:.1f} img/s")
      if self.total is not None and self.total > self.done:
        parts.append(f"about {_duration((self.total - self.done) / self.images_per_second)} left")
    return ", ".join(parts)


class Rate:
  """Images per second since images were first done (start-up left out), from successive
  readings of `Figures`: only the images this attempt did, since what an earlier attempt did
  (`--resume`) is only read past, far faster than images are segmented."""

  def __init__(self):
    self._first: Optional[tuple[float, int]] = None

  def update(self, now: float, figures: Figures) -> Figures:
    """`figures` with the rate up to this reading; None until two readings with images done
    apart."""
    done = figures.done - figures.resumed
    rate = None
    if self._first is None:
      if done:
        self._first = (now, done)
    else:
      since, done_then = self._first
      if now > since and done > done_then:
        rate = (done - done_then) / (now - since)
    return dataclasses.replace(figures, images_per_second=rate)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class Reporter:
  """Prints `Figures` from this process's tally to `stream` every `every` seconds, on a thread:
  every 2 s on a terminal (rewriting one line), else every 30 s, a line each.

  Args:
    stream: where to print (stderr).
    every: seconds between lines; None for the stream's default.
  """

  TERMINAL_EVERY = 2.0
  LOG_EVERY = 30.0

  def __init__(
    self,
    stream: TextIO,
    *,
    every: Optional[float] = None,
    clock: Callable[[], float] = time.monotonic,
  ):
    self._stream = stream
    self._terminal = _is_terminal(stream)
    self._every = every or (self.TERMINAL_EVERY if self._terminal else self.LOG_EVERY)
    self._clock = clock
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="segbeam-progress", daemon=True)
    self._rate = Rate()
    self._printed = False

  def __enter__(self) -> "Reporter":
    reset_tally()
    if self._terminal:  # a log line printed meanwhile goes on a line of its own
      for handler in logging.getLogger().handlers:
        handler.addFilter(self._clear_line)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    for handler in logging.getLogger().handlers:
      handler.removeFilter(self._clear_line)
    if self._terminal and self._printed:
      self._stream.write("\n")  # end the rewritten line
      self._stream.flush()

  def _clear_line(self, record: logging.LogRecord) -> bool:
    """A logging filter: erases the progress line before a record is printed after it."""
    if self._printed:
      self._stream.write("\r\033[K")
    return True

  def figures(self) -> Figures:
    return self._rate.update(self._clock(), Figures.from_counts(tally()))

  def _loop(self) -> None:
    while not self._stop.wait(self._every):
      self._print(self.figures())

  def _print(self, figures: Figures) -> None:
    if self._terminal:
      self._stream.write(f"\r{figures.line():<100}")
    else:
      self._stream.write(figures.line() + "\n")
    self._stream.flush()
    self._printed = True


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or closed
    return False
