"""The `segbeam` command line: every command in one registry (`COMMANDS`), each registered by its
module's `add_parser`, and every error a command raises mapped to one exit status (`exits`).

A command's module is imported only when that command runs (or for the full --help): `segbeam
run` needs none of the model training, packing or querying code (nor DuckDB), and starts
loading its model before it imports Beam's pipeline modules (`segbeam.commands.run`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple, Optional, Sequence

from segbeam import exits
from segbeam import quiet
from segbeam import startup


class Command(NamedTuple):
  """Where a command is registered: `module`'s `add_parser(subparsers)` (a module may register
  several commands), and whether TensorFlow is imported before it runs (quietly, `quiet`):
  commands that do not need it start faster without it; `run` and `demo` import it themselves,
  once their options are parsed."""

  module: str
  tensorflow: bool = True


# Every command. Its parser's defaults say how it runs: `func(args)` returns the exit status;
# `takes_beam_args` (words it does not know go to Beam, as `args.beam_args`, with its own words
# as `args.argv`); `own_start_up` (it ends start-up itself, `startup.started`).
COMMANDS = {
  "run": Command("segbeam.commands.run", tensorflow=False),
  "demo": Command("segbeam.commands.run", tensorflow=False),
  "submit": Command("segbeam.commands.submit"),
  "model": Command("segbeam.commands.model"),
  "train": Command("segbeam.commands.model"),
  "evaluate": Command("segbeam.commands.model"),
  "export": Command("segbeam.commands.model"),
  "pack": Command("segbeam.commands.pack"),
  "query": Command("segbeam.results.query", tensorflow=False),
  "summary": Command("segbeam.results.summary", tensorflow=False),
  "report": Command("segbeam.results.report", tensorflow=False),
}
# A subcommand that needs no TensorFlow where its command does.
_WITHOUT_TENSORFLOW = ("model", "list")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
  """The command line's parser: `command` registered by its module, the others by name only
  (for the usage line); every command registered where `command` is none (--help lists them
  all)."""
  parser = argparse.ArgumentParser(
    prog="segbeam", description="Batch image segmentation with a Keras U-Net on Apache Beam."
  )
  subparsers = parser.add_subparsers(dest="command", required=True)
  modules = (
    [COMMANDS[command].module] if command in COMMANDS else [c.module for c in COMMANDS.values()]
  )
  for name, (module, _) in COMMANDS.items():
    if name in subparsers.choices:
      continue
    if module in modules:
      importlib.import_module(module).add_parser(subparsers)
    else:
      subparsers.add_parser(name, add_help=False)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  command = argv[0] if argv and not argv[0].startswith("-") else ""
  try:
    return _run_command(argv)
  except KeyboardInterrupt:  # Ctrl-C outside what a command reports itself: no traceback
    return exits.stopped(command, "interrupted", exits.INTERRUPTED)


def _run_command(argv: list[str]) -> int:
  command = COMMANDS.get(argv[0]) if argv else None
  if command and command.tensorflow and tuple(argv[:2]) != _WITHOUT_TENSORFLOW:
    quiet.import_tensorflow()
  parser = build_parser(argv[0] if argv else None)
  args, rest = parser.parse_known_args(argv)
  # Words for Beam come after the command's name, never before it.
  if rest and not (getattr(args, "takes_beam_args", False) and argv[0] == args.command):
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  args.argv, args.beam_args = argv[1:], rest
  if not getattr(args, "own_start_up", False):
    startup.started()
  try:
    return args.func(args)
  except exits.USAGE_ERRORS as error:
    return exits.stopped(args.command, error)


def entry_point() -> None:
  """The console script. After a run, TensorFlow's and gRPC's C++ threads can still be alive
  when the interpreter tears down static objects, which now and then aborts the process
  ('terminate called without an active exception', exit 134) after all work is done. The
  result is decided and flushed by then, so leave without that teardown."""
  code = main()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  entry_point()
