import json

import numpy as np
import pytest

from segbeam.model import labels
from segbeam.model import metrics


def test_hand_checked_example():
  truth = np.array([[0, 0, 1], [1, 2, labels.IGNORE_INDEX]], np.uint8)
  predicted = np.array([[0, 1, 1], [1, 1, 0]], np.uint8)
  result = metrics.SegmentationMetrics.empty(("a", "b", "c")).add(truth, predicted)
  # Counted pixels: 5 (the ignored one is out): truth a a b b c, prediction a b b b b.
  # Correct: (0,0), (0,2), (1,0) -> 3 of 5.
  assert result.pixel_accuracy == pytest.approx(3 / 5)
  # a: I=1, U = 1 (pred) + 2 (truth) - 1 = 2; b: I=2, U = 4 + 2 - 2 = 4; c: I=0, U = 0 + 1 - 0.
  assert result.per_class_iou == pytest.approx({"a": 1 / 2, "b": 2 / 4, "c": 0.0})
  assert result.mean_iou == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)


def test_sums_over_the_set_not_means_of_images():
  big_truth = np.zeros((10, 10), np.uint8)
  big_pred = np.zeros((10, 10), np.uint8)
  small_truth = np.array([[0, 1]], np.uint8)
  small_pred = np.array([[1, 1]], np.uint8)
  result = (
    metrics.SegmentationMetrics.empty(("a", "b"))
    .add(big_truth, big_pred)
    .add(small_truth, small_pred)
  )
  assert result.per_class_iou["a"] == pytest.approx(100 / 101)


def test_absent_class_is_nan_and_left_out_of_the_mean():
  result = metrics.SegmentationMetrics.empty(("a", "b", "c")).add(
    np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)
  )
  assert np.isnan(result.per_class_iou["c"])
  assert result.mean_iou == 1.0


def _strict_json(text):
  """json.loads that refuses NaN and Infinity, which RFC 8259 JSON does not have."""

  def refuse(token):
    raise ValueError(f"{token} is not JSON")

  return json.loads(text, parse_constant=refuse)


def test_to_dict_is_strict_json_with_null_for_undefined_values():
  # c is in neither truth nor prediction: its IoU is 0/0.
  result = metrics.SegmentationMetrics.empty(("a", "b", "c")).add(
    np.array([[0, 1]], np.uint8), np.array([[0, 1]], np.uint8)
  )
  as_json = _strict_json(json.dumps(result.to_dict()))
  assert as_json["per_class_iou"] == {"a": 1.0, "b": 1.0, "c": None}
  assert as_json["mean_iou"] == 1.0
  # No pixel counted: no pixel accuracy and no class to average.
  empty = _strict_json(json.dumps(metrics.SegmentationMetrics.empty(("a", "b")).to_dict()))
  assert empty["pixel_accuracy"] is None and empty["mean_iou"] is None
  assert empty["per_class_iou"] == {"a": None, "b": None}


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError):
    metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_classes_without_ground_truth_get_no_iou_and_count_as_errors():
  """Ground truth for a and b only; the model also predicts c."""
  truth = np.array([[0, 0, 1], [1, 1, labels.IGNORE_INDEX]], np.uint8)
  predicted = np.array([[0, 2, 1], [2, 1, 2]], np.uint8)
  result = metrics.SegmentationMetrics.empty(("a", "b", "c"), ("a", "b")).add(truth, predicted)
  # Counted: 5 (the ignored one is out). Truth a a b b b, prediction a c b c b: 3 correct, the
  # two pixels masked c are errors.
  assert result.pixel_accuracy == pytest.approx(3 / 5)
  # a: I=1, U = 2 (truth) + 1 (pred) - 1 = 2; b: I=2, U = 3 + 2 - 2 = 3; c: no ground truth.
  assert result.per_class_iou == {"a": pytest.approx(1 / 2), "b": pytest.approx(2 / 3), "c": None}
  assert result.mean_iou == pytest.approx((1 / 2 + 2 / 3) / 2)
  as_json = json.loads(json.dumps(result.to_dict()))
  assert as_json["per_class_iou"]["c"] is None
  assert as_json["ground_truth_classes"] == ["a", "b"]
  # With c covered, its IoU would be 0 (predicted twice, never true) and lower the mean.
  full = metrics.SegmentationMetrics.empty(("a", "b", "c")).add(truth, predicted)
  assert full.per_class_iou["c"] == 0.0 and full.ground_truth_classes == ("a", "b", "c")
  assert full.mean_iou == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


def test_ground_truth_classes_must_be_class_names():
  with pytest.raises(ValueError, match=r"\['d'\] are not among"):
    metrics.SegmentationMetrics.empty(("a", "b"), ("a", "d"))
  # Kept in class order, whatever order they come in.
  assert metrics.SegmentationMetrics.empty(("a", "b", "c"), ("c", "a")).ground_truth_classes == (
    "a",
    "c",
  )
