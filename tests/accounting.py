"""What every end-to-end test checks of a run's output: nothing lost, nothing doubled."""

from __future__ import annotations

import collections
import posixpath
from typing import Any, Optional

from apache_beam.testing.test_pipeline import TestPipeline

from segbeam import options as options_lib
from segbeam.pipeline import layout
from segbeam.results import output as output_lib
from segbeam.run import job


def assert_accounted_for(output: str, *, inputs_seen: Optional[int] = None) -> dict[str, Any]:
  """Asserts that the completed run in `output` (local or gs://) accounts for every input
  exactly once; returns its manifest.

  Checked independently of the pipeline's own check, on what a reader of the folder sees:
  - the manifest exists and its conservation check holds;
  - the rows of segments/ and errors/ plus the skipped inputs equal the inputs seen (and those
    gone since an earlier attempt made their rows), and equal the manifest's counts;
  - those folders hold exactly the Parquet files the manifest names: nothing left by a failed
    or retried attempt;
  - no image id is in both tables or twice in one;
  - with --mask-files, masks/ holds one file per segments row, named after its id, with the
    row's mask, and nothing else;
  - the run's claim on the folder and its journal are gone.
  """
  run = output_lib.RunOutput(output)  # raises when there is no manifest
  manifest = run.manifest
  counts, conservation = manifest["counts"], manifest["conservation"]
  assert conservation["holds"], conservation
  skipped = counts.get("skipped_existing", 0)
  segments = run.dataset("segments").to_table(columns=["image_id", "mask_png"]).to_pylist()
  errors = run.dataset("errors").to_table(columns=["image_id"]).to_pylist()
  assert len(segments) == counts["segmented"] == conservation["segmented"]
  assert len(errors) == counts["failed"] == conservation["failed"]
  # Inputs gone since an earlier attempt made their rows (`--resume`) keep those rows.
  gone = counts.get("resumed_inputs_gone", 0)
  assert len(segments) + len(errors) + skipped == counts["inputs_seen"] + gone
  if inputs_seen is not None:
    assert counts["inputs_seen"] == inputs_seen, (counts, inputs_seen)
  for table in (layout.SEGMENTS_DIR, layout.ERRORS_DIR):
    named = sorted(f"{table}/{posixpath.basename(path)}" for path in manifest["files"][table])
    assert run.files(table) == named, (table, run.files(table), named)
  ids = collections.Counter(row["image_id"] for row in segments + errors)
  doubled = [image_id for image_id, count in ids.items() if count > 1]
  assert not doubled, f"image ids in more than one row: {doubled[:10]}"
  masks = run.files(layout.MASKS_DIR)
  if manifest["options"].get("mask_files"):
    expected = {
      f"{layout.MASKS_DIR}/{layout.mask_file_name(row['image_id'])}": row["mask_png"]
      for row in segments
    }
    assert masks == sorted(expected) and manifest["files"][layout.MASKS_DIR] == len(expected)
    for path, mask in expected.items():
      assert run.read_bytes(path) == mask, path
  else:
    assert masks == []
  assert run.files(layout.JOURNAL_DIR) == []
  assert output_lib.unfinished(output) is None  # no claim left either
  return manifest


def run_and_account(argv: list[str], *, inputs_seen: Optional[int] = None) -> dict[str, Any]:
  """`segbeam run`'s pipeline for `argv` (its --output included) built into a TestPipeline and
  run here; then `assert_accounted_for` on that output. Returns the manifest."""
  pipeline = TestPipeline()
  job.add_to(pipeline, options_lib.parse_args(argv)[0])
  pipeline.run().wait_until_finish()
  return assert_accounted_for(argv[argv.index("--output") + 1], inputs_seen=inputs_seen)
