"""Evaluates an export on images + masks at each image's original resolution."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import tensorflow as tf

from segbeam.model import contract
from segbeam.model import data as data_lib
from segbeam.model import export as export_lib
from segbeam.model import labels as labels_lib
from segbeam.model import metrics as metrics_lib
from segbeam.model import postprocess


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
  metrics: metrics_lib.SegmentationMetrics
  images: int
  skipped: tuple[data_lib.SkippedPair, ...]

  def to_dict(self):
    return {
      **self.metrics.to_dict(),
      "images": self.images,
      "skipped": [dataclasses.asdict(s) for s in self.skipped],
    }


def _predict_each(export: export_lib.LoadedExport, encoded: Sequence[bytes]):
  """Predictions for a batch, or one by one when the batch fails: (outputs or error) per image,
  so one undecodable image is reported alone instead of failing its batch."""
  try:
    outputs = export.predict(encoded)
    return [{k: v[i] for k, v in outputs.items()} for i in range(len(encoded))]
  except tf.errors.OpError:
    pass
  results = []
  for data in encoded:
    try:
      results.append({k: v[0] for k, v in export.predict([data]).items()})
    except tf.errors.OpError as error:
      results.append(error)
  return results


def evaluate_export(
  export: export_lib.LoadedExport,
  pairs: Sequence[data_lib.ImageMaskPair],
  *,
  label_map: Optional[labels_lib.LabelMap] = None,
  batch_size: int = 16,
) -> EvaluationResult:
  """Runs the export's own serving signature on the encoded files (as the pipeline does), makes
  each mask at original size with `postprocess.class_mask`, and sums the confusion matrices.

  `label_map` maps the ground-truth masks; by default the one the model was trained with. It
  may cover only some of the model's classes: the others get no IoU (`metrics`).
  Pairs that cannot be read are skipped and listed in the result, never silently.
  """
  label_map = label_map or export.metadata.labels
  class_names = export.metadata.class_names
  beyond = [c for c in label_map.covered_classes if c >= len(class_names)]
  if beyond:
    raise ValueError(
      f"the label map's classes {beyond} are beyond the model's "
      f"{len(class_names)} classes {list(class_names)}"
    )
  result = metrics_lib.SegmentationMetrics.empty(
    class_names, [class_names[c] for c in label_map.covered_classes]
  )
  skipped, evaluated = [], 0

  def skip(pair, reason):
    logging.warning("skipping %s: %s", pair.name, reason)
    skipped.append(data_lib.SkippedPair(pair.name, reason))

  for start in range(0, len(pairs), batch_size):
    batch, encoded, truths = [], [], []
    for pair in pairs[start : start + batch_size]:
      try:
        with tf.io.gfile.GFile(pair.image_path, "rb") as f:
          image_bytes = f.read()
        with tf.io.gfile.GFile(pair.mask_path, "rb") as f:
          truth = data_lib.read_mask(f.read(), label_map)
      except (ValueError, OSError, tf.errors.OpError) as error:
        skip(pair, data_lib.describe_error(error))
        continue
      batch.append(pair)
      encoded.append(image_bytes)
      truths.append(truth)
    if not batch:
      continue
    for pair, truth, outputs in zip(batch, truths, _predict_each(export, encoded)):
      if isinstance(outputs, BaseException):
        skip(pair, data_lib.describe_error(outputs))
        continue
      height = int(outputs[contract.OUTPUT_HEIGHT])
      width = int(outputs[contract.OUTPUT_WIDTH])
      if truth.shape != (height, width):
        skip(pair, f"mask is {truth.shape[1]}x{truth.shape[0]}, image {width}x{height}")
        continue
      mask, _ = postprocess.class_mask(
        outputs[contract.OUTPUT_PROBABILITIES],
        height,
        width,
        threshold=export.metadata.mask_threshold,
      )
      result = result.add(truth, mask)
      evaluated += 1
  return EvaluationResult(metrics=result, images=evaluated, skipped=tuple(skipped))
