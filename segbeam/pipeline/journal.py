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
"""

from __future__ import annotations

import io
import uuid
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import parquetio
from apache_beam.io.filesystems import FileSystems

from segbeam.pipeline import constants
from segbeam.pipeline import sinks
from segbeam.pipeline import sources

SEGMENTS = constants.SEGMENTS_DIR
ERRORS = constants.ERRORS_DIR
RESUMED = "resumed"


def journal_dir(output: str) -> str:
  return FileSystems.join(output, constants.JOURNAL_DIR)


def parts_pattern(output: str, table: str, run_id: str) -> str:
  """The journal files one attempt (`run_id`) wrote for `table`."""
  return FileSystems.join(journal_dir(output), table, f"{run_id}-*.parquet")


class JournalRows(beam.DoFn):
  """Rows -> the same rows, at once; every `every` rows (and at the bundle's end) the rows so
  far are written to one journal file of `table`.

  Args:
    output: the run's output folder.
    table: SEGMENTS or ERRORS.
    schema: the table's Arrow schema.
    run_id: this attempt's run id, which names its journal files.
    every: rows per journal file; with the rows in flight before it, what a kill may lose.
    to_row: element -> its row, where the elements are not rows yet.
  """

  def __init__(
    self,
    output: str,
    table: str,
    schema: pa.Schema,
    run_id: str,
    every: int,
    to_row: Optional[Callable[[Any], Mapping[str, Any]]] = None,
  ):
    self._folder = FileSystems.join(journal_dir(output), table)
    self._schema = schema
    self._run_id = run_id
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


class ReplayJournal(beam.PTransform):
  """PBegin -> the journal rows of earlier attempts: {SEGMENTS: rows, ERRORS: rows}.

  Args:
    output: the run's output folder.
    run_ids: the earlier attempts' run ids (the claim's attempts).
    distributed: whether the runner may have retried bundles (see the module's docstring):
      then the rows are grouped by image id and one per image is kept.
  """

  def __init__(self, output: str, run_ids: Sequence[str], *, distributed: bool):
    super().__init__()
    self._output = output
    self._run_ids = list(run_ids)
    self._distributed = distributed

  def _read(self, pbegin, table: str):
    patterns = [parts_pattern(self._output, table, run_id) for run_id in self._run_ids]
    return (
      pbegin
      | f"{table}Patterns" >> beam.Create(patterns)
      # Each file's metadata as listed: ReadAllFromParquet would match a path again.
      | f"{table}Parts" >> beam.FlatMap(sources.iter_matches)
      | f"Read{table}" >> parquetio.ReadAllFromParquet()
    )

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
