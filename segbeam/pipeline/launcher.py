"""`segbeam run`: parses our options and Beam's, checks the invocation, builds and runs."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from segbeam import startup
from segbeam.model import defaults
from segbeam.model import export as export_lib
from segbeam.model import model_safety
from segbeam.pipeline import inference
from segbeam.pipeline import model_files
from segbeam.pipeline import options as options_lib
from segbeam.pipeline import records
from segbeam.pipeline import resume
from segbeam.pipeline import segment_pipeline
from segbeam.pipeline import sessions
from segbeam.pipeline import sinks
from segbeam.pipeline import sources

# Beam 2.77's DirectRunner first tries the Prism runner, whose binary it downloads (which fails
# offline and adds a process); for a batch job it then runs the FnApiRunner anyway. Going to the
# FnApiRunner directly is the same engine, and --runner still overrides it.
DEFAULT_LOCAL_RUNNER = "FnApiRunner"


def beam_pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
  options = PipelineOptions(beam_args)
  if options.get_all_options()["runner"] is None:
    options = PipelineOptions([*beam_args, f"--runner={DEFAULT_LOCAL_RUNNER}"])
  return options


_IN_PROCESS_RUNNERS = (
  "directrunner",
  "direct",
  "fnapirunner",
  "switchingdirectrunner",
  "bundlebaseddirectrunner",
)


def runs_in_this_process(options: PipelineOptions) -> bool:
  """Whether the runner executes the pipeline's DoFns in this process (Beam's local runners,
  unless told to start worker processes), so a model loaded here is the one they use."""
  all_options = options.get_all_options()  # one full parse of every Beam option; not twice
  runner = all_options["runner"]
  name = runner if isinstance(runner, str) else type(runner).__name__
  mode = all_options.get("direct_running_mode") or "in_memory"
  return name.rsplit(".", 1)[-1].lower() in _IN_PROCESS_RUNNERS and mode != "multi_processing"


class InvocationError(Exception):
  """A bad invocation: reported as one line, exit code 2, nothing run."""


def _matches_anything(pattern: str, what: str) -> bool:
  try:
    # One match is enough to know the pattern matches anything; Beam's file systems list
    # lazily, so the limit spares statting every file (0.6 s for 4,500 local files), which the
    # pipeline's own match does again anyway.
    return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
  except Exception as error:  # pylint: disable=broad-except  # any failure to list
    raise InvocationError(f"cannot list {what} {pattern!r}: {error}") from error


def _check_input(pattern: str, what: str = "input") -> None:
  # A folder named without a glob would be one input (a local folder, refused as not a regular
  # file) or none (an object-store prefix). Which of its files are meant is the user's to say:
  # a dataset folder often holds labels or notes beside the images.
  # ('folder/', with its slash, Beam itself lists as the folder's files.)
  plain_name = not sources.has_glob(pattern) and not pattern.endswith("/")
  names_a_folder = InvocationError(
    f"{what} {pattern!r} is a folder: give a glob of the files to read, such as "
    f"{pattern + '/*'!r} or {pattern + '/**'!r}"
  )
  if plain_name and "://" not in pattern and os.path.isdir(pattern):
    raise names_a_folder
  if not _matches_anything(pattern, what):
    if plain_name and _matches_anything(pattern + "/*", what):  # an object-store prefix
      raise names_a_folder
    raise InvocationError(f"no {what} matched {pattern!r}")


def _read_model(model_dir: Optional[str]) -> tuple[str, export_lib.ModelMetadata]:
  try:
    model_dir = model_dir or defaults.default_model_dir()
    return model_dir, model_files.read_metadata(model_dir)
  except Exception as error:  # pylint: disable=broad-except  # unreadable in any way
    raise InvocationError(f"model unreadable: {error}") from error


def _check_model(model_dir: str, *, trust: bool) -> None:
  """Refuses an export whose graph reaches outside the model (unless trusted) or whose files
  are not whole, before anything is written. A remote export is checked in the local copy the
  workers of this process then load."""
  try:
    local_dir = model_files.local_model_dir(model_dir)
  except Exception as error:  # pylint: disable=broad-except  # unreadable in any way
    raise InvocationError(f"model unreadable: {error}") from error
  try:
    model_safety.check_saved_model(local_dir, trust=trust)
    model_safety.check_export_readable(local_dir)
  except ValueError as error:  # UnsafeModelError, DamagedExportError
    raise InvocationError(str(error).replace(local_dir, model_dir.rstrip("/"))) from error


def _prepare_output(output: str, overwrite: bool) -> None:
  """Refuses to mix runs in one folder unless --overwrite, then checks it is writable."""
  previous = sinks.entries_present(output)
  if previous and not overwrite:
    raise InvocationError(
      f"{output} already holds a run ({', '.join(previous)}); pass "
      "--overwrite to replace it or choose another --output"
    )
  try:
    if previous:
      FileSystems.delete([FileSystems.join(output, entry) for entry in previous])
    if not FileSystems.exists(output):
      FileSystems.mkdirs(output)
    probe = FileSystems.join(output, ".segbeam-write-check")
    with FileSystems.create(probe) as f:
      f.write(b"ok")
    FileSystems.delete([probe])
  except Exception as error:  # pylint: disable=broad-except  # any reason it is not writable
    raise InvocationError(f"output not writable: {output}: {error}") from error


def _same_place(a: str, b: str) -> bool:
  if FileSystems.get_scheme(a) is None and FileSystems.get_scheme(b) is None:
    return os.path.abspath(a) == os.path.abspath(b)
  return a.rstrip("/") == b.rstrip("/")


def _check_skip_existing(
  previous_outputs: Sequence[str], output: str, *, check_paths: bool
) -> None:
  """Each --skip-existing folder must hold a completed run, and must not be --output (which
  --overwrite would delete before it is read)."""
  for previous in previous_outputs:
    if _same_place(previous, output):
      raise InvocationError(
        f"--skip-existing {previous} is the --output folder itself; write "
        "the resumed run to a new --output"
      )
    if check_paths:
      try:
        resume.segment_files(previous)
      except resume.NotACompletedRunError as error:
        raise InvocationError(str(error)) from error
      except Exception as error:  # pylint: disable=broad-except  # unreadable in any way
        raise InvocationError(
          f"--skip-existing {previous}: cannot read its manifest: {error}"
        ) from error


def run_parser() -> argparse.ArgumentParser:
  # No prefix matching: '--label team=a' (Beam's Dataflow job label) would be taken for one of
  # segbeam's --label-* options, and '--mask-file' quietly for '--mask-files'.
  parser = argparse.ArgumentParser(
    prog="segbeam run",
    allow_abbrev=False,
    description="Segment images with a U-Net on Apache Beam. Options not listed here are "
    "Beam pipeline options (--runner, --direct_num_workers, ...).",
  )
  options_lib.add_arguments(parser)
  return parser


def beam_parser() -> argparse.ArgumentParser:
  """The parser Beam's PipelineOptions reads its options with: every option of every
  PipelineOptions class imported (Beam's and any the user's code defines)."""
  parsers = []
  PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
  return parsers[0]


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
  return [
    option
    for action in parser._actions  # pylint: disable=protected-access
    for option in action.option_strings
  ]


def check_beam_args(beam_args: Sequence[str], ours: Sequence[str] = ()) -> None:
  """Raises ValueError for an argument neither segbeam (`ours`: its option strings) nor Beam
  knows: Beam would drop it with a warning, and the run go on without what was asked."""
  parser = beam_parser()
  _, unknown = parser.parse_known_args(list(beam_args))
  if not unknown:
    return
  word = next((w for w in unknown if w.startswith("-")), unknown[0])
  if not word.startswith("-"):
    raise ValueError(f"unexpected argument {word!r}: every value follows its --option")
  name = word.split("=", 1)[0]
  known = [*ours, *(o for o in option_strings(parser) if o.startswith("--"))]
  close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
  raise ValueError(
    f"unknown option {name}: neither segbeam's nor a Beam pipeline option"
    + (f"; did you mean {close[0]}?" if close else "")
  )


def _check_job_labels(beam_args: Sequence[str]) -> None:
  """Beam's --labels sets Dataflow job labels; before segbeam's ground truth became
  --ground-truth, `--labels 'trimaps/*.png'` meant label images, which must not pass silently
  as a job label."""
  for i, word in enumerate(beam_args):
    name, has_value, value = word.partition("=")
    if name not in ("--labels", "--label"):
      continue
    value = value if has_value else (beam_args[i + 1] if i + 1 < len(beam_args) else "")
    if "=" not in value and not value.lstrip().startswith("{"):
      raise ValueError(
        f"{name} {value!r}: {name} is Beam's, Dataflow job labels as KEY=VALUE "
        "or JSON; ground-truth label images are --ground-truth GLOB"
      )


def parse(
  argv: Optional[Sequence[str]], *, check_beam: bool = True, other_options: Sequence[str] = ()
) -> tuple[options_lib.RunOptions, list[str]]:
  """`segbeam run`'s options, and the rest, for Beam.

  Args:
    check_beam: refuse what Beam does not know either (off for the Flex Template's launcher,
      which is handed Dataflow's own arguments).
    other_options: the caller's own options (`segbeam submit`'s), for suggestions.
  """
  parser = run_parser()
  options_lib.check_patterns_given_once(sys.argv[1:] if argv is None else argv)
  args, beam_args = parser.parse_known_args(argv)
  _check_job_labels(beam_args)
  if check_beam:
    check_beam_args(
      beam_args, [*other_options, *(o for o in option_strings(parser) if o.startswith("--"))]
    )
  return options_lib.from_args(args), beam_args


def run(
  argv: Optional[Sequence[str]] = None,
  test_pipeline: Optional[beam.Pipeline] = None,
  *,
  check_paths: bool = True,
  worker_model_dir: Optional[str] = None,
  check_beam: bool = True,
) -> beam.PCollection:
  """Builds the run into `test_pipeline` (the caller runs it), or into a new pipeline that is
  run here to completion. Returns the manifest PCollection.

  Args:
    argv: `segbeam run`'s options; the rest are Beam's (ignored with `test_pipeline`).
    test_pipeline: a pipeline to build into; the caller runs it (`segbeam submit` passes its
      Dataflow pipeline here).
    check_paths: list the input and labels, check a remote model's files (a local one's are
      always checked) and prepare the output folder first. Off for a Dataflow dry run, which
      builds the job offline, where gs:// cannot be reached.
    worker_model_dir: where the workers load the model, when not where its metadata is read
      here (the worker image's copy of the embedded model on Dataflow).
    check_beam: refuse options neither segbeam nor Beam knows (see `parse`).
  """
  try:
    options, beam_args = parse(argv, check_beam=check_beam)
    model_dir, metadata = _read_model(options.model_dir)
    segment_pipeline.label_map_for(options, metadata)  # a bad --label-map fails here, not later
  except ValueError as error:  # a bad option value
    raise InvocationError(str(error)) from error
  if check_paths or model_files.is_local(model_dir):  # a dry run reaches no gs:// path
    _check_model(model_dir, trust=options.trust_model)
  _check_skip_existing(options.skip_existing, options.output, check_paths=check_paths)
  if check_paths:
    _check_input(options.input)
    if options.labels:
      _check_input(options.labels, what="label")
    _prepare_output(options.output, options.overwrite)
  model_dir = worker_model_dir or model_dir
  if test_pipeline is not None:
    return segment_pipeline.build_pipeline(test_pipeline, options, metadata, model_dir)
  pipeline_options = beam_pipeline_options(beam_args)
  in_this_process = runs_in_this_process(pipeline_options)
  if in_this_process:
    preload = inference.preloaded(
      options.handler, model_dir, warm_up_size=metadata.input_size, trust_model=options.trust_model
    )
  else:
    sessions.drop_early()  # loaded for nothing: the workers are other processes
    preload = contextlib.nullcontext()
  with preload:
    pipeline = beam.Pipeline(options=pipeline_options)
    manifest = segment_pipeline.build_pipeline(
      pipeline, options, metadata, model_dir, spread_files=not in_this_process
    )
    startup.started()
    pipeline.run().wait_until_finish()
  return manifest


def print_report(output: str, examples: int = 5) -> None:
  """Where the output is, the counts, and the coverage figures of the images where the model's
  first class (the pet, for the default model) covers most."""
  import pyarrow.parquet as pq

  manifest = sinks.read_manifest(output)
  if manifest is None:
    print(f"no manifest in {output}: the run did not complete", file=sys.stderr)
    return
  counts = manifest["counts"]
  skipped = counts.get("skipped_existing", 0)
  print(
    f"segbeam run {manifest['run_id']}: {counts['inputs_seen']} inputs, "
    f"{counts['segmented']} segmented, {counts['failed']} failed"
    + (f", {skipped} skipped (segmented before)" if skipped else "")
  )
  for reason in counts["failed_by_reason"]:
    print(f"  failed at {reason['stage']}: {reason['error_type']} x{reason['count']}")
  mask_files = ", masks/*.png" if manifest["options"]["mask_files"] else ""
  print(f"output: {output}/segments/*.parquet, errors/*.parquet{mask_files}, manifest.json")
  class_names = manifest["model"]["class_names"]
  from segbeam.pipeline import schema

  columns = ["image_id", "dominant_class"] + [
    f"coverage_{s}" for s in schema.class_columns(class_names)
  ]
  rows = []
  for path in manifest["files"][sinks.SEGMENTS_DIR]:
    with FileSystems.open(path) as f:
      rows.extend(pq.read_table(f, columns=columns).to_pylist())
  if not rows:
    return
  suffixes = schema.class_columns(class_names)
  rows.sort(key=lambda row: -row[f"coverage_{suffixes[0]}"])
  print(f"images with the most {class_names[0]}:")
  for row in rows[:examples]:
    figures = "  ".join(
      f"{name} {row[f'coverage_{s}']:6.1%}" for name, s in zip(class_names, suffixes)
    )
    print(f"  {row['image_id']:<28s} {figures}  (dominant: {row['dominant_class']})")


DEMO_OUTPUT = "runs/demo"


def demo_input() -> str:
  """The photos scikit-image ships in its wheel (a cat among them): real images for a first run
  without committing anyone's photos."""
  try:
    import skimage
  except ImportError as error:
    raise InvocationError(
      "the demo reads scikit-image's sample photos: pip install 'segbeam[demo]'"
    ) from error
  return os.path.join(os.path.dirname(skimage.__file__), "data", "*.[pj][pn]g")


def demo_main(argv: Optional[Sequence[str]] = None) -> int:
  """`segbeam demo`: the main job on the embedded default model and sample photos."""
  argv = list(argv or [])
  if "--output" not in argv:
    argv += ["--output", DEMO_OUTPUT]
  try:
    pattern = demo_input()
  except InvocationError as error:
    print(f"segbeam demo: {error}", file=sys.stderr)
    return 2
  print(f"segmenting {pattern} with the embedded default model", flush=True)
  return main(["--input", pattern, "--overwrite", *argv])


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
  # Beam logs the traceback of an exception leaving a DoFn before re-raising it; for Ctrl-C
  # that is a page of stack frames where one line says what happened.
  return not (
    record.exc_info and record.exc_info[1] is not None and interrupted(record.exc_info[1])
  )


def interruption_message(output: str) -> str:
  """What Ctrl-C left in `output`: as it was, an unfinished run, or nothing."""
  written = sinks.entries_present(output)
  if sinks.MANIFEST_FILE in written:  # before this run prepared the folder: it is untouched
    return f"interrupted; {output} is as it was"
  if written:
    return (
      f"interrupted; {output} holds an unfinished run (no manifest.json): run again with "
      "--overwrite"
    )
  return "interrupted before anything was written"


def _interrupted_exit(output: str) -> int:
  print(f"segbeam run: {interruption_message(output)}", file=sys.stderr)
  return startup.INTERRUPTED_EXIT


def main(argv: Optional[Sequence[str]] = None) -> int:
  # segbeam's own progress lines, without Beam's and TensorFlow's INFO chatter.
  logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
  logging.getLogger("segbeam").setLevel(logging.INFO)
  logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tfx-bsl's deprecation notices
  logging.getLogger().addFilter(_not_beams_false_resource_warning)
  for handler in logging.getLogger().handlers:  # records from every logger pass these
    handler.addFilter(_not_an_interrupt)
  try:
    options, _ = parse(argv)
  except ValueError as error:
    print(f"segbeam run: {error}", file=sys.stderr)
    return 2
  try:
    run(argv)
  except InvocationError as error:
    print(f"segbeam run: {error}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return _interrupted_exit(options.output)
  except Exception as error:  # pylint: disable=broad-except  # the job failed: say so, exit 1
    if interrupted(error):
      return _interrupted_exit(options.output)
    logging.getLogger(__name__).exception("the run failed")
    reason = records.one_line(error, limit=500)
    print(
      f"segbeam run: the run failed, no manifest was written in {options.output}: "
      f"{type(error).__name__}: {reason}",
      file=sys.stderr,
    )
    return 1
  print_report(options.output)
  return 0
