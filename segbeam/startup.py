"""The `segbeam` console script, with Python's cyclic garbage collector paused while it starts.

Starting up allocates millions of objects that live as long as the process (TensorFlow's and
Beam's modules, the pipeline graph), and the collector scans them again and again as they pile
up: a third of the time of importing TensorFlow (BENCHMARKS.md). So the console script pauses
it before any import, and `started()` ends start-up: what exists by then is frozen out of
later collections, and the collector runs again.
"""

from __future__ import annotations

import gc

_paused = False


def main() -> None:
  """The console script: `segbeam.cli.entry_point` with the collector paused for start-up."""
  global _paused
  if gc.isenabled():
    gc.disable()
    _paused = True
  from segbeam import cli  # pylint: disable=import-outside-toplevel  # imported while paused
  cli.entry_point()


def started() -> None:
  """Start-up is over: freezes what exists now and resumes the collector, if `main` paused it
  (never one the embedding program turned off itself). Called again, it does nothing."""
  global _paused
  if _paused:
    _paused = False
    gc.freeze()
    gc.enable()
