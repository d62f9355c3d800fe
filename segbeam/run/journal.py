"""Rows made durable while a run goes, so that a killed run loses only the images in flight.

Beam's Parquet sink commits its files only when the whole run is done. So every segments row
and every error row is also written, a few batches at a time, to the run's journal:
OUTPUT/_journal/<table>/<run id>-<random>.parquet, each file written at once or not at all
(`sinks.write_file`). A run killed at any moment leaves its journal; `segbeam run --resume`
reads it back (`ReplayJournal`): the ids there are set aside right after reading
(`resume.SkipIds`), never decoded or inferred again, and the rows go to this attempt's sinks
beside the new ones. The manifest, written last, counts them as from earlier attempts; then
the journal is deleted.

A runner that retries a failed bundle (Dataflow) may leave two journal files holding one
image's row: the sinks take only the committed attempt's rows, but a resume reads the journal,
so there the replayed rows are made one per image (`ReplayJournal`'s `distributed`).

A resume replays only rows of this run: each journal file is stamped (its Parquet key-value
metadata) with the attempt that wrote it (run id and start, as the claim records attempts) and
its model, and every row is checked against them (`check_part`). A file named for one of the
claim's attempts that is not that attempt's, or holds rows of another model or run, refuses the
resume (`check_journal`, before anything is taken over) or fails it (the same check as the
rows are read, for a file that came later): its rows are never replayed, nor quietly dropped.
Since the claim's fingerprint equals this run's and every attempt it lists ran with it, rows of
those attempts are rows of this run's options; a journal left by an earlier run with the same
run id (one an --overwrite replaced) has another start.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import posixpath
import re
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from segbeam import options as options_lib
from segbeam.pipeline import layout
from segbeam.pipeline import sinks
from segbeam.pipeline import sources

SEGMENTS = layout.SEGMENTS_DIR
ERRORS = layout.ERRORS_DIR
RESUMED = "resumed"
# The Parquet key-value metadata of a journal file naming what wrote it (`stamp`).
STAMP_KEY = b"segbeam.journal"
# Files listed at once by `check_journal`: on an object store each is a few requests.
_CHECK_THREADS = 16


class ForeignJournalError(ValueError):
  """A journal file named for an attempt of this run holds what that attempt did not write."""


def stamp(run_id: str, started: str, model_name: str, model_version: str) -> dict[str, str]:
  """What a journal file records of the attempt that wrote it: run id and start (as the
  claim's attempts) and model."""
  return {
    "run_id": run_id,
    "started": started,
    "model_name": model_name,
    "model_version": model_version,
  }


def journal_dir(output: str) -> str:
  return FileSystems.join(output, layout.JOURNAL_DIR)


def parts_pattern(output: str, table: str, run_id: str) -> str:
  """The journal files one attempt (`run_id`) wrote for `table`. Raises ValueError for a run
  id that is not a plain name: it would name files outside the journal."""
  options_lib.check_run_id(run_id)
  return FileSystems.join(journal_dir(output), table, f"{run_id}-*.parquet")


class JournalRows(beam.DoFn):
  """Rows -> the same rows, at once; every `every` rows (and at the bundle's end) the rows so
  far are written to one journal file of `table`.

  Args:
    output: the run's output folder.
    table: SEGMENTS or ERRORS.
    schema: the table's Arrow schema.
    attempt: this attempt's `stamp`; its run id names the journal files.
    every: rows per journal file; with the rows in flight before it, what a kill may lose.
    to_row: element -> its row, where the elements are not rows yet.
  """

  def __init__(
    self,
    output: str,
    table: str,
    schema: pa.Schema,
    attempt: Mapping[str, str],
    every: int,
    to_row: Optional[Callable[[Any], Mapping[str, Any]]] = None,
  ):
    self._folder = FileSystems.join(journal_dir(output), table)
    self._schema = schema.with_metadata({STAMP_KEY: json.dumps(dict(attempt), sort_keys=True)})
    self._run_id = options_lib.check_run_id(attempt["run_id"])  # it names the files
    self._every = every
    self._to_row = to_row

  def start_bundle(self):
    self._rows: list[Mapping[str, Any]] = []

  def process(self, element) -> Iterator:
    self._rows.append(self._to_row(element) if self._to_row else element)
    if len(self._rows) >= self._every:
      self._flush()
    yield element

  def finish_bundle(self):
    if self._rows:
      self._flush()

  def _flush(self) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(self._rows, self._schema), buffer, compression="zstd")
    name = f"{self._run_id}-{uuid.uuid4().hex}.parquet"
    sinks.write_file(FileSystems.join(self._folder, name), buffer.getvalue())
    self._rows = []


def _image_id_key(row: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
  return row["image_id"], row


def _one_per_image(element: tuple[str, Mapping[str, Iterable]]) -> Iterator:
  """(image id, {SEGMENTS: rows, ERRORS: rows}) -> one row: a segments row where a retried
  bundle left one (the image was segmented), else an error row; the same one every time."""
  _, tables = element
  for table in (SEGMENTS, ERRORS):
    rows = sorted(tables[table], key=lambda row: (row["run_id"], repr(sorted(row.items()))))
    if rows:
      yield beam.pvalue.TaggedOutput(table, rows[0])
      return


# What each table's rows say of the run that made them (schema.py): an error row names no model,
# its file's stamp does.
_ROW_COLUMNS = {SEGMENTS: ("model_name", "model_version", "run_id"), ERRORS: ("run_id",)}


_PART_SUFFIX = len("-") + 32 + len(".parquet")  # after the run id, in a journal file's name


def _part_name_of(name: str, run_id: str) -> bool:
  """Whether `name` is a journal file name `JournalRows` gives for `run_id`: a listing of one
  run id's pattern also lists the files of a run id it begins ('a-*' lists 'a-b-...')."""
  return re.fullmatch(re.escape(run_id) + r"-[0-9a-f]{32}\.parquet", name) is not None


def _parts_of(run_id: str, output: str, table: str, run_ids: Sequence[str]) -> Iterator[str]:
  """The paths of `run_id`'s journal files of `table`; raises ForeignJournalError for a file its
  pattern lists that is no attempt's."""
  for metadata in sources.iter_matches(parts_pattern(output, table, run_id)):
    name = posixpath.basename(metadata.path)
    if _part_name_of(name, run_id):
      yield metadata.path
    elif not any(_part_name_of(name, other) for other in run_ids):
      raise ForeignJournalError(
        f"journal file {metadata.path} is named for run {run_id!r} but is none of its files; "
        "delete it, or pass --overwrite to start over"
      )


def _problems(
  table: str,
  named_for: str,
  written: Optional[bytes],
  rows: pa.Table,
  attempts: Sequence[Mapping[str, str]],
  model: tuple[str, str],
) -> list[str]:
  """What differs between a journal file named for the run id `named_for` (its stamp `written`
  and its `rows`) and this run: its `attempts` and `model` (name, version)."""
  if written is None:
    return ["it holds no segbeam journal stamp"]
  try:
    by = json.loads(written)
    run_id, started = str(by["run_id"]), str(by["started"])
    written_model = (str(by["model_name"]), str(by["model_version"]))
  except (ValueError, KeyError, TypeError):
    return [f"its journal stamp is unreadable: {written[:200]!r}"]
  problems = []
  if not any(a["run_id"] == named_for == run_id and a["started"] == started for a in attempts):
    ours = " or ".join(f"started {a['started']}" for a in attempts if a["run_id"] == named_for)
    problems.append(
      f"it was written by another run (run {run_id!r} started {started}; this run's attempt "
      f"{named_for!r}: {ours or 'none'})"
    )
  if written_model != model:
    problems.append(
      f"it was written with model {written_model[0]!r} version {written_model[1]!r} (this run: "
      f"{model[0]!r} version {model[1]!r})"
    )
  expected = {"model_name": model[0], "model_version": model[1], "run_id": named_for}
  for column in _ROW_COLUMNS[table]:
    others = [v for v in rows.column(column).unique().to_pylist() if v != expected[column]]
    if others:
      shown = ", ".join(repr(v) for v in others[:3]) + (", ..." if len(others) > 3 else "")
      problems.append(f"it holds rows of {column} {shown} (this run: {expected[column]!r})")
  return problems


def check_part(
  path: str,
  table: str,
  attempts: Sequence[Mapping[str, str]],
  model: tuple[str, str],
  *,
  all_columns: bool = False,
) -> pa.Table:
  """The rows of the journal file `path` of `table` (only the columns checked unless
  `all_columns`), once checked to be this run's: written by one of `attempts` with `model`
  (name, version), and every row saying so. Raises ForeignJournalError in one line naming the
  file and what differs."""
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      part = pq.ParquetFile(f)
      written = (part.metadata.metadata or {}).get(STAMP_KEY)
      rows = part.read(columns=None if all_columns else list(_ROW_COLUMNS[table]))
  except Exception as error:  # any file that is no readable journal file
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    problems = [f"it cannot be read as one: {reason}"]
  else:
    named_for = posixpath.basename(path)[:-_PART_SUFFIX]
    problems = _problems(table, named_for, written, rows, attempts, model)
  if problems:
    raise ForeignJournalError(
      f"journal file {path} is not this run's: {'; '.join(problems)}; delete it, or pass "
      "--overwrite to start over"
    )
  return rows


def check_journal(
  output: str, attempts: Sequence[Mapping[str, str]], model: tuple[str, str]
) -> None:
  """Checks every journal file of `attempts` in `output` (`check_part`) before a resume takes
  the folder over. Raises ForeignJournalError for the first one, in listing order, that is
  not this run's.

  Args:
    attempts: the claim's attempts so far, as {run_id, started}.
    model: this run's model (name, version).
  """
  run_ids = sorted({a["run_id"] for a in attempts})
  parts = [
    (path, table)
    for table in (SEGMENTS, ERRORS)
    for run_id in run_ids
    for path in _parts_of(run_id, output, table, run_ids)
  ]
  with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
    # map yields in order and raises the first failure in that order
    for _ in pool.map(lambda part: check_part(part[0], part[1], attempts, model), parts):
      pass


def _part_rows(
  path: str, table: str, attempts: Sequence[Mapping[str, str]], model: tuple[str, str]
) -> Iterator[dict[str, Any]]:
  # Checked again as read: a file that came after `check_journal` fails the run, unreplayed.
  yield from check_part(path, table, attempts, model, all_columns=True).to_pylist()


class ReplayJournal(beam.PTransform):
  """PBegin -> the journal rows of earlier attempts: {SEGMENTS: rows, ERRORS: rows}, each file
  checked to be this run's (`check_part`) as it is read.

  Args:
    output: the run's output folder.
    attempts: the earlier attempts (the claim's), as {run_id, started}.
    model: this run's model (name, version).
    distributed: whether the runner may have retried bundles (see the module's docstring):
      then the rows are grouped by image id and one per image is kept.
  """

  def __init__(
    self,
    output: str,
    attempts: Sequence[Mapping[str, str]],
    model: tuple[str, str],
    *,
    distributed: bool,
  ):
    super().__init__()
    self._output = output
    self._attempts = [dict(a) for a in attempts]
    self._model = tuple(model)
    self._distributed = distributed

  def _read(self, pbegin, table: str):
    # Each run id once: attempts resumed with one --run-id share their files' names.
    run_ids = sorted({a["run_id"] for a in self._attempts})
    parts = (
      pbegin
      | f"{table}RunIds" >> beam.Create(run_ids)
      | f"{table}Parts" >> beam.FlatMap(_parts_of, self._output, table, run_ids)
    )
    if self._distributed:
      parts = parts | f"{table}Spread" >> beam.Reshuffle()
    return parts | f"Read{table}" >> beam.FlatMap(_part_rows, table, self._attempts, self._model)

  def expand(self, pbegin):
    segments, errors = self._read(pbegin, SEGMENTS), self._read(pbegin, ERRORS)
    if not self._distributed:
      return {SEGMENTS: segments, ERRORS: errors}
    keyed = {
      SEGMENTS: segments | "SegmentsById" >> beam.Map(_image_id_key),
      ERRORS: errors | "ErrorsById" >> beam.Map(_image_id_key),
    }
    one = (
      keyed
      | "ById" >> beam.CoGroupByKey()
      | "OnePerImage" >> beam.FlatMap(_one_per_image).with_outputs(SEGMENTS, ERRORS)
    )
    return {SEGMENTS: one[SEGMENTS], ERRORS: one[ERRORS]}


def journaled_ids(replayed: Mapping[str, beam.PCollection]) -> beam.PCollection:
  """The replayed rows' image ids, as (id, None) for `resume.SkipIds`."""
  return (
    (replayed[SEGMENTS], replayed[ERRORS])
    | "JournaledRows" >> beam.Flatten()
    | "JournaledIds" >> beam.Map(_id_only)
  )


def _id_only(row: Mapping[str, Any]) -> tuple[str, None]:
  return row["image_id"], None


def _present(element) -> tuple[str, None]:
  return element.image_id, None


def _gone(element: tuple[str, Mapping[str, Iterable]]) -> Iterator[str]:
  image_id, sides = element
  if any(True for _ in sides["journal"]) and not any(True for _ in sides["inputs"]):
    yield image_id


class GoneInputs(beam.PTransform):
  """`journaled_ids` -> the ids, once each, of replayed rows whose input this attempt did not
  read: gone since an earlier attempt made its row. Their rows are kept (each was made while
  its input was there); the manifest counts them as `resumed_inputs_gone`, once per input, so
  that a row replayed twice for one still fails the conservation check.

  A join, not a side input of the inputs' ids: the reader's records wait on the journal's ids
  (`resume.SkipIds`), so a step on the journal's side waiting on the records would deadlock.

  Args:
    inputs: what this attempt's reader made of every input (records and read failures, each
      with an `image_id`), before any is set aside.
  """

  def __init__(self, inputs: Sequence[beam.PCollection]):
    super().__init__()
    self._inputs = list(inputs)

  def expand(self, journaled):
    listed = self._inputs | "AllInputs" >> beam.Flatten() | "InputIds" >> beam.Map(_present)
    return (
      {"journal": journaled, "inputs": listed}
      | "ById" >> beam.CoGroupByKey()
      | "NotListed" >> beam.FlatMap(_gone)
    )
