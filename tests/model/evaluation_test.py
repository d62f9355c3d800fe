"""Evaluation at original resolution, checked against an independent computation."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from segbeam.model import data
from segbeam.model import evaluation
from segbeam.model import export
from segbeam.model import labels
from segbeam.model import metrics as metrics_lib
from segbeam.model import postprocess


def test_metrics_equal_an_independent_per_image_computation(tiny_export, pet_folder):
  export_dir, _ = tiny_export
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  loaded = export.LoadedExport(export_dir)
  result = evaluation.evaluate_export(loaded, pairs, batch_size=4)
  assert result.images == len(pairs) and not result.skipped

  correct = counted = 0
  intersections, unions = np.zeros(3), np.zeros(3)
  for pair in pairs:
    outputs = loaded.predict([open(pair.image_path, "rb").read()])
    truth = np.asarray(Image.open(pair.mask_path)).astype(int) - 1  # trimap 1..3 -> 0..2
    predicted, _ = postprocess.class_mask(outputs["probabilities"][0], *truth.shape)
    assert predicted.shape == truth.shape  # original resolution
    correct += int((predicted == truth).sum())
    counted += truth.size
    for c in range(3):
      intersections[c] += np.logical_and(predicted == c, truth == c).sum()
      unions[c] += np.logical_or(predicted == c, truth == c).sum()
  assert result.metrics.pixel_accuracy == pytest.approx(correct / counted)
  expected_iou = [i / u if u else float("nan") for i, u in zip(intersections, unions)]
  np.testing.assert_allclose(list(result.metrics.per_class_iou.values()), expected_iou)


def test_a_label_map_can_ignore_a_class(tiny_export, pet_folder):
  export_dir, _ = tiny_export
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  loaded = export.LoadedExport(export_dir)
  everything = evaluation.evaluate_export(loaded, pairs)
  no_border = evaluation.evaluate_export(
    loaded, pairs, label_map=labels.LabelMap(((1, 0), (2, 1)), ("pet", "background"))
  )
  assert no_border.metrics.confusion.sum() < everything.metrics.confusion.sum()
  assert no_border.metrics.confusion[2].sum() == 0  # no truth pixel of the border class


def test_bad_pairs_are_listed_not_fatal(tiny_export, pet_folder, tmp_path):
  export_dir, _ = tiny_export
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"\xff\xd8\xff truncated")
  pairs.insert(1, data.ImageMaskPair("bad", str(bad), pairs[0].mask_path))
  result = evaluation.evaluate_export(export.LoadedExport(export_dir), pairs, batch_size=3)
  assert result.images == len(pairs) - 1
  assert [s.name for s in result.skipped] == ["bad"]


def _binary_masks(masks_dir, target):
  """Pet/background masks from the trimaps: 1 where the trimap says pet, else 0."""
  target.mkdir()
  for name in os.listdir(masks_dir):
    trimap = np.asarray(Image.open(os.path.join(masks_dir, name)))
    Image.fromarray((trimap == 1).astype(np.uint8)).save(target / name)
  return str(target)


def test_binary_ground_truth_scores_the_classes_it_covers(tiny_export, pet_folder, tmp_path):
  export_dir, _ = tiny_export
  images, masks, _ = pet_folder
  binary = _binary_masks(masks, tmp_path / "binary")
  pairs = data.match_pairs(images, binary)
  loaded = export.LoadedExport(export_dir)
  label_map = labels.parse_label_map("1:0,0:1", loaded.metadata.class_names)
  result = evaluation.evaluate_export(loaded, pairs, label_map=label_map, batch_size=4)
  assert result.images == len(pairs)

  correct = counted = predicted_border = 0
  intersections, unions = np.zeros(2), np.zeros(2)
  for pair in pairs:
    outputs = loaded.predict([open(pair.image_path, "rb").read()])
    truth = 1 - np.asarray(Image.open(pair.mask_path)).astype(int)  # 1 pet -> 0, 0 bg -> 1
    predicted, _ = postprocess.class_mask(outputs["probabilities"][0], *truth.shape)
    correct += int((predicted == truth).sum())  # a pixel masked border is never right
    counted += truth.size
    predicted_border += int((predicted == 2).sum())
    for c in range(2):
      intersections[c] += np.logical_and(predicted == c, truth == c).sum()
      unions[c] += np.logical_or(predicted == c, truth == c).sum()
  assert predicted_border > 0  # the untrained model masks some border: errors to count
  m = result.metrics
  assert m.pixel_accuracy == pytest.approx(correct / counted)
  assert m.per_class_iou["pet"] == pytest.approx(intersections[0] / unions[0])
  assert m.per_class_iou["background"] == pytest.approx(intersections[1] / unions[1])
  assert m.per_class_iou["border"] is None
  assert m.mean_iou == pytest.approx(np.mean(intersections / unions))
  assert m.ground_truth_classes == ("pet", "background")


def test_segbeam_evaluate_says_what_the_ground_truth_covers(
  tiny_export, pet_folder, tmp_path, capsys
):
  from segbeam import cli

  images, masks, _ = pet_folder
  binary = _binary_masks(masks, tmp_path / "binary")
  argv = [
    "evaluate",
    "--model",
    tiny_export[0],
    "--images",
    images,
    "--masks",
    binary,
    "--label-map",
    "1:0,0:1",
  ]
  assert cli.main(argv + ["--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["ground_truth_classes"] == ["pet", "background"]
  assert result["per_class_iou"]["border"] is None
  assert result["mean_iou"] == pytest.approx(
    (result["per_class_iou"]["pet"] + result["per_class_iou"]["background"]) / 2
  )
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "ground truth covers: pet, background (not: border)" in out
  assert re.search(r"IoU border +-  \(no ground truth\)", out)
  assert f"IoU pet                  {result['per_class_iou']['pet']:.4f}" in out
  # A class beyond the model's is refused: exit 2, one line.
  assert cli.main(argv[:-1] + ["1:0,0:3"]) == 2
  err = capsys.readouterr().err.strip()
  assert "within 0..2" in err and len(err.splitlines()) == 1


def test_segbeam_evaluate_json_has_null_for_a_class_in_neither_truth_nor_prediction(
  tiny_export, pet_folder, monkeypatch, capsys
):
  """Its IoU is 0/0: printed as null, never as NaN, which is not JSON."""
  from segbeam import cli

  images, masks, _ = pet_folder
  names = tiny_export[1].class_names
  # Whether the untrained model ever masks a class cannot be chosen, so the result is given.
  truth = np.array([[0, 1], [1, 0]], np.uint8)
  scored = metrics_lib.SegmentationMetrics.empty(names).add(truth, truth)
  given = evaluation.EvaluationResult(metrics=scored, images=1, skipped=())
  monkeypatch.setattr(evaluation, "evaluate_export", lambda *args, **kwargs: given)
  argv = ["evaluate", "--model", tiny_export[0], "--images", images, "--masks", masks]
  assert cli.main(argv + ["--json"]) == 0

  def refuse(token):
    raise ValueError(f"{token} is not JSON")

  result = json.loads(capsys.readouterr().out, parse_constant=refuse)
  assert result["per_class_iou"] == {names[0]: 1.0, names[1]: 1.0, names[2]: None}
  assert result["mean_iou"] == 1.0 and result["images"] == 1


def test_a_label_map_beyond_the_models_classes_is_refused(tiny_export, pet_folder):
  images, masks, _ = pet_folder
  four = labels.LabelMap(((1, 0), (2, 3)), ("pet", "background", "border", "toy"))
  with pytest.raises(ValueError, match=r"classes \[3\] are beyond the model's 3"):
    evaluation.evaluate_export(
      export.LoadedExport(tiny_export[0]), data.match_pairs(images, masks), label_map=four
    )


def test_segbeam_evaluate_refuses_a_model_whose_graph_writes_files(pet_folder, tmp_path, capsys):
  """The real command: a model `segbeam run` refuses is refused here too, before it is loaded
  (exit 2, one line, its file never written); with --trust-model it runs."""
  import subprocess
  import sys

  from segbeam import cli
  from segbeam.model import model_safety
  from tests import unsafe_exports

  images, masks, _ = pet_folder
  written = tmp_path / "written.txt"
  export_dir = unsafe_exports.write_export(str(tmp_path / "export"), writes_to=str(written))
  argv = ["evaluate", "--model", export_dir, "--images", images, "--masks", masks]
  segbeam = os.path.join(os.path.dirname(sys.executable), "segbeam")
  run = subprocess.run([segbeam, *argv], capture_output=True, text=True, timeout=300)
  with pytest.raises(model_safety.UnsafeModelError) as refused:  # what `segbeam run` says
    model_safety.check_saved_model(export_dir)
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1] == f"segbeam evaluate: {refused.value}"
  assert "WriteFile" in str(refused.value)
  assert "Traceback" not in run.stderr and run.stdout == ""
  assert not written.exists()

  assert cli.main([*argv, "--trust-model", "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["images"] == 6
  assert written.read_bytes() == unsafe_exports.WRITTEN  # trusted, so it ran as written
