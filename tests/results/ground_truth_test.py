"""Evaluation in the same run: per-row IoU counts, and summary numbers equal to
`segbeam evaluate` on the same images and model."""

import glob
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from PIL import Image

from segbeam import cli
from segbeam import exits
from segbeam import options as options_lib
from segbeam.commands import pack
from segbeam.model import data
from segbeam.model import evaluation
from segbeam.model import export
from segbeam.model import labels
from segbeam.results import output as output_lib
from segbeam.results import report
from segbeam.results import summary
from segbeam.run import job
from tests import accounting


def _run(argv, distributed=True):
  pipeline = TestPipeline()
  job.add_to(pipeline, options_lib.parse_args(argv)[0], distributed=distributed)
  pipeline.run().wait_until_finish()
  accounting.assert_accounted_for(argv[argv.index("--output") + 1])


@pytest.fixture(scope="module")
def reference(tiny_export, pet_folder):
  images, masks, _ = pet_folder
  return evaluation.evaluate_export(
    export.LoadedExport(tiny_export[0]), data.match_pairs(images, masks)
  ).metrics


# tfrecord: labels inside the tf.Examples; tfrecord-labels-glob: label files matched to the
# records by their filename feature (their ids are places in the shards). Label files meet
# the rows in a shuffle on a distributed runner, from a dict side input in one process.
@pytest.mark.parametrize(
  "source,distributed",
  [
    ("labels-glob", True),
    ("labels-glob", False),
    ("tfrecord", True),
    ("tfrecord-labels-glob", True),
    ("tfrecord-labels-glob", False),
    ("label-map", True),
  ],
)
def test_in_run_metrics_equal_segbeam_evaluate(
  source, distributed, tiny_export, pet_folder, reference, tmp_path
):
  images, masks, names = pet_folder
  output = str(tmp_path / "out")
  argv = ["--output", output, "--model", tiny_export[0]]
  if source.startswith("tfrecord"):
    prefix = str(tmp_path / "shards")
    in_shards = source == "tfrecord"
    pack.pack(images, prefix, masks_dir=masks if in_shards else None, num_shards=2)
    argv += ["--input", prefix + "-*"]
    if not in_shards:
      argv += ["--ground-truth", masks + "/*.png"]
  else:
    argv += ["--input", images + "/*.jpg", "--ground-truth", masks + "/*.png"]
    if source == "label-map":
      argv += ["--label-map", "1:0,2:1,3:2"]
  _run(argv, distributed)
  truth = summary.ground_truth(output_lib.RunOutput(output))
  assert truth["images"] == len(names)
  assert truth["pixel_accuracy"] == pytest.approx(reference.pixel_accuracy, abs=1e-12)
  assert truth["mean_iou"] == pytest.approx(reference.mean_iou, abs=1e-12)
  for name, iou in reference.per_class_iou.items():
    assert truth["per_class_iou"][name] == pytest.approx(iou, abs=1e-12)
  assert len(truth["worst_images"]) == len(names)
  assert truth["ground_truth_classes"] == ["pet", "background", "border"]


@pytest.mark.parametrize("distributed", [True, False])
def test_rows_without_a_label_have_null_ground_truth(
  distributed, tiny_export, pet_folder, tmp_path
):
  images, masks, _ = pet_folder
  partial = tmp_path / "some_masks"
  partial.mkdir()
  os.symlink(os.path.join(masks, "pet_000.png"), partial / "pet_000.png")
  (partial / "pet_001.png").write_bytes(b"broken label")
  for name in ("pet_003.png", "pet_003.tif"):  # two labels for one image: which one?
    os.symlink(os.path.join(masks, "pet_003.png"), partial / name)
  output = str(tmp_path / "out")
  _run(
    [
      "--input",
      images + "/*.jpg",
      "--ground-truth",
      str(partial / "*"),
      "--output",
      output,
      "--model",
      tiny_export[0],
    ],
    distributed,
  )
  rows = {
    r["image_id"]: r for r in pq.read_table(glob.glob(f"{output}/segments/*.parquet")).to_pylist()
  }
  assert rows["pet_000.jpg"]["gt_pixels"] > 0 and rows["pet_000.jpg"]["gt_error"] is None
  assert rows["pet_001.jpg"]["gt_pixels"] is None
  assert "UnidentifiedImageError" in rows["pet_001.jpg"]["gt_error"]
  assert rows["pet_002.jpg"]["gt_pixels"] is None and rows["pet_002.jpg"]["gt_error"] is None
  assert rows["pet_003.jpg"]["gt_pixels"] is None
  assert rows["pet_003.jpg"]["gt_error"].startswith("2 label files match this image: ")
  row = rows["pet_000.jpg"]
  assert row["gt_correct"] == sum(
    row[f"gt_intersection_{c}"] for c in ("pet", "background", "border")
  )
  assert row["gt_pixel_accuracy"] == pytest.approx(row["gt_correct"] / row["gt_pixels"])


@pytest.fixture(scope="module")
def binary_run(tiny_export, pet_folder, tmp_path_factory):
  """A run with binary pet/background labels (1 pet, 0 background) made from the trimaps, one
  of them unusable (RGB): (output folder, labels folder)."""
  images, masks, names = pet_folder
  binary = tmp_path_factory.mktemp("binary_labels")
  for name in names:
    trimap = np.asarray(Image.open(os.path.join(masks, name + ".png")))
    Image.fromarray((trimap == 1).astype(np.uint8)).save(binary / (name + ".png"))
  Image.new("RGB", (8, 8)).save(binary / (names[1] + ".png"))
  output = str(tmp_path_factory.mktemp("binary_run") / "out")
  _run(
    [
      "--input",
      images + "/*.jpg",
      "--ground-truth",
      str(binary / "*.png"),
      "--label-map",
      "1:0,0:1",
      "--output",
      output,
      "--model",
      tiny_export[0],
    ]
  )
  return output, str(binary)


def test_binary_labels_score_pet_and_background_only(binary_run, tiny_export, pet_folder):
  output, binary = binary_run
  images, _, names = pet_folder
  loaded = export.LoadedExport(tiny_export[0])
  expected = evaluation.evaluate_export(
    loaded,
    data.match_pairs(images, binary),
    label_map=labels.parse_label_map("1:0,0:1", loaded.metadata.class_names),
  )
  assert [s.name for s in expected.skipped] == [names[1]]  # the RGB label, there and here
  truth = summary.ground_truth(output_lib.RunOutput(output))
  assert truth["images"] == len(names) - 1 and truth["unusable_labels"] == 1
  assert truth["ground_truth_classes"] == ["pet", "background"]
  assert truth["per_class_iou"]["border"] is None
  m = expected.metrics
  assert truth["pixel_accuracy"] == pytest.approx(m.pixel_accuracy, abs=1e-12)
  assert truth["mean_iou"] == pytest.approx(m.mean_iou, abs=1e-12)
  for name in ("pet", "background"):
    assert truth["per_class_iou"][name] == pytest.approx(m.per_class_iou[name], abs=1e-12)

  rows = {
    r["image_id"]: r for r in pq.read_table(glob.glob(f"{output}/segments/*.parquet")).to_pylist()
  }
  assert all(
    r["gt_intersection_border"] is None and r["gt_union_border"] is None for r in rows.values()
  )
  assert "mask has mode RGB" in rows[names[1] + ".jpg"]["gt_error"]
  # One image by hand: its mask from the row against its binary label.
  row = rows[names[0] + ".jpg"]
  mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
  label = 1 - np.asarray(Image.open(os.path.join(binary, names[0] + ".png"))).astype(int)
  assert row["gt_pixels"] == label.size and row["gt_correct"] == int((mask == label).sum())
  ious = []
  for c, name in enumerate(("pet", "background")):
    intersection = int(np.logical_and(mask == c, label == c).sum())
    union = int(np.logical_or(mask == c, label == c).sum())
    assert (row[f"gt_intersection_{name}"], row[f"gt_union_{name}"]) == (intersection, union)
    ious.append(intersection / union)
  worst = {w["image_id"]: w["mean_iou"] for w in truth["worst_images"]}
  assert worst[row["image_id"]] == pytest.approx(np.mean(ious))
  assert len(worst) == len(names) - 1 and None not in worst.values()


def test_the_manifest_summary_and_report_say_what_the_labels_cover(binary_run, capsys):
  output, _ = binary_run
  run = output_lib.RunOutput(output)
  assert run.manifest["ground_truth"] == {
    "classes": ["pet", "background"],
    "mapping": {"0": 1, "1": 0},
  }
  assert cli.main(["summary", output, "--json"]) == 0
  truth = json.loads(capsys.readouterr().out)["ground_truth"]
  assert truth["ground_truth_classes"] == ["pet", "background"]
  assert truth["per_class_iou"]["border"] is None
  assert cli.main(["summary", output]) == 0
  text = capsys.readouterr().out
  assert "ground truth covers: pet, background (not: border)" in text
  assert "  IoU border           -  (no ground truth)" in text.splitlines()
  page = report.build_report(run, samples=2)
  assert "ground truth covers: pet, background (not: border)" in page
  assert "<td>no ground truth</td>" in page


def test_a_label_map_beyond_the_models_classes_is_a_bad_invocation(
  tiny_export, pet_folder, tmp_path
):
  images, masks, _ = pet_folder
  output = tmp_path / "out"
  with pytest.raises(exits.InvocationError, match=r"classes \[0, 3\] must be within 0..2"):
    job.add_to(
      TestPipeline(),
      options_lib.parse_args(
        [
          "--input",
          images + "/*.jpg",
          "--ground-truth",
          masks + "/*.png",
          "--label-map",
          "1:0,0:3",
          "--output",
          str(output),
          "--model",
          tiny_export[0],
        ]
      )[0],
    )
  assert not output.exists()
