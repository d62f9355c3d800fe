"""The `segbeam` console script, with Python's cyclic garbage collector paused while it starts.

Starting up allocates millions of objects that live as long as the process (TensorFlow's and
Beam's modules, the pipeline graph), and the collector scans them again and again as they pile
up: a good part of the time of importing TensorFlow (BENCHMARKS.md, Measured design choices).
So the console script pauses it before any import, and `started()` ends start-up: what exists
by then is frozen out of later collections, and the collector runs again.
"""

from __future__ import annotations

import gc

_paused = False

# The console script's exit status after Ctrl-C: the shell's own for a command it ended (128 +
# SIGINT), so scripts tell an interrupted run from a failed one (1) and a bad invocation (2).
INTERRUPTED_EXIT = 130


def main() -> None:
  """The console script: `segbeam.cli.entry_point` with the collector paused for start-up."""
  global _paused
  if gc.isenabled():
    gc.disable()
    _paused = True
  from segbeam import cli  # noqa: PLC0415  # imported while paused

  cli.entry_point()


def started() -> None:
  """Start-up is over: freezes what exists now and resumes the collector, if `main` paused it
  (never one the embedding program turned off itself). Called again, it does nothing."""
  global _paused
  if _paused:
    _paused = False
    gc.freeze()
    gc.enable()
