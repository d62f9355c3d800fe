"""The journal: rows written a few at a time as they pass, read back one per image."""

from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from segbeam.pipeline import elements
from segbeam.pipeline import layout
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import schema
from segbeam.run import journal


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
          journal.stamp("run-a", "t0", "tiny", "v1"),
          3,
          to_row=lambda f: rows_lib.failure_row(f, "run-a"),
        )
      )
    )
    assert_that(passed, equal_to(failures))
  files = glob.glob(os.path.join(output, layout.JOURNAL_DIR, journal.ERRORS, "run-a-*.parquet"))
  sizes = sorted(pq.read_metadata(f).num_rows for f in files)
  assert sum(sizes) == 7 and max(sizes) <= 3 and sizes.count(3) >= 1, sizes
  rows = pa.concat_tables(pq.read_table(f) for f in files).to_pylist()
  assert sorted(r["image_id"] for r in rows) == [f"img{i}" for i in range(7)]
  assert {r["run_id"] for r in rows} == {"run-a"}
  # Each file names the attempt that wrote it, and its model.
  stamps = {pq.read_metadata(f).metadata[journal.STAMP_KEY] for f in files}
  assert [json.loads(s) for s in stamps] == [journal.stamp("run-a", "t0", "tiny", "v1")]
  # Nothing half-written is left beside them.
  assert not glob.glob(os.path.join(output, layout.JOURNAL_DIR, "*", ".*"))


MODEL = ("tiny", "v1")
ATTEMPTS = {run_id: {"run_id": run_id, "started": f"{run_id} started"} for run_id in ("r1", "r2")}


def _write_part(output: str, table: str, name: str, rows: list[dict], table_schema) -> str:
  """Writes rows as the journal file `name` (its run id, a '-', a letter made a file name
  `JournalRows` gives) stamped by that attempt; returns its path."""
  run_id, _, letter = name.removesuffix(".parquet").rpartition("-")
  attempt = ATTEMPTS.get(run_id, {"run_id": run_id, "started": "another time"})
  stamp = journal.stamp(run_id, attempt["started"], *MODEL)
  folder = os.path.join(output, layout.JOURNAL_DIR, table)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{run_id}-{letter * 32}.parquet")
  table_schema = table_schema.with_metadata({journal.STAMP_KEY: json.dumps(stamp)})
  pq.write_table(pa.Table.from_pylist(rows, table_schema), path)
  return path


def _segments_row(image_id: str, run_id: str) -> dict:
  names = ("pet", "background", "border")
  row = {field.name: None for field in schema.segments_schema(names)}
  return {
    **row,
    "image_id": image_id,
    "source": image_id,
    "run_id": run_id,
    "width": 4,
    "model_name": MODEL[0],
    "model_version": MODEL[1],
  }


def test_a_retried_bundles_rows_are_replayed_once_an_image_segments_first(tmp_path):
  """Two journal files of one attempt hold 'b' (a bundle that failed after writing its file,
  and its retry); 'c' failed in one and was segmented in the other."""
  output = str(tmp_path / "out")
  names = ("pet", "background", "border")
  segments_schema = schema.segments_schema(names)
  _write_part(
    output, journal.SEGMENTS, "r1-a.parquet",
    [_segments_row("a", "r1"), _segments_row("b", "r1")], segments_schema,
  )  # fmt: skip
  _write_part(
    output, journal.SEGMENTS, "r1-b.parquet",
    [_segments_row("b", "r1"), _segments_row("c", "r1")], segments_schema,
  )  # fmt: skip
  _write_part(output, journal.ERRORS, "r1-c.parquet", [_error_row("c"), _error_row("d")],
              schema.ERRORS_SCHEMA)  # fmt: skip
  # Another attempt's files and a file of an attempt not named are not read.
  _write_part(output, journal.SEGMENTS, "r2-a.parquet", [_segments_row("e", "r2")], segments_schema)
  _write_part(output, journal.SEGMENTS, "r9-a.parquet", [_segments_row("f", "r9")], segments_schema)

  with TestPipeline() as p:
    replayed = p | journal.ReplayJournal(
      output, [ATTEMPTS["r1"], ATTEMPTS["r2"]], MODEL, distributed=True
    )
    segments = replayed[journal.SEGMENTS] | "S" >> beam.Map(lambda r: r["image_id"])
    errors = replayed[journal.ERRORS] | "E" >> beam.Map(lambda r: r["image_id"])
    assert_that(segments, equal_to(["a", "b", "c", "e"]), label="segments")
    assert_that(errors, equal_to(["d"]), label="errors")

  with TestPipeline() as p:  # in one process no bundle is retried: every row as it is
    replayed = p | journal.ReplayJournal(output, [ATTEMPTS["r1"]], MODEL, distributed=False)
    segments = replayed[journal.SEGMENTS] | "S" >> beam.Map(lambda r: r["image_id"])
    ids = journal.journaled_ids(replayed) | "Ids" >> beam.Map(lambda kv: kv[0])
    assert_that(segments, equal_to(["a", "b", "b", "c"]), label="segments")
    assert_that(ids, equal_to(["a", "b", "b", "c", "c", "d"]), label="ids")


def test_only_files_of_the_attempts_with_their_rows_are_replayed_others_refuse(tmp_path):
  """`check_journal` (before a resume takes the folder over) and the replay itself: a file
  named for an attempt is read only when its stamp and every row are that attempt's, with this
  model; one of run ids that begin alike is no other's."""
  output = str(tmp_path / "out")
  segments_schema = schema.segments_schema(("pet", "background", "border"))
  attempts = [ATTEMPTS["r1"], {"run_id": "r1-b", "started": "r1-b started"}]
  ATTEMPTS["r1-b"] = attempts[1]
  try:
    _write_part(output, journal.SEGMENTS, "r1-a.parquet", [_segments_row("a", "r1")],
                segments_schema)  # fmt: skip
    _write_part(output, journal.SEGMENTS, "r1-b-a.parquet", [_segments_row("b", "r1-b")],
                segments_schema)  # fmt: skip
    _write_part(output, journal.ERRORS, "r1-b-b.parquet", [_error_row("c", "r1-b")],
                schema.ERRORS_SCHEMA)  # fmt: skip
  finally:
    del ATTEMPTS["r1-b"]
  journal.check_journal(output, attempts, MODEL)
  with TestPipeline() as p:
    replayed = p | journal.ReplayJournal(output, attempts, MODEL, distributed=False)
    ids = journal.journaled_ids(replayed) | "Ids" >> beam.Map(lambda kv: kv[0])
    assert_that(ids, equal_to(["a", "b", "c"]))

  folder = os.path.join(output, layout.JOURNAL_DIR, journal.SEGMENTS)
  other_model = {**_segments_row("d", "r1"), "model_version": "v2"}
  cases = [
    ([other_model], "r1-d.parquet", "model_version 'v2' (this run: 'v1')"),
    ([_segments_row("d", "r7")], "r1-d.parquet", "run_id 'r7' (this run: 'r1')"),
    # another run's file (run 'r3') named for 'r1'
    ([_segments_row("d", "r3")], "r3-d.parquet", "another run (run 'r3'"),
  ]
  for rows, name, what in cases:
    path = _write_part(output, journal.SEGMENTS, name, rows, segments_schema)
    planted = os.path.join(folder, f"r1-{'d' * 32}.parquet")
    os.replace(path, planted)
    with pytest.raises(journal.ForeignJournalError, match="r1-d+.parquet is not this run's") as e:
      journal.check_journal(output, attempts, MODEL)
    assert what in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
    with pytest.raises(Exception, match="is not this run's"):  # read later: the run fails
      with TestPipeline() as p:
        p | journal.ReplayJournal(output, attempts, MODEL, distributed=False)
    os.remove(planted)

  # No stamp, or a name no attempt gives: refused too, never quietly left out.
  pq.write_table(pa.Table.from_pylist([_segments_row("e", "r1")], segments_schema),
                 os.path.join(folder, f"r1-{'e' * 32}.parquet"))  # fmt: skip
  with pytest.raises(journal.ForeignJournalError, match="no segbeam journal stamp"):
    journal.check_journal(output, attempts, MODEL)
  os.remove(os.path.join(folder, f"r1-{'e' * 32}.parquet"))
  os.replace(_write_part(output, journal.SEGMENTS, "r1-f.parquet", [_segments_row("f", "r1")],
                         segments_schema), os.path.join(folder, "r1-extra.parquet"))  # fmt: skip
  with pytest.raises(journal.ForeignJournalError, match="named for run 'r1' but is none of"):
    journal.check_journal(output, attempts, MODEL)
