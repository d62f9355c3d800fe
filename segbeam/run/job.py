"""A run, from its options to its output: checked, built into a pipeline, and run.

`run` is `segbeam run` (a new pipeline, run here to completion); `add_to` builds the same run
into a pipeline the caller runs (`segbeam submit` and the Flex Template, with Dataflow's
options). Both check the invocation first (`prepare`): a bad model, input or output is one
`exits.InvocationError`, before anything is written.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
import uuid
from typing import Any, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from segbeam import exits
from segbeam import options as options_lib
from segbeam import startup
from segbeam.model import contract
from segbeam.model import defaults
from segbeam.model import loading
from segbeam.model import model_safety
from segbeam.pipeline import layout
from segbeam.pipeline import model_files
from segbeam.pipeline import sessions
from segbeam.pipeline import sources
from segbeam.pipeline import tiled_inference
from segbeam.pipeline import transforms
from segbeam.run import beam_options
from segbeam.run import build
from segbeam.run import journal
from segbeam.run import output_claim
from segbeam.run import resume


def _matches_anything(pattern: str, what: str) -> bool:
  try:
    # One match is enough to know the pattern matches anything; Beam's file systems list
    # lazily, so the limit spares statting every file, which the pipeline's own match does
    # again anyway.
    return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
  except Exception as error:  # any failure to list
    raise exits.InvocationError(f"cannot list {what} {pattern!r}: {error}") from error


def _check_input(pattern: str, what: str = "input") -> None:
  # A folder named without a glob would be one input (a local folder, refused as not a regular
  # file) or none (an object-store prefix). Which of its files are meant is the user's to say:
  # a dataset folder often holds labels or notes beside the images.
  # ('folder/', with its slash, Beam itself lists as the folder's files.)
  plain_name = not sources.has_glob(pattern) and not pattern.endswith("/")
  names_a_folder = exits.InvocationError(
    f"{what} {pattern!r} is a folder: give a glob of the files to read, such as "
    f"{pattern + '/*'!r} or {pattern + '/**'!r}"
  )
  if plain_name and "://" not in pattern and os.path.isdir(pattern):
    raise names_a_folder
  if not _matches_anything(pattern, what):
    if plain_name and _matches_anything(pattern + "/*", what):  # an object-store prefix
      raise names_a_folder
    raise exits.InvocationError(f"no {what} matched {pattern!r}")


def _read_model(model_dir: Optional[str]) -> tuple[str, contract.ModelMetadata]:
  try:
    model_dir = model_dir or defaults.default_model_dir()
    return model_dir, model_files.read_metadata(model_dir)
  except Exception as error:  # unreadable in any way
    raise exits.InvocationError(f"model unreadable: {error}") from error


def _check_model(model_dir: str, *, trust: bool) -> None:
  """Refuses an export whose graph reaches outside the model (unless trusted) or whose files
  are not whole, before anything is written. A remote export is checked in the local copy the
  workers of this process then load."""
  try:
    local_dir = model_files.local_model_dir(model_dir)
  except Exception as error:  # unreadable in any way
    raise exits.InvocationError(f"model unreadable: {error}") from error
  try:
    loading.loadable(local_dir, trust_model=trust)
    model_safety.check_export_readable(local_dir)
  except ValueError as error:  # UnsafeModelError, DamagedExportError
    raise exits.InvocationError(str(error).replace(local_dir, model_dir.rstrip("/"))) from error


class NothingToResumeError(exits.InvocationError):
  """--resume, and the output folder holds a completed run."""


def fingerprint(options: options_lib.RunOptions, metadata: contract.ModelMetadata) -> dict:
  """What a run's rows depend on, by its option's name: every attempt at one output must
  agree on it (`--resume`). Batching, threads and the handler change how, not what. The model
  by its files too: another export whose segbeam_model.json claims the same name and version
  has other weights."""
  model_dir = options.model_dir or defaults.default_model_dir()
  return {
    **options_lib.fingerprint_values(options),
    "--model": f"{metadata.name} version {metadata.version}",
    "--model files": model_files.files_digest(model_files.local_model_dir(model_dir)),
  }


def _differences(theirs: dict, mine: dict) -> str:
  return ", ".join(
    f"{name} {theirs.get(name)!r} (this run: {mine[name]!r})"
    for name in mine
    if theirs.get(name) != mine[name]
  )


def _completed_differently(
  output: str, options: options_lib.RunOptions, metadata: contract.ModelMetadata
) -> str:
  """How the completed run in `output` made its masks otherwise than `options` would, by its
  manifest (its claim is gone): the model's version and `options_lib.mask_settings`."""
  manifest = layout.read_manifest(output) or {}
  theirs = options_lib.mask_settings(manifest.get("options", {}))
  theirs["the model"] = manifest.get("model", {}).get("version")
  mine = options_lib.mask_settings(dataclasses.asdict(options))
  mine["the model"] = metadata.version
  return _differences(theirs, mine)


def _check_writable(output: str) -> None:
  try:
    if not FileSystems.exists(output):
      try:
        FileSystems.mkdirs(output)
      except Exception:  # a run started beside this one may have made it just now
        if not FileSystems.exists(output):
          raise
    # Its own name: two runs started together each write and delete theirs.
    probe = FileSystems.join(output, f"{layout.WRITE_CHECK_PREFIX}{uuid.uuid4().hex[:12]}")
    with FileSystems.create(probe) as f:
      f.write(b"ok")
    FileSystems.delete([probe])
  except Exception as error:  # any reason it is not writable
    raise exits.InvocationError(f"output not writable: {output}: {error}") from error


def _claim_output(
  options: options_lib.RunOptions, metadata: contract.ModelMetadata
) -> list[dict[str, str]]:
  """Claims the output folder for this run (`output_claim`), or refuses in one line: it holds
  a run (unless --overwrite replaces it, or --resume continues an unfinished one), or another
  run claimed it first. Returns every attempt at this output, this one last."""
  output = options.output
  linked = output_claim.not_plain_entries(output)
  if linked:
    # What a run writes or deletes there would go through it, outside --output.
    raise exits.InvocationError(
      f"{FileSystems.join(output, linked[0])} is a link (or other special file), not the "
      "plain file or folder segbeam writes: remove it, or choose another --output"
    )
  try:
    held, token = output_claim.read_claim(output)
  except output_claim.UnreadableClaimError as error:
    if not options.overwrite:
      raise exits.InvocationError(f"{error}; pass --overwrite to replace the run there") from error
    held, token = None, error.token
  mine_print = fingerprint(options, metadata)
  # A resumed claim's attempts go on; any other run is the first attempt at its output.
  mine = output_claim.new_claim(
    options.run_id,
    options.started,
    tuple(sys.argv),
    mine_print,
    earlier=held if options.resume else None,
  )
  previous = [e for e in layout.entries_present(output) if e != layout.CLAIM_FILE]
  try:
    if options.resume:
      if layout.MANIFEST_FILE in previous:
        differs = _completed_differently(output, options, metadata)
        if differs:  # nothing to resume, and not what this command would have made either
          raise exits.InvocationError(
            f"--resume refused: {output} holds a completed run, made with {differs}"
          )
        raise NothingToResumeError(f"{output} holds a completed run: nothing to resume")
      if held is None:
        if previous:
          raise exits.InvocationError(
            f"--resume: {output} holds an unfinished run without a claim (written by an older "
            "segbeam), which cannot be resumed; pass --overwrite to replace it"
          )
        output_claim.claim(output, mine)  # nothing there yet: a first attempt
        return list(mine.attempts)
      differs = _differences(held.fingerprint, mine_print)
      if differs:
        raise exits.InvocationError(f"--resume refused: {output} was started with {differs}")
      if held.holder_running_here():
        raise exits.InvocationError(
          f"--resume refused: {output} is being written by {held.holder()}"
        )
      try:  # before the claim is taken over: a refused resume changes nothing
        journal.check_journal(output, held.attempts, (metadata.name, metadata.version))
      except journal.ForeignJournalError as error:
        raise exits.InvocationError(f"--resume refused: {error}") from error
      output_claim.take_over(output, token, mine)
      # Only the journal is durable: what the sinks of a killed attempt left is partial.
      layout.delete_entries(output, [layout.SEGMENTS_DIR, layout.ERRORS_DIR])
      layout.remove_partials(output)  # what a kill mid-write left
      return list(mine.attempts)
    if options.overwrite:
      if held is not None and held.holder_running_here():
        raise exits.InvocationError(
          f"--overwrite refused: {output} is being written by {held.holder()}"
        )
      foreign = output_claim.not_written_by_segbeam(output, claimed=token is not None)
      if foreign:
        shown = ", ".join(foreign[:5]) + (
          f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise exits.InvocationError(
          f"--overwrite refused: {output} holds what segbeam did not write ({shown}); it "
          "replaces only a segbeam run's own output: choose another --output"
        )
      if token is not None:
        output_claim.take_over(output, token, mine)
      else:
        output_claim.claim(output, mine)
      layout.delete_entries(output, previous)
      layout.remove_partials(output)
      return list(mine.attempts)
    if held is not None:
      raise exits.InvocationError(
        f"{output} is claimed by {held.holder()}: if that run stopped, run again with --resume "
        "to continue it or --overwrite to replace it"
      )
    if previous:
      raise exits.InvocationError(
        f"{output} already holds a run ({', '.join(previous)}); pass "
        "--overwrite to replace it or choose another --output"
      )
    output_claim.claim(output, mine)
    return list(mine.attempts)
  except output_claim.ClaimedError as error:  # another run came first
    raise exits.InvocationError(str(error)) from error


def _same_place(a: str, b: str) -> bool:
  if FileSystems.get_scheme(a) is None and FileSystems.get_scheme(b) is None:
    return os.path.realpath(a) == os.path.realpath(b)  # a link to a folder is that folder
  return a.rstrip("/") == b.rstrip("/")


def _check_skip_existing(
  previous_outputs: Sequence[str],
  output: str,
  *,
  check_paths: bool,
  mask_settings: Optional[dict[str, Any]] = None,
) -> None:
  """Each --skip-existing folder must hold a completed run, and must not be --output (which
  --overwrite would delete before it is read); with `mask_settings` (`options.mask_settings`
  of this run), its run must have made masks the same way (tiles, scale)."""
  for previous in previous_outputs:
    if _same_place(previous, output):
      raise exits.InvocationError(
        f"--skip-existing {previous} is the --output folder itself; write "
        "the resumed run to a new --output"
      )
    if check_paths:
      try:
        resume.segment_files(previous)
      except resume.NotACompletedRunError as error:
        raise exits.InvocationError(str(error)) from error
      except Exception as error:  # unreadable in any way
        raise exits.InvocationError(
          f"--skip-existing {previous}: cannot read its manifest: {error}"
        ) from error
      if mask_settings is not None:
        theirs = options_lib.mask_settings(layout.read_manifest(previous).get("options", {}))
        differs = _differences(theirs, mask_settings)
        if differs:
          raise exits.InvocationError(
            f"--skip-existing {previous}: its masks were made with {differs}: they are not "
            "this run's masks"
          )


def _holds_inputs(pattern: str, output: str) -> bool:
  """Whether `output` already holds files `pattern` matches (read as Beam reads a glob,
  `FileSystem.translate_pattern`), other than a run's own: then it is an input folder, though
  the pattern names it only through glob characters ('phot?s/*.png' and photos). A fresh or
  empty folder in a pattern's reach ('data/**/*.png' and data/out) holds none. Locally both
  are compared as absolute paths, and with links resolved."""
  own = sources.OwnFiles(output, pattern)
  if "://" in output or "://" in pattern:
    if "://" not in output or "://" not in pattern:
      return False
    listed = (m.path for m in sources.iter_matches(output.rstrip("/") + "/*"))
    patterns = [pattern]
  else:
    if not os.path.isdir(output):
      return False
    folder = os.path.abspath(output)
    listed = (os.path.join(folder, name) for name in os.listdir(folder))
    root = sources.pattern_root(pattern) or "./"
    rest = pattern[len(root) :]
    patterns = [
      os.path.join(os.path.abspath(root), rest),
      os.path.join(os.path.realpath(root), rest),
    ]
  compiled = [re.compile(FileSystem.translate_pattern(p)) for p in patterns]
  for path in listed:
    forms = (
      {path}
      if "://" in path
      else {path, os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))}
    )
    if not own.holds(path) and any(c.match(f) for c in compiled for f in forms):
      return True
  return False


def _check_output_apart(options: options_lib.RunOptions, *, check_paths: bool) -> None:
  """Refuses an --output that is a folder the input (or ground-truth) pattern lists: the run's
  files would sit among the inputs, and no later --overwrite could tell them apart: the
  pattern's folder before its first glob character, or, with `check_paths` (a dry run lists
  nothing), a folder holding files it matches ('phot?s/*.png' lists photos). (A new output
  deeper in a pattern's reach, 'photos/**' and photos/out, is fine: the run's own files are
  left out of its listing, `sources.OwnFiles`.)"""
  for flag, pattern, what in (
    ("--input", options.input, "input"),
    ("--ground-truth", options.ground_truth, "ground-truth"),
  ):
    if pattern and (
      _same_place(sources.pattern_root(pattern) or ".", options.output)
      or (check_paths and _holds_inputs(pattern, options.output))
    ):
      such_as = f"such as {FileSystems.join(options.output, 'segbeam')}"
      raise exits.InvocationError(
        f"--output {options.output} is the {what} folder ({flag} {pattern}): an output folder "
        f"holds only what segbeam writes; give the run a new folder of its own, {such_as}"
      )


def _bounded_segments_files(options: options_lib.RunOptions) -> options_lib.RunOptions:
  """`options` with --segments-files lowered to the number of input files where fewer match:
  Beam writes every one of the N files, empty or not. Counts at most N files, one by one as
  they are listed, and not the run's own (`sources.OwnFiles`)."""
  wanted = options.segments_files
  if wanted <= 1:
    return options
  try:
    inputs = itertools.islice(sources.input_matches(options.input, options.output), wanted)
    found = sum(1 for _ in inputs)
  except Exception as error:  # any failure to list
    raise exits.InvocationError(f"cannot list input {options.input!r}: {error}") from error
  if 0 < found < wanted:
    return dataclasses.replace(options, segments_files=found)
  return options


class Prepared(NamedTuple):
  model_dir: str
  metadata: contract.ModelMetadata
  attempts: list[dict[str, str]]  # at this output, this run's last (`output_claim.Claim`)
  # The options the run goes with: --segments-files bounded by the inputs (`prepare`).
  options: options_lib.RunOptions


def prepare(options: options_lib.RunOptions, *, check_paths: bool = True) -> Prepared:
  """Checks the run before anything is built: the model (its metadata, graph and files), the
  label map, the tiles, --skip-existing, and with `check_paths` that the input and ground truth
  match files and the output folder is writable and free (or resumed, or overwritten), which
  claims it (`output_claim`), and --segments-files is no more than the input files. Raises
  exits.InvocationError.

  Args:
    check_paths: off for a Dataflow dry run, which builds the job offline, where gs:// cannot
      be reached (a local model is checked all the same).
  """
  model_dir, metadata = _read_model(options.model_dir)
  try:
    transforms.label_map_for(options.label_map, metadata)  # a bad --label-map fails here
    if options.tile is not None:  # and tiles the model cannot take
      tiled_inference.TileSettings.resolve(
        options.tile,
        options.tile_overlap,
        options.tile_blend,
        options.scale,
        metadata.serving_config,
      )
  except ValueError as error:
    raise exits.InvocationError(str(error)) from error
  if check_paths or model_files.is_local(model_dir):
    _check_model(model_dir, trust=options.trust_model)
  _check_skip_existing(
    options.skip_existing,
    options.output,
    check_paths=check_paths,
    mask_settings=options_lib.mask_settings(dataclasses.asdict(options)),
  )
  _check_output_apart(options, check_paths=check_paths)
  if check_paths:
    _check_input(options.input)
    if options.ground_truth:
      _check_input(options.ground_truth, what="label")
    options = _bounded_segments_files(options)
    _check_writable(options.output)
    attempts = _claim_output(options, metadata)
  else:
    attempts = [{"run_id": options.run_id, "started": options.started}]
  return Prepared(model_dir, metadata, attempts, options)


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
  prepared = prepare(options, check_paths=check_paths)
  return build.build_pipeline(
    pipeline,
    prepared.options,
    prepared.metadata,
    worker_model_dir or prepared.model_dir,
    distributed=distributed,
    attempts=prepared.attempts,
  )


def run(options: options_lib.RunOptions, beam_args: Sequence[str] = ()) -> None:
  """Checks the run, builds it into a new pipeline with Beam's options `beam_args` (on
  `beam_options.DEFAULT_LOCAL_RUNNER` unless they name a runner) and runs it to completion.
  A session `sessions.load_early` started for the model is used where the runner runs the
  model in this process, and dropped otherwise."""
  prepared = prepare(options)
  pipeline_options = beam_options.pipeline_options(beam_args)
  in_this_process = beam_options.runs_in_this_process(pipeline_options)
  if not in_this_process:
    sessions.drop_early()  # loaded for nothing: the workers are other processes
  pipeline = beam.Pipeline(options=pipeline_options)
  build.build_pipeline(
    pipeline,
    prepared.options,
    prepared.metadata,
    prepared.model_dir,
    distributed=not in_this_process,
    attempts=prepared.attempts,
  )
  startup.started()
  pipeline.run().wait_until_finish()
