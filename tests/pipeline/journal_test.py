"""The journal: rows written a few at a time as they pass, read back one per image."""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from segbeam.pipeline import constants
from segbeam.pipeline import elements
from segbeam.pipeline import journal
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import schema


def _error_row(image_id: str, run_id: str = "r1", stage: str = "decode") -> dict:
  failure = elements.Failure(image_id, f"src/{image_id}", stage, "DecodeError", "bad bytes")
  return rows_lib.failure_row(failure, run_id)


def test_rows_pass_at_once_and_land_in_files_of_every_rows(tmp_path):
  output = str(tmp_path / "out")
  failures = [
    elements.Failure(f"img{i}", f"src/img{i}", "decode", "DecodeError", "bad") for i in range(7)
  ]
  with TestPipeline() as p:
    passed = (
      p
      | beam.Create(failures, reshuffle=False)
      | beam.ParDo(
        journal.JournalRows(
          output,
          journal.ERRORS,
          schema.ERRORS_SCHEMA,
          "run-a",
          3,
          to_row=lambda f: rows_lib.failure_row(f, "run-a"),
        )
      )
    )
    assert_that(passed, equal_to(failures))
  files = glob.glob(os.path.join(output, constants.JOURNAL_DIR, journal.ERRORS, "run-a-*.parquet"))
  sizes = sorted(pq.read_metadata(f).num_rows for f in files)
  assert sum(sizes) == 7 and max(sizes) <= 3 and sizes.count(3) >= 1, sizes
  rows = pa.concat_tables(pq.read_table(f) for f in files).to_pylist()
  assert sorted(r["image_id"] for r in rows) == [f"img{i}" for i in range(7)]
  assert {r["run_id"] for r in rows} == {"run-a"}
  # Nothing half-written is left beside them.
  assert not glob.glob(os.path.join(output, constants.JOURNAL_DIR, "*", ".*"))


def _write_part(output: str, table: str, name: str, rows: list[dict], table_schema) -> None:
  folder = os.path.join(output, constants.JOURNAL_DIR, table)
  os.makedirs(folder, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows, table_schema), os.path.join(folder, name))


def _segments_row(image_id: str, run_id: str) -> dict:
  names = ("pet", "background", "border")
  row = {field.name: None for field in schema.segments_schema(names)}
  return {**row, "image_id": image_id, "source": image_id, "run_id": run_id, "width": 4}


def test_a_retried_bundles_rows_are_replayed_once_an_image_segments_first(tmp_path):
  """Two journal files of one attempt hold 'b' (a bundle that failed after writing its file,
  and its retry); 'c' failed in one and was segmented in the other."""
  output = str(tmp_path / "out")
  names = ("pet", "background", "border")
  segments_schema = schema.segments_schema(names)
  _write_part(
    output, journal.SEGMENTS, "r1-x.parquet",
    [_segments_row("a", "r1"), _segments_row("b", "r1")], segments_schema,
  )  # fmt: skip
  _write_part(
    output, journal.SEGMENTS, "r1-y.parquet",
    [_segments_row("b", "r1"), _segments_row("c", "r1")], segments_schema,
  )  # fmt: skip
  _write_part(output, journal.ERRORS, "r1-z.parquet", [_error_row("c"), _error_row("d")],
              schema.ERRORS_SCHEMA)  # fmt: skip
  # Another attempt's files and a file of an attempt not named are not read.
  _write_part(output, journal.SEGMENTS, "r2-x.parquet", [_segments_row("e", "r2")], segments_schema)
  _write_part(output, journal.SEGMENTS, "r9-x.parquet", [_segments_row("f", "r9")], segments_schema)

  with TestPipeline() as p:
    replayed = p | journal.ReplayJournal(output, ["r1", "r2"], distributed=True)
    segments = replayed[journal.SEGMENTS] | "S" >> beam.Map(lambda r: r["image_id"])
    errors = replayed[journal.ERRORS] | "E" >> beam.Map(lambda r: r["image_id"])
    assert_that(segments, equal_to(["a", "b", "c", "e"]), label="segments")
    assert_that(errors, equal_to(["d"]), label="errors")

  with TestPipeline() as p:  # in one process no bundle is retried: every row as it is
    replayed = p | journal.ReplayJournal(output, ["r1"], distributed=False)
    segments = replayed[journal.SEGMENTS] | "S" >> beam.Map(lambda r: r["image_id"])
    ids = journal.journaled_ids(replayed) | "Ids" >> beam.Map(lambda kv: kv[0])
    assert_that(segments, equal_to(["a", "b", "b", "c"]), label="segments")
    assert_that(ids, equal_to(["a", "b", "b", "c", "c", "d"]), label="ids")
