"""Postprocessing: model outputs -> a segments row per image (mask PNG, class coverage)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from typing import Any, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.utils.windowed_value import WindowedValue

from segbeam import messages
from segbeam.model import contract
from segbeam.model import data as data_lib
from segbeam.model import labels as labels_lib
from segbeam.model import metrics as metrics_lib
from segbeam.model import postprocess
from segbeam.pipeline import background
from segbeam.pipeline import elements
from segbeam.pipeline import inference
from segbeam.pipeline import mask_png
from segbeam.pipeline import progress
from segbeam.pipeline import schema

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What every row records about the run; `label_map` maps ground-truth label values."""

  model_name: str
  model_version: str
  class_names: tuple[str, ...]
  run_id: str
  label_map: Optional[labels_lib.LabelMap] = None
  mask_threshold: Optional[float] = None  # a single-sigmoid model's, when not 0.5

  @functools.cached_property
  def column_suffixes(self) -> list[str]:
    """Column suffix of each class, computed once per run instead of once per row."""
    return schema.class_columns(self.class_names)


_STREAM_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def ground_truth_columns(
  mask: np.ndarray, label: Optional[bytes], context: RunContext, label_error: Optional[str] = None
) -> dict[str, Any]:
  """Per-image intersections, unions and pixel accuracy against a label image, or nulls (with
  `gt_error` saying why when a label was there but unusable). A class the label map does not
  cover has null counts; a labelled pixel masked as such a class is still counted wrong."""
  suffixes = context.column_suffixes
  columns: dict[str, Any] = {
    "gt_pixels": None,
    "gt_correct": None,
    "gt_pixel_accuracy": None,
    "gt_error": None,
  }
  columns.update({f"gt_intersection_{s}": None for s in suffixes})
  columns.update({f"gt_union_{s}": None for s in suffixes})
  if label_error:
    columns["gt_error"] = label_error
  if label is None or context.label_map is None:
    return columns
  try:
    truth = data_lib.read_mask(label, context.label_map, size=(mask.shape[1], mask.shape[0]))
  except data_lib.MaskSizeError as error:  # told by its header, never decoded
    columns["gt_error"] = str(error)
    return columns
  except Exception as error:  # an unusable label, not image
    # PIL names the stream it read (`<_io.BytesIO object at 0x...>`): not the same twice.
    message = _STREAM_REPR.sub("the label", messages.one_line(error, limit=300))
    columns["gt_error"] = f"{type(error).__name__}: {message}"
    return columns
  if truth.shape != mask.shape:
    columns["gt_error"] = (
      f"label is {truth.shape[1]}x{truth.shape[0]}, image {mask.shape[1]}x{mask.shape[0]}"
    )
    return columns
  confusion = metrics_lib.confusion_matrix(truth, mask, len(context.class_names))
  intersections = np.diag(confusion)
  unions = confusion.sum(0) + confusion.sum(1) - intersections
  pixels, correct = int(confusion.sum()), int(intersections.sum())
  columns.update(
    gt_pixels=pixels, gt_correct=correct, gt_pixel_accuracy=(correct / pixels) if pixels else None
  )
  # Classes the label map does not cover stay null: their true extent is unknown.
  for c in context.label_map.covered_classes:
    if c < len(suffixes):
      columns[f"gt_intersection_{suffixes[c]}"] = int(intersections[c])
      columns[f"gt_union_{suffixes[c]}"] = int(unions[c])
  return columns


def segments_row(
  info: elements.ImageInfo,
  outputs: dict[str, np.ndarray],
  context: RunContext,
  label: Optional[bytes] = None,
) -> dict[str, Any]:
  """The row of an image segmented whole: its mask from the model's outputs (probabilities
  at the model's input size, resized to the image's)."""
  mask, confidence = postprocess.class_mask(
    outputs[contract.OUTPUT_PROBABILITIES],
    int(outputs[contract.OUTPUT_HEIGHT]),
    int(outputs[contract.OUTPUT_WIDTH]),
    threshold=context.mask_threshold,
  )
  return mask_row(info, mask, confidence, context, label)


def mask_row(
  info: elements.ImageInfo,
  mask: np.ndarray,
  confidence: float,
  context: RunContext,
  label: Optional[bytes] = None,
) -> dict[str, Any]:
  """The row of an image whose mask (uint8 [height, width] class indices at the image's size)
  and mean confidence are known."""
  height, width = mask.shape
  pixels = postprocess.class_pixel_counts(mask, len(context.class_names))
  total = height * width
  row = {
    "image_id": info.image_id,
    "source": info.source,
    "filename": info.filename,
    "format": info.format,
    "width": width,
    "height": height,
    "exif_orientation": info.exif_orientation,
    "mask_png": mask_png.encode(mask),
  }
  for suffix, count in zip(context.column_suffixes, pixels):
    row[f"coverage_{suffix}"] = float(count) / total
  for suffix, count in zip(context.column_suffixes, pixels):
    row[f"pixels_{suffix}"] = int(count)
  row.update(dominant_class=context.class_names[int(np.argmax(pixels))], mean_confidence=confidence)
  row.update(ground_truth_columns(mask, label, context))
  row.update(
    model_name=context.model_name, model_version=context.model_version, run_id=context.run_id
  )
  return row


class MakeRows(beam.DoFn):
  """(ImageInfo, inference) -> segments row, or a Failure on the FAILURES output.

  The postprocessing runs on background threads (`background`), so that it overlaps the
  inference of the next batch in the same fused stage; rows come out in input order, each in
  its input's window. An inference still pending (`inference.PendingInference`) is awaited
  there too, and at most `max_pending` of them are held. Counters and progress are kept on the
  bundle's thread, where Beam collects metrics.
  """

  PROGRESS_EVERY_SECONDS = 10.0

  def __init__(self, context: RunContext, *, threads: int = 1, max_pending: int = 64):
    self._context = context
    self._threads = threads
    self._max_pending = max_pending
    self._segmented = progress.Counter(progress.SEGMENTED)
    self._failed = progress.Counter(progress.FAILED)

  def setup(self):
    self._queue = background.OrderedBackgroundQueue(
      threads=self._threads, max_pending=self._max_pending
    )
    self._done = 0
    self._started = time.monotonic()
    self._last_report = self._started

  def start_bundle(self):
    self._queue.discard()  # what a failed bundle left; Beam retries it from its start

  def process(
    self,
    element: tuple[elements.ImageInfo, Any],
    timestamp=beam.DoFn.TimestampParam,
    window=beam.DoFn.WindowParam,
  ) -> Iterator:
    yield from self._emit(self._queue.submit(self._segment_in_window, element, timestamp, window))

  def finish_bundle(self) -> Iterator:
    yield from self._emit(self._queue.drain())

  def teardown(self):
    self._queue.close()

  def _emit(self, results) -> Iterator:
    for failed, output in results:
      if failed:
        self._failed.inc()
        yield beam.pvalue.TaggedOutput(elements.FAILURES, output)
      else:
        self._segmented.inc()
        self._report_progress()
        yield output

  def _segment_in_window(self, element, timestamp, window):
    failed, value = self._segment(element)
    return failed, WindowedValue(value, timestamp, (window,))

  def _segment(self, element: tuple[elements.ImageInfo, Any]) -> tuple[bool, Any]:
    """(failed?, a segments row or a Failure) for one image; runs on a background thread."""
    info, inference_result = element
    try:
      inference_result = inference.resolve(inference_result)
    except elements.ModelFailureError:  # not this image's failure: it stops the run
      raise
    except Exception as error:  # the slice failed as a whole
      return True, elements.Failure.from_exception(
        info.image_id, info.source, elements.STAGE_INFER, error, info.filename
      )
    if isinstance(inference_result, inference.InferenceFailure):
      return True, elements.Failure(
        info.image_id,
        info.source,
        inference_result.stage,
        inference_result.error_type,
        inference_result.message,
        info.filename,
      )
    try:
      return False, segments_row(
        info, inference.outputs_as_arrays(inference_result), self._context, info.label
      )
    except Exception as error:  # one bad output, one error row
      return True, elements.Failure.from_exception(
        info.image_id, info.source, elements.STAGE_POSTPROCESS, error, info.filename
      )

  def _report_progress(self):
    self._done += 1
    now = time.monotonic()
    if now - self._last_report >= self.PROGRESS_EVERY_SECONDS:
      self._last_report = now
      _LOG.info(
        "segmented %d images in this worker (%.1f img/s)",
        self._done,
        self._done / (now - self._started),
      )


def failure_row(failure: elements.Failure, run_id: str) -> dict[str, Any]:
  return {**dataclasses.asdict(failure), "run_id": run_id}
