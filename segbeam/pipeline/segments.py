"""Postprocessing: model outputs -> a segments row per image (mask PNG, class coverage)."""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import Any, Iterator

import apache_beam as beam
import numpy as np
from PIL import Image

from segbeam.model import export as export_lib
from segbeam.model import postprocess
from segbeam.pipeline import inference
from segbeam.pipeline import records
from segbeam.pipeline import schema
from segbeam.pipeline import sources

_LOG = logging.getLogger(__name__)


def encode_mask_png(mask: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  # Level 1: class masks are mostly runs, so fast compression is nearly as small as level 9.
  Image.fromarray(mask, "L").save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What every row records about the run."""

  model_name: str
  model_version: str
  class_names: tuple[str, ...]
  run_id: str


def segment_row(info: records.ImageInfo, outputs: dict[str, np.ndarray],
                context: RunContext) -> dict[str, Any]:
  height = int(outputs[export_lib.OUTPUT_HEIGHT])
  width = int(outputs[export_lib.OUTPUT_WIDTH])
  mask, confidence = postprocess.class_mask(outputs[export_lib.OUTPUT_PROBABILITIES], height,
                                            width)
  pixels = np.bincount(mask.reshape(-1), minlength=len(context.class_names))
  total = height * width
  row = {"image_id": info.image_id, "source": info.source, "format": info.format,
         "width": width, "height": height, "mask_png": encode_mask_png(mask)}
  for suffix, count in zip(schema.class_columns(context.class_names), pixels):
    row[f"coverage_{suffix}"] = float(count) / total
  for suffix, count in zip(schema.class_columns(context.class_names), pixels):
    row[f"pixels_{suffix}"] = int(count)
  row.update(dominant_class=context.class_names[int(np.argmax(pixels))],
             mean_confidence=confidence, model_name=context.model_name,
             model_version=context.model_version, run_id=context.run_id)
  return row


class SegmentImage(beam.DoFn):
  """(ImageInfo, inference) -> segments row, or a Failure on the FAILURES output."""

  PROGRESS_EVERY_SECONDS = 10.0

  def __init__(self, context: RunContext):
    self._context = context
    self._segmented = beam.metrics.Metrics.counter(sources.METRICS_NAMESPACE, "segmented")
    self._failed = beam.metrics.Metrics.counter(sources.METRICS_NAMESPACE, "failed")

  def setup(self):
    self._done = 0
    self._started = time.monotonic()
    self._last_report = self._started

  def process(self, element: tuple[records.ImageInfo, Any]) -> Iterator:
    info, inference_result = element
    if isinstance(inference_result, inference.InferenceFailure):
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(records.FAILURES, records.Failure(
          info.image_id, info.source, inference_result.stage, inference_result.error_type,
          inference_result.message))
      return
    try:
      row = segment_row(info, inference.outputs_as_arrays(inference_result), self._context)
    except Exception as error:  # pylint: disable=broad-except  # one bad output, one error row
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(records.FAILURES, records.Failure.from_exception(
          info.image_id, info.source, records.STAGE_POSTPROCESS, error))
      return
    self._segmented.inc()
    self._report_progress()
    yield row

  def _report_progress(self):
    self._done += 1
    now = time.monotonic()
    if now - self._last_report >= self.PROGRESS_EVERY_SECONDS:
      self._last_report = now
      _LOG.info("segmented %d images in this worker (%.1f img/s)", self._done,
                   self._done / (now - self._started))


def failure_row(failure: records.Failure, run_id: str) -> dict[str, Any]:
  return {**dataclasses.asdict(failure), "run_id": run_id}


