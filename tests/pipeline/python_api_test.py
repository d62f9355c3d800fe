"""segbeam's transforms in a Beam pipeline written as a user writes one (docs/python-api.md):
records or a file pattern in, rows and failures out, written with segbeam's writers."""

import glob
import io

import apache_beam as beam
import duckdb
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from PIL import Image

from segbeam.pipeline import elements
from segbeam.pipeline import transforms as segbeam_transforms
from tests import synthetic


def _png(width: int, height: int, seed: int) -> bytes:
  return synthetic.encode(synthetic.pet_scene(width, height, seed)[0], "PNG")


def _mask_size(row) -> tuple[str, int, int, int]:
  mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
  return row["image_id"], row["width"], row["height"], mask.shape[1] * 1000 + mask.shape[0]


def test_records_in_rows_and_failures_out(tiny_export, tmp_path):
  export_dir, metadata = tiny_export
  output = str(tmp_path / "out")
  records = [
    elements.ImageRecord("cat.png", "memory://cat.png", _png(40, 30, 1)),
    elements.ImageRecord("dog.png", "memory://dog.png", _png(25, 50, 2)),
    elements.ImageRecord("notes.txt", "memory://notes.txt", b"not an image"),
  ]
  segment = segbeam_transforms.SegmentImages(export_dir, batch_size=2, run_id="my-run")
  with TestPipeline() as pipeline:
    segmented = pipeline | beam.Create(records) | segment
    assert_that(
      segmented.rows | beam.Map(_mask_size),
      equal_to([("cat.png", 40, 30, 40030), ("dog.png", 25, 50, 25050)]),
      label="Rows",
    )
    assert_that(
      segmented.failures | beam.Map(lambda f: (f.image_id, f.stage)),
      equal_to([("notes.txt", elements.STAGE_VALIDATE)]),
      label="Failures",
    )
    _ = segmented.rows | segbeam_transforms.WriteSegments(output, segment.metadata.class_names)
    _ = segmented.failures | segbeam_transforms.WriteErrors(output, segment.run_id)
  con = duckdb.connect()
  rows = con.execute(
    f"SELECT image_id, run_id, model_version, dominant_class FROM "
    f"read_parquet('{output}/segments/*.parquet') ORDER BY image_id"
  ).fetchall()
  assert [r[:3] for r in rows] == [
    ("cat.png", "my-run", metadata.version),
    ("dog.png", "my-run", metadata.version),
  ]
  assert {r[3] for r in rows} <= set(metadata.class_names)
  errors = con.execute(
    f"SELECT image_id, stage, run_id FROM read_parquet('{output}/errors/*.parquet')"
  ).fetchall()
  assert errors == [("notes.txt", "validate", "my-run")]


def test_a_file_pattern_in(tiny_export, tmp_path):
  export_dir, _ = tiny_export
  folder = tmp_path / "photos"
  folder.mkdir()
  (folder / "a.png").write_bytes(_png(30, 20, 3))
  (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
  with TestPipeline() as pipeline:
    read = pipeline | segbeam_transforms.ReadImages(str(folder / "*"))
    segmented = read.rows | segbeam_transforms.SegmentImages(export_dir)
    assert_that(
      segmented.rows | beam.Map(lambda row: row["image_id"]), equal_to(["a.png"]), label="Rows"
    )
    assert_that(
      segmented.failures | beam.Map(lambda f: f.image_id), equal_to(["b.jpg"]), label="Failures"
    )
    assert_that(read.failures, equal_to([]), label="ReadFailures")


def test_bad_settings_are_refused_when_the_pipeline_is_built(tiny_export, tmp_path):
  with pytest.raises(ValueError, match="--batch-size must be at least 1"):
    segbeam_transforms.SegmentImages(tiny_export[0], batch_size=0)
  with pytest.raises(FileNotFoundError, match="not a segbeam export"):
    segbeam_transforms.SegmentImages(str(tmp_path))
  assert not glob.glob(str(tmp_path / "*"))
