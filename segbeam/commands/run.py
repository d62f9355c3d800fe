"""The `segbeam run` and `segbeam demo` commands: a run's options in, a report or one line out.

The options are parsed once (`segbeam.cli`); then the model's session starts loading on a
thread (`sessions.load_early_for`) while Beam is imported and the pipeline built, so this module
imports Beam's and the run's modules only where a command runs, after that. It checks Beam's
options, runs the job (`job.run`), and reports: the counts and a few rows after a run, one line
for a bad invocation (exit 2) or a failed run (exit 1), and what Ctrl-C left in the output
folder (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Optional, Sequence

from segbeam import exits
from segbeam import messages
from segbeam import options as options_lib
from segbeam import quiet
from segbeam.messages import printable
from segbeam.pipeline import elements


def print_report(output: str, examples: int = 5) -> None:
  """Where the output is, the counts, and the coverage figures of the images where the model's
  first class (the pet, for the default model) covers most."""
  import pyarrow.parquet as pq  # noqa: PLC0415  # see the module's docstring
  from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

  from segbeam.pipeline import layout  # noqa: PLC0415
  from segbeam.pipeline import schema  # noqa: PLC0415

  manifest = layout.read_manifest(output)
  if manifest is None:
    exits.say(f"no manifest in {output}: the run did not complete", file=sys.stderr)
    return
  counts = manifest["counts"]
  skipped = counts.get("skipped_existing", 0)
  exits.say(
    f"segbeam run {manifest['run_id']}: {counts['inputs_seen']} inputs, "
    f"{counts['segmented']} segmented, {counts['failed']} failed"
    + (f", {skipped} skipped (segmented before)" if skipped else "")
  )
  for reason in counts["failed_by_reason"]:
    exits.say(f"  failed at {reason['stage']}: {reason['error_type']} x{reason['count']}")
  tables = ", ".join(f"{table}/*.parquet" for table in layout.TABLES)
  masks = f", {layout.MASKS_DIR}/*.png" if manifest["options"]["mask_files"] else ""
  exits.say(f"output: {output}/{tables}{masks}, {layout.MANIFEST_FILE}")
  class_names = manifest["model"]["class_names"]
  suffixes = schema.class_columns(class_names)
  columns = ["image_id", "dominant_class"] + [f"coverage_{s}" for s in suffixes]
  rows = []
  for path in manifest["files"][layout.SEGMENTS_DIR]:
    with FileSystems.open(path) as f:
      rows.extend(pq.read_table(f, columns=columns).to_pylist())
  if not rows:
    return
  rows.sort(key=lambda row: -row[f"coverage_{suffixes[0]}"])
  exits.say(f"images with the most {class_names[0]}:")
  for row in rows[:examples]:
    figures = "  ".join(
      f"{name} {row[f'coverage_{s}']:6.1%}" for name, s in zip(class_names, suffixes)
    )
    exits.say(f"  {row['image_id']:<28s} {figures}  (dominant: {row['dominant_class']})")


def _not_beams_false_resource_warning(record: logging.LogRecord) -> bool:
  # Beam 2.77's RunInference imports `resource` together with an optional ModelManager; when
  # the latter fails it warns at every model load that `resource` is unavailable. It is not,
  # and the figure it wanted is only a load-memory metric.
  return not record.getMessage().startswith("Resource module is not available")


def interrupted(error: BaseException) -> bool:
  """Whether `error` is, or was raised while handling, a KeyboardInterrupt: Beam re-raises one
  that reaches a DoFn as a RuntimeError naming the step."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def _not_an_interrupt(record: logging.LogRecord) -> bool:
  # Beam logs the traceback of an exception leaving a DoFn before re-raising it; for Ctrl-C,
  # or a model that fails on every image, that is a page of stack frames where the run's last
  # line says what happened.
  error = record.exc_info[1] if record.exc_info else None
  if error is not None and (interrupted(error) or elements.model_failure_in(error)):
    return False
  # A worker process's error comes to the runner's log as text, its traceback inside.
  return record.levelno < logging.ERROR or not elements.MODEL_FAILURE_LINE.search(
    record.getMessage()
  )


def interruption_message(output: str) -> str:
  """What Ctrl-C left in `output`: as it was, an unfinished run, or nothing."""
  from segbeam.pipeline import layout  # noqa: PLC0415  # see the module's docstring

  written = layout.entries_present(output)
  if layout.MANIFEST_FILE in written:  # before this run prepared the folder: it is untouched
    return f"interrupted; {output} is as it was"
  if written:
    unfinished = f"an unfinished run (no {layout.MANIFEST_FILE})"
    return f"interrupted; {output} holds {unfinished}: {RESUME_HINT}"
  return "interrupted before anything was written"


RESUME_HINT = "run the same command with --resume to continue it, or --overwrite to start over"


def _interrupted_exit(output: str) -> int:
  return exits.stopped("run", interruption_message(output), exits.INTERRUPTED)


def _printable_record(record: logging.LogRecord) -> bool:
  # A logged path or message may quote a file name; a traceback keeps its lines.
  message = record.getMessage()
  safe = printable(message, keep_newlines=True)
  if safe != message:
    record.msg, record.args = safe, None
  return True


def _configure_logging() -> None:
  # segbeam's own progress lines, without Beam's and TensorFlow's INFO chatter.
  logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("segbeam").setLevel(logging.INFO)
  logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tfx-bsl's deprecation notices
  logging.getLogger().addFilter(_not_beams_false_resource_warning)
  for handler in logging.getLogger().handlers:  # records from every logger pass these
    handler.addFilter(_not_an_interrupt)
    handler.addFilter(_printable_record)


def progress_reporter(
  options: options_lib.RunOptions, beam_args: Sequence[str]
) -> contextlib.AbstractContextManager:
  """Progress lines on stderr while the run goes, where the runner runs it in this process
  and not --quiet; else nothing (Dataflow's workers count in the job's counters)."""
  from segbeam.pipeline import progress  # noqa: PLC0415  # see the module's docstring
  from segbeam.run import beam_options  # noqa: PLC0415

  if options.quiet or not beam_options.runs_in_this_process(
    beam_options.pipeline_options(beam_args)
  ):
    return contextlib.nullcontext()
  # The reporter's lines replace the postprocessing's own "segmented N images" log lines.
  logging.getLogger("segbeam.pipeline.rows").setLevel(logging.WARNING)
  return progress.Reporter(sys.stderr)


def run(options: options_lib.RunOptions, beam_args: Sequence[str]) -> int:
  """`segbeam run` with its options parsed: checks Beam's, runs, reports; the exit status."""
  from segbeam.run import beam_options  # noqa: PLC0415  # see the module's docstring
  from segbeam.run import job  # noqa: PLC0415

  _configure_logging()
  try:
    beam_options.check_beam_args(beam_args, beam_options.option_strings(options_lib.run_parser()))
  except ValueError as error:
    return exits.stopped("run", error)
  try:
    with progress_reporter(options, beam_args):
      job.run(options, beam_args)
  except job.NothingToResumeError as error:
    exits.stopped("run", error, exits.OK)
    print_report(options.output)
    return exits.OK
  except exits.InvocationError as error:
    return exits.stopped("run", error)
  except KeyboardInterrupt:
    return _interrupted_exit(options.output)
  except Exception as error:  # the job failed: say so, exit 1
    if interrupted(error):
      return _interrupted_exit(options.output)
    logging.getLogger(__name__).exception("the run failed")
    model_failure = elements.model_failure_in(error)
    if model_failure is not None:  # the model's or the device's: its own last line, no traceback
      return exits.stopped(
        "run",
        f"the run stopped, no manifest was written in {options.output}: {model_failure}",
        exits.FAILED,
      )
    reason = messages.one_line(error, limit=500)
    return exits.stopped(
      "run",
      f"the run failed, no manifest was written in {options.output}: "
      f"{type(error).__name__}: {reason}; once fixed, {RESUME_HINT}",
      exits.FAILED,
    )
  print_report(options.output)
  return exits.OK


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`segbeam run ARGS` in this process: parses `argv` (default: sys.argv[1:]), then `run`."""
  try:
    options, beam_args = options_lib.parse_args(sys.argv[1:] if argv is None else argv)
  except ValueError as error:
    return exits.stopped("run", error)
  return run(options, beam_args)


def _start(options: options_lib.RunOptions, beam_args: Sequence[str]) -> int:
  """`run`, with the model's session loading on a thread while Beam is imported (see the
  module's docstring)."""
  quiet.import_tensorflow()
  from segbeam.pipeline import sessions  # noqa: PLC0415  # imported in this order on purpose

  sessions.load_early_for(options)
  return run(options, beam_args)


def _run_command(args: argparse.Namespace) -> int:
  options, beam_args = options_lib.parse_args(args.argv)
  return _start(options, beam_args)


def _demo_command(args: argparse.Namespace) -> int:
  options, beam_args = options_lib.parse_args(demo_argv(args.argv))
  print(f"segmenting {options.input} with the embedded default model", flush=True)
  return _start(options, beam_args)


def add_parser(subparsers) -> None:
  """Registers `segbeam run` and `segbeam demo`. Each parses its own words (`options.parse_args`,
  `demo_argv`), --help among them: a pattern the shell expanded is named before any
  other error, and what they do not know goes to Beam."""
  run_parser = subparsers.add_parser(
    "run",
    add_help=False,
    help="segment images: segbeam run --input GLOB --output DIR [--model DIR] [Beam options]; "
    "see segbeam run --help",
  )
  run_parser.set_defaults(func=_run_command, takes_beam_args=True, own_start_up=True)
  demo_parser = subparsers.add_parser(
    "demo",
    add_help=False,
    help="segbeam run on sample photos with the default model [--output DIR] [Beam options]",
  )
  demo_parser.set_defaults(func=_demo_command, takes_beam_args=True, own_start_up=True)


DEMO_OUTPUT = "runs/demo"


def demo_parser() -> argparse.ArgumentParser:
  return argparse.ArgumentParser(
    prog="segbeam demo",
    allow_abbrev=False,
    usage="segbeam demo [--output DIR] [segbeam run options] [Beam options]",
    description="segbeam run on the sample photos scikit-image ships (a cat among them) with "
    f"the embedded default model, into --output (default: {DEMO_OUTPUT}, replaced if it holds "
    "an earlier demo). Takes segbeam run's other options (see segbeam run --help) and Beam's.",
  )


def demo_argv(argv: Sequence[str]) -> list[str]:
  """`segbeam demo`'s arguments as `segbeam run`'s: the sample photos as --input, --overwrite,
  and --output when not given. Raises ValueError without scikit-image; --help prints the
  demo's own usage and exits."""
  argv = list(argv)
  demo_parser().parse_known_args([a for a in argv if a in ("-h", "--help")])
  try:
    import skimage  # noqa: PLC0415  # only the demo's extra has it
  except ImportError as error:
    raise ValueError(
      "the demo reads scikit-image's sample photos: pip install 'segbeam[demo]'"
    ) from error
  pattern = os.path.join(os.path.dirname(skimage.__file__), "data", "*.[pj][pn]g")
  return [
    "--input",
    pattern,
    "--overwrite",
    *argv,
    *([] if options_lib.given(argv, "--output") else ["--output", DEMO_OUTPUT]),
  ]
