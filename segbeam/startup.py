"""Python's cyclic garbage collector, paused while the console script starts.

Starting up allocates millions of objects that live as long as the process (TensorFlow's and
Beam's modules, the pipeline graph), and the collector scans them again and again as they pile
up: a good part of the time of importing TensorFlow (BENCHMARKS.md, Measured design choices).
So the console script (`segbeam.console`) pauses it before any import, and `started()` ends
start-up: what exists by then is frozen out of later collections, and the collector runs again.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
  """Pauses the collector for start-up, unless the embedding program turned it off itself."""
  global _paused
  if gc.isenabled():
    gc.disable()
    _paused = True


def started() -> None:
  """Start-up is over: freezes what exists now and resumes the collector, if `pause` paused it
  (never one the embedding program turned off itself). Called again, it does nothing."""
  global _paused
  if _paused:
    _paused = False
    gc.freeze()
    gc.enable()
