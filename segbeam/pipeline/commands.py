"""The `segbeam run` and `segbeam demo` commands: a run's options in, a report or one line out.

Parsing is `options.parse_args`, done once by the console script (`segbeam.cli`) before Beam
is imported; this module checks Beam's options, runs the job (`job.run`), and reports: the
counts and a few rows after a run, one line for a bad invocation (exit 2) or a failed run
(exit 1), and what Ctrl-C left in the output folder (exit 130).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Optional, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from segbeam import startup
from segbeam.pipeline import beam_options
from segbeam.pipeline import constants
from segbeam.pipeline import elements
from segbeam.pipeline import job
from segbeam.pipeline import options as options_lib
from segbeam.pipeline import progress
from segbeam.pipeline import schema
from segbeam.pipeline import sinks
from segbeam.results.printable import printable


def _say(text: str, file=None) -> None:
  """Prints one line with its control characters escaped: names and ids in it come from files
  anyone may write (`printable`)."""
  print(printable(text), file=file or sys.stdout)


def print_report(output: str, examples: int = 5) -> None:
  """Where the output is, the counts, and the coverage figures of the images where the model's
  first class (the pet, for the default model) covers most."""
  manifest = sinks.read_manifest(output)
  if manifest is None:
    _say(f"no manifest in {output}: the run did not complete", file=sys.stderr)
    return
  counts = manifest["counts"]
  skipped = counts.get("skipped_existing", 0)
  _say(
    f"segbeam run {manifest['run_id']}: {counts['inputs_seen']} inputs, "
    f"{counts['segmented']} segmented, {counts['failed']} failed"
    + (f", {skipped} skipped (segmented before)" if skipped else "")
  )
  for reason in counts["failed_by_reason"]:
    _say(f"  failed at {reason['stage']}: {reason['error_type']} x{reason['count']}")
  mask_files = ", masks/*.png" if manifest["options"]["mask_files"] else ""
  _say(f"output: {output}/segments/*.parquet, errors/*.parquet{mask_files}, manifest.json")
  class_names = manifest["model"]["class_names"]
  suffixes = schema.class_columns(class_names)
  columns = ["image_id", "dominant_class"] + [f"coverage_{s}" for s in suffixes]
  rows = []
  for path in manifest["files"][constants.SEGMENTS_DIR]:
    with FileSystems.open(path) as f:
      rows.extend(pq.read_table(f, columns=columns).to_pylist())
  if not rows:
    return
  rows.sort(key=lambda row: -row[f"coverage_{suffixes[0]}"])
  _say(f"images with the most {class_names[0]}:")
  for row in rows[:examples]:
    figures = "  ".join(
      f"{name} {row[f'coverage_{s}']:6.1%}" for name, s in zip(class_names, suffixes)
    )
    _say(f"  {row['image_id']:<28s} {figures}  (dominant: {row['dominant_class']})")


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
  written = sinks.entries_present(output)
  if constants.MANIFEST_FILE in written:  # before this run prepared the folder: it is untouched
    return f"interrupted; {output} is as it was"
  if written:
    return f"interrupted; {output} holds an unfinished run (no manifest.json): {RESUME_HINT}"
  return "interrupted before anything was written"


RESUME_HINT = "run the same command with --resume to continue it, or --overwrite to start over"


def _interrupted_exit(output: str) -> int:
  _say(f"segbeam run: {interruption_message(output)}", file=sys.stderr)
  return startup.INTERRUPTED_EXIT


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
  if options.quiet or not beam_options.runs_in_this_process(
    beam_options.pipeline_options(beam_args)
  ):
    return contextlib.nullcontext()
  # The reporter's lines replace the postprocessing's own "segmented N images" log lines.
  logging.getLogger("segbeam.pipeline.rows").setLevel(logging.WARNING)
  return progress.Reporter(sys.stderr)


def run(options: options_lib.RunOptions, beam_args: Sequence[str]) -> int:
  """`segbeam run` with its options parsed: checks Beam's, runs, reports; the exit status."""
  _configure_logging()
  try:
    beam_options.check_beam_args(beam_args, beam_options.option_strings(options_lib.run_parser()))
  except ValueError as error:
    _say(f"segbeam run: {error}", file=sys.stderr)
    return 2
  try:
    with progress_reporter(options, beam_args):
      job.run(options, beam_args)
  except job.NothingToResumeError as error:
    _say(f"segbeam run: {error}", file=sys.stderr)
    print_report(options.output)
    return 0
  except job.InvocationError as error:
    _say(f"segbeam run: {error}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return _interrupted_exit(options.output)
  except Exception as error:  # the job failed: say so, exit 1
    if interrupted(error):
      return _interrupted_exit(options.output)
    logging.getLogger(__name__).exception("the run failed")
    model_failure = elements.model_failure_in(error)
    if model_failure is not None:  # the model's or the device's: its own last line, no traceback
      _say(
        f"segbeam run: the run stopped, no manifest was written in {options.output}: "
        f"{model_failure}",
        file=sys.stderr,
      )
      return 1
    reason = elements.one_line(error, limit=500)
    _say(
      f"segbeam run: the run failed, no manifest was written in {options.output}: "
      f"{type(error).__name__}: {reason}; once fixed, {RESUME_HINT}",
      file=sys.stderr,
    )
    return 1
  print_report(options.output)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`segbeam run ARGS` in this process: parses `argv` (default: sys.argv[1:]), then `run`."""
  try:
    options, beam_args = options_lib.parse_args(sys.argv[1:] if argv is None else argv)
  except ValueError as error:
    _say(f"segbeam run: {error}", file=sys.stderr)
    return 2
  return run(options, beam_args)


def demo_main(argv: Optional[Sequence[str]] = None) -> int:
  """`segbeam demo ARGS`: the main job on the embedded default model and sample photos."""
  try:
    run_argv = options_lib.demo_argv(sys.argv[1:] if argv is None else argv)
  except ValueError as error:
    _say(f"segbeam demo: {error}", file=sys.stderr)
    return 2
  return main(run_argv)
