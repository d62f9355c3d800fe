"""segbeam's exit statuses, and the one way a command says why it stopped: one line on stderr.

Scripts tell the outcomes apart by the status: a bad invocation (nothing was done) from a
failed run, and both from Ctrl-C.
"""

from __future__ import annotations

import sys

from segbeam.messages import printable

OK = 0
# The work failed: a run or a Dataflow job (its output holds no manifest).
FAILED = 1
# A bad invocation, refused before anything was done.
USAGE = 2
# Ctrl-C: the shell's own status for a command it ended (128 + SIGINT).
INTERRUPTED = 130


class InvocationError(Exception):
  """A bad invocation: said in one line, exit status `USAGE`, nothing done."""


# What a command raises for a bad invocation: its own checks, and a value or a file refused.
USAGE_ERRORS = (InvocationError, ValueError, FileNotFoundError)


def say(text: str, file=None, *, keep_newlines: bool = False) -> None:
  """Prints `text` with its control characters escaped: names and ids in it come from files
  anyone may write (`printable`)."""
  print(printable(text, keep_newlines=keep_newlines), file=file or sys.stdout)


def stopped(command: str, why: object, status: int = USAGE) -> int:
  """Says 'segbeam COMMAND: WHY' ('segbeam: WHY' without one) on stderr; returns `status`. A
  message of several lines (a query's error) keeps them."""
  text = f"segbeam {command}: {why}" if command else f"segbeam: {why}"
  say(text, file=sys.stderr, keep_newlines=True)
  return status
