"""Evaluation in the same run: per-row IoU counts, and summary numbers equal to
`segbeam evaluate` on the same images and model."""

import glob
import os

import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from segbeam.model import data
from segbeam.model import evaluation
from segbeam.model import export
from segbeam.pipeline import launcher
from segbeam.pipeline import pack
from segbeam.results import output as output_lib
from segbeam.results import summary
from tests import accounting


def _run(argv):
  pipeline = TestPipeline()
  launcher.run(argv, test_pipeline=pipeline)
  pipeline.run().wait_until_finish()
  accounting.assert_accounted_for(argv[argv.index("--output") + 1])


@pytest.fixture(scope="module")
def reference(tiny_export, pet_folder):
  images, masks, _ = pet_folder
  return evaluation.evaluate_export(export.LoadedExport(tiny_export[0]),
                                    data.match_pairs(images, masks)).metrics


@pytest.mark.parametrize("source", ["labels-glob", "tfrecord", "label-map"])
def test_in_run_metrics_equal_segbeam_evaluate(source, tiny_export, pet_folder, reference,
                                               tmp_path):
  images, masks, names = pet_folder
  output = str(tmp_path / "out")
  argv = ["--output", output, "--model", tiny_export[0]]
  if source == "tfrecord":
    prefix = str(tmp_path / "shards")
    pack.pack(images, prefix, masks_dir=masks, num_shards=2)
    argv += ["--input", prefix + "-*"]
  else:
    argv += ["--input", images + "/*.jpg", "--labels", masks + "/*.png"]
    if source == "label-map":
      argv += ["--label-map", "1:0,2:1,3:2"]
  _run(argv)
  truth = summary.ground_truth(output_lib.RunOutput(output))
  assert truth["images"] == len(names)
  assert truth["pixel_accuracy"] == pytest.approx(reference.pixel_accuracy, abs=1e-12)
  assert truth["mean_iou"] == pytest.approx(reference.mean_iou, abs=1e-12)
  for name, iou in reference.per_class_iou.items():
    assert truth["per_class_iou"][name] == pytest.approx(iou, abs=1e-12)
  assert len(truth["worst_images"]) == len(names)


def test_rows_without_a_label_have_null_ground_truth(tiny_export, pet_folder, tmp_path):
  images, masks, _ = pet_folder
  partial = tmp_path / "some_masks"
  partial.mkdir()
  os.symlink(os.path.join(masks, "pet_000.png"), partial / "pet_000.png")
  (partial / "pet_001.png").write_bytes(b"broken label")
  output = str(tmp_path / "out")
  _run(["--input", images + "/*.jpg", "--labels", str(partial / "*.png"), "--output", output,
        "--model", tiny_export[0]])
  rows = {r["image_id"]: r for r in pq.read_table(
      glob.glob(f"{output}/segments/*.parquet")).to_pylist()}
  assert rows["pet_000.jpg"]["gt_pixels"] > 0 and rows["pet_000.jpg"]["gt_error"] is None
  assert rows["pet_001.jpg"]["gt_pixels"] is None
  assert "UnidentifiedImageError" in rows["pet_001.jpg"]["gt_error"]
  assert rows["pet_002.jpg"]["gt_pixels"] is None and rows["pet_002.jpg"]["gt_error"] is None
  row = rows["pet_000.jpg"]
  assert row["gt_correct"] == sum(row[f"gt_intersection_{c}"] for c in ("pet", "background",
                                                                          "border"))
  assert row["gt_pixel_accuracy"] == pytest.approx(row["gt_correct"] / row["gt_pixels"])
