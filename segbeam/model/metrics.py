"""Segmentation metrics from a confusion matrix accumulated over a whole set.

IoU of a class is the sum of its intersections over the sum of its unions across all images,
not the mean of per-image IoUs: small images do not weigh as much as large ones.

Ground truth may cover only some classes (binary pet/background masks for a model that also
predicts a border). A class it does not cover has no IoU (None), since where it truly is is
unknown; a labelled pixel predicted as such a class is still an error against its true class.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np


def confusion_matrix(
  true_mask: np.ndarray, predicted_mask: np.ndarray, num_classes: int
) -> np.ndarray:
  """int64 [num_classes, num_classes], rows = truth, columns = prediction; pixels whose truth is
  IGNORE_INDEX (or any value >= num_classes) are left out."""
  if true_mask.shape != predicted_mask.shape:
    raise ValueError(f"truth {true_mask.shape} and prediction {predicted_mask.shape} differ")
  truth = true_mask.reshape(-1).astype(np.int64)
  predicted = predicted_mask.reshape(-1).astype(np.int64)
  keep = truth < num_classes
  counts = np.bincount(
    truth[keep] * num_classes + predicted[keep], minlength=num_classes * num_classes
  )
  return counts.reshape(num_classes, num_classes)


def _defined(value: Optional[float]) -> Optional[float]:
  return None if value is None or math.isnan(value) else value


@dataclasses.dataclass(frozen=True)
class SegmentationMetrics:
  """Pixel accuracy and IoU over a set, from its summed confusion matrix.

  `ground_truth_classes`: the classes the ground truth labels (None: all of them).
  """

  confusion: np.ndarray
  class_names: tuple[str, ...]
  ground_truth_classes: Optional[tuple[str, ...]] = None

  def __post_init__(self):
    object.__setattr__(self, "class_names", tuple(self.class_names))
    covered = (
      self.class_names if self.ground_truth_classes is None else tuple(self.ground_truth_classes)
    )
    unknown = [name for name in covered if name not in self.class_names]
    if unknown:
      raise ValueError(f"ground truth classes {unknown} are not among {list(self.class_names)}")
    # In class order, whatever order they were given in.
    object.__setattr__(
      self, "ground_truth_classes", tuple(name for name in self.class_names if name in covered)
    )

  @classmethod
  def empty(
    cls, class_names: Sequence[str], ground_truth_classes: Optional[Sequence[str]] = None
  ) -> "SegmentationMetrics":
    n = len(class_names)
    return cls(
      np.zeros((n, n), np.int64),
      tuple(class_names),
      None if ground_truth_classes is None else tuple(ground_truth_classes),
    )

  def add(self, true_mask: np.ndarray, predicted_mask: np.ndarray) -> "SegmentationMetrics":
    return dataclasses.replace(
      self,
      confusion=self.confusion + confusion_matrix(true_mask, predicted_mask, len(self.class_names)),
    )

  @property
  def intersections(self) -> np.ndarray:
    return np.diag(self.confusion)

  @property
  def unions(self) -> np.ndarray:
    return self.confusion.sum(0) + self.confusion.sum(1) - self.intersections

  @property
  def pixel_accuracy(self) -> float:
    total = self.confusion.sum()
    return float(self.intersections.sum() / total) if total else float("nan")

  @property
  def per_class_iou(self) -> dict[str, Optional[float]]:
    """None for a class without ground truth; NaN for one absent from truth and prediction."""
    unions = self.unions
    return {
      name: (
        None
        if name not in self.ground_truth_classes
        else float(self.intersections[i] / unions[i])
        if unions[i]
        else float("nan")
      )
      for i, name in enumerate(self.class_names)
    }

  @property
  def mean_iou(self) -> float:
    """Mean over the classes with ground truth that occur in truth or prediction."""
    present = [v for v in self.per_class_iou.values() if v is not None and not np.isnan(v)]
    return float(np.mean(present)) if present else float("nan")

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: an undefined value (NaN) is None, since JSON has no NaN."""
    return {
      "pixel_accuracy": _defined(self.pixel_accuracy),
      "mean_iou": _defined(self.mean_iou),
      "per_class_iou": {name: _defined(iou) for name, iou in self.per_class_iou.items()},
      "pixels": int(self.confusion.sum()),
      "ground_truth_classes": list(self.ground_truth_classes),
    }
