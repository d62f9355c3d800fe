"""The console script's start-up: the garbage collector paused, then frozen and resumed."""

import subprocess
import sys

# Runs in a fresh interpreter: the collector's state is process-wide.
_SCRIPT = """
import gc
from segbeam import cli, console, startup
{before}
def entry_point():
  states = [gc.isenabled()]
  startup.started()
  states += [gc.isenabled(), gc.get_freeze_count() > 0]
  startup.started()  # a second call changes nothing
  states.append(gc.isenabled())
  print(states)
cli.entry_point = entry_point
console.main()
"""


def _states(before: str = "") -> str:
  return subprocess.run(
    [sys.executable, "-c", _SCRIPT.format(before=before)],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()


def test_the_collector_is_paused_until_start_up_ends_then_frozen_and_resumed():
  assert _states() == "[False, True, True, True]"


def test_a_collector_the_embedding_program_turned_off_stays_off():
  assert _states("gc.disable()") == "[False, False, False, False]"
