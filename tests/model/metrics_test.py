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
  result = (metrics.SegmentationMetrics.empty(("a", "b")).add(big_truth, big_pred)
            .add(small_truth, small_pred))
  assert result.per_class_iou["a"] == pytest.approx(100 / 101)


def test_absent_class_is_nan_and_left_out_of_the_mean():
  result = metrics.SegmentationMetrics.empty(("a", "b", "c")).add(
      np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
  assert np.isnan(result.per_class_iou["c"])
  assert result.mean_iou == 1.0


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError):
    metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
