"""Evaluation at original resolution, checked against an independent computation."""

import numpy as np
import pytest
from PIL import Image

from segbeam.model import data
from segbeam.model import evaluation
from segbeam.model import export
from segbeam.model import labels
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
      loaded, pairs, label_map=labels.LabelMap(((1, 0), (2, 1)), ("pet", "background")))
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
