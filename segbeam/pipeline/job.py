"""A run, from its options to its output: checked, built into a pipeline, and run.

`run` is `segbeam run` (a new pipeline, run here to completion); `add_to` builds the same run
into a pipeline the caller runs (`segbeam submit` and the Flex Template, with Dataflow's
options). Both check the invocation first (`prepare`): a bad model, input or output is one
`InvocationError`, before anything is written.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from segbeam import startup
from segbeam.model import contract
from segbeam.model import defaults
from segbeam.model import model_safety
from segbeam.pipeline import beam_options
from segbeam.pipeline import model_files
from segbeam.pipeline import options as options_lib
from segbeam.pipeline import resume
from segbeam.pipeline import sessions
from segbeam.pipeline import sinks
from segbeam.pipeline import sources
from segbeam.pipeline import transforms


class InvocationError(Exception):
  """A bad invocation: reported as one line, exit code 2, nothing run."""


def _matches_anything(pattern: str, what: str) -> bool:
  try:
    # One match is enough to know the pattern matches anything; Beam's file systems list
    # lazily, so the limit spares statting every file, which the pipeline's own match does
    # again anyway.
    return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
  except Exception as error:  # any failure to list
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


def _read_model(model_dir: Optional[str]) -> tuple[str, contract.ModelMetadata]:
  try:
    model_dir = model_dir or defaults.default_model_dir()
    return model_dir, model_files.read_metadata(model_dir)
  except Exception as error:  # unreadable in any way
    raise InvocationError(f"model unreadable: {error}") from error


def _check_model(model_dir: str, *, trust: bool) -> None:
  """Refuses an export whose graph reaches outside the model (unless trusted) or whose files
  are not whole, before anything is written. A remote export is checked in the local copy the
  workers of this process then load."""
  try:
    local_dir = model_files.local_model_dir(model_dir)
  except Exception as error:  # unreadable in any way
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
  except Exception as error:  # any reason it is not writable
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
      except Exception as error:  # unreadable in any way
        raise InvocationError(
          f"--skip-existing {previous}: cannot read its manifest: {error}"
        ) from error


def prepare(
  options: options_lib.RunOptions, *, check_paths: bool = True
) -> tuple[str, contract.ModelMetadata]:
  """Checks the run before anything is built: the model (its metadata, graph and files), the
  label map, --skip-existing, and with `check_paths` that the input and ground truth match
  files and the output folder is free and writable (which prepares it). Returns the model's
  directory and metadata; raises InvocationError.

  Args:
    check_paths: off for a Dataflow dry run, which builds the job offline, where gs:// cannot
      be reached (a local model is checked all the same).
  """
  model_dir, metadata = _read_model(options.model_dir)
  try:
    transforms.label_map_for(options.label_map, metadata)  # a bad --label-map fails here
  except ValueError as error:
    raise InvocationError(str(error)) from error
  if check_paths or model_files.is_local(model_dir):
    _check_model(model_dir, trust=options.trust_model)
  _check_skip_existing(options.skip_existing, options.output, check_paths=check_paths)
  if check_paths:
    _check_input(options.input)
    if options.labels:
      _check_input(options.labels, what="label")
    _prepare_output(options.output, options.overwrite)
  return model_dir, metadata


def add_to(
  pipeline: beam.Pipeline,
  options: options_lib.RunOptions,
  *,
  check_paths: bool = True,
  worker_model_dir: Optional[str] = None,
  distributed: bool = True,
) -> beam.PCollection:
  """Checks the run (`prepare`) and builds it into `pipeline`, which the caller runs. Returns
  the manifest PCollection.

  Args:
    check_paths: see `prepare`.
    worker_model_dir: where the workers load the model, when not where its metadata is read
      here (the worker image's copy of the embedded model on Dataflow).
    distributed: whether the runner spreads the work over workers (`build_pipeline`).
  """
  model_dir, metadata = prepare(options, check_paths=check_paths)
  return transforms.build_pipeline(
    pipeline, options, metadata, worker_model_dir or model_dir, distributed=distributed
  )


def run(options: options_lib.RunOptions, beam_args: Sequence[str] = ()) -> None:
  """Checks the run, builds it into a new pipeline with Beam's options `beam_args` (on
  `beam_options.DEFAULT_LOCAL_RUNNER` unless they name a runner) and runs it to completion.
  A session `sessions.load_early` started for the model is used where the runner runs the
  model in this process, and dropped otherwise."""
  model_dir, metadata = prepare(options)
  pipeline_options = beam_options.pipeline_options(beam_args)
  in_this_process = beam_options.runs_in_this_process(pipeline_options)
  if not in_this_process:
    sessions.drop_early()  # loaded for nothing: the workers are other processes
  pipeline = beam.Pipeline(options=pipeline_options)
  transforms.build_pipeline(pipeline, options, metadata, model_dir, distributed=not in_this_process)
  startup.started()
  pipeline.run().wait_until_finish()
