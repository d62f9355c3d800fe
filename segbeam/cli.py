"""The `segbeam` command: assembles the subcommands of the model and pipeline sides."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from segbeam import quiet
from segbeam import startup
from segbeam.pipeline import options as options_lib

# The subcommands' modules are imported when their command runs: `segbeam run` needs none of
# the model training, packing or querying code (nor DuckDB), and starts loading its model
# before it imports Beam (`_run_pipeline`).

# Commands that do not need TensorFlow start faster without it.
_WITHOUT_TENSORFLOW = {"model list", "--help", "-h", "query", "summary", "report"}


def build_parser() -> argparse.ArgumentParser:
  # see the imports above
  from segbeam.model import commands as model_commands  # noqa: PLC0415
  from segbeam.pipeline import pack  # noqa: PLC0415
  from segbeam.results import query as results_query  # noqa: PLC0415
  from segbeam.results import report as results_report  # noqa: PLC0415
  from segbeam.results import summary as results_summary  # noqa: PLC0415

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
  if argv and argv[0] in ("run", "demo"):
    return _run_pipeline(argv[0], argv[1:])
  if argv and " ".join(argv[:2]) not in _WITHOUT_TENSORFLOW and argv[0] not in _WITHOUT_TENSORFLOW:
    quiet.import_tensorflow()
  startup.started()
  if argv and argv[0] == "submit":  # like run: options it does not know go to Beam
    from segbeam.pipeline import submit  # noqa: PLC0415

    return submit.main(argv[1:])
  parser = build_parser()
  args = parser.parse_args(argv)
  from segbeam.results import output as results_output  # noqa: PLC0415

  try:
    return args.func(args)
  except (FileNotFoundError, ValueError, results_output.IncompleteOutputError) as error:
    print(f"segbeam {args.command}: {error}", file=sys.stderr)
    return 2


def _run_pipeline(command: str, argv: list[str]) -> int:
  """`segbeam run` or `segbeam demo`: the options parsed once, here; then the model's session
  starts loading on a thread (`sessions.load_early_for`) while Beam is imported and the
  pipeline built. Start-up ends once the pipeline is built (`job.run`)."""
  try:
    if command == "demo":
      argv = options_lib.demo_argv(argv)
    options, beam_args = options_lib.parse_args(argv)
  except ValueError as error:
    print(f"segbeam {command}: {error}", file=sys.stderr)
    return 2
  if command == "demo":
    print(f"segmenting {options.input} with the embedded default model", flush=True)
  quiet.import_tensorflow()
  # imported in this order on purpose (see above)
  from segbeam.pipeline import sessions  # noqa: PLC0415

  sessions.load_early_for(options)
  from segbeam.pipeline import commands  # noqa: PLC0415

  return commands.run(options, beam_args)


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
