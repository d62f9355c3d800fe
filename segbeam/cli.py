"""The `segbeam` command: assembles the subcommands of the model and pipeline sides."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from segbeam import quiet
from segbeam import startup

# The subcommands' modules are imported when their command runs: `segbeam run` is timed from
# the moment it starts, and needs none of the model training, packing or querying code (nor
# DuckDB).

# Commands that do not need TensorFlow start faster without it.
_WITHOUT_TENSORFLOW = {"model list", "--help", "-h", "query", "summary", "report"}


def build_parser() -> argparse.ArgumentParser:
  # pylint: disable=import-outside-toplevel  # see the imports above
  from segbeam.model import commands as model_commands
  from segbeam.pipeline import pack
  from segbeam.results import query as results_query
  from segbeam.results import report as results_report
  from segbeam.results import summary as results_summary

  parser = argparse.ArgumentParser(
    prog="segbeam", description="Batch image segmentation with a Keras U-Net on Apache Beam."
  )
  subparsers = parser.add_subparsers(dest="command", required=True)
  # `run` parses its own arguments and hands the rest to Beam; listed here for --help only.
  subparsers.add_parser(
    "run",
    add_help=False,
    help="segment images: segbeam run --input GLOB --output DIR [--model DIR] "
    "[Beam options]; see segbeam run --help",
  )
  subparsers.add_parser(
    "submit",
    add_help=False,
    help="segbeam run on Google Cloud Dataflow with GPU workers: --project, "
    "--temp-location, --image, gs:// --input and --output [--dry-run]; see "
    "segbeam submit --help",
  )
  subparsers.add_parser(
    "demo",
    add_help=False,
    help="segbeam run on sample photos with the default model [--output DIR] [Beam options]",
  )
  model_commands.add_parsers(subparsers)
  pack.add_parser(subparsers)
  results_query.add_parser(subparsers)
  results_summary.add_parser(subparsers)
  results_report.add_parser(subparsers)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    return _run_command(argv)
  except KeyboardInterrupt:  # Ctrl-C outside what a command reports itself: no traceback
    command = f"segbeam {argv[0]}" if argv and not argv[0].startswith("-") else "segbeam"
    print(f"{command}: interrupted", file=sys.stderr)
    return startup.INTERRUPTED_EXIT


def _run_command(argv: list[str]) -> int:
  if argv and " ".join(argv[:2]) not in _WITHOUT_TENSORFLOW and argv[0] not in _WITHOUT_TENSORFLOW:
    quiet.import_tensorflow()
  if argv and argv[0] in ("run", "demo"):  # their start-up ends once the pipeline is built
    # The model's session loads on a thread while Beam is imported and the pipeline built.
    from segbeam.pipeline import sessions

    sessions.load_early_for_run(argv[1:])
    from segbeam.pipeline import launcher

    return (launcher.main if argv[0] == "run" else launcher.demo_main)(argv[1:])
  startup.started()
  if argv and argv[0] == "submit":  # like run: options it does not know go to Beam
    from segbeam.pipeline import submit

    return submit.main(argv[1:])
  parser = build_parser()
  args = parser.parse_args(argv)
  from segbeam.results import output as results_output  # pylint: disable=import-outside-toplevel

  try:
    return args.func(args)
  except (FileNotFoundError, ValueError, results_output.IncompleteOutputError) as error:
    print(f"segbeam {args.command}: {error}", file=sys.stderr)
    return 2


def entry_point() -> None:
  """The console script. After a run, TensorFlow's and gRPC's C++ threads can still be alive
  when the interpreter tears down static objects, which now and then aborts the process
  ('terminate called without an active exception', exit 134) after all work is done. The
  result is decided and flushed by then, so leave without that teardown."""
  code = main()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


if __name__ == "__main__":
  entry_point()
