"""Ground truth from label files (`--ground-truth`), joined to the segments rows by key.

A label file matches the images whose name (`filename`, else `image_id`) equals its path
relative to the pattern's root, extensions aside: 'cats/felix.png' labels 'cats/felix.jpg'.
The rows and the label paths meet in a CoGroupByKey after segmentation, so no worker holds
every label path (a dict side input would, and at 100 million labels it would not fit) and
nothing waits for the label listing before inference. The mask is read back from the row's
PNG to be scored.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import sources

ROWS = "rows"
LABELS = "labels"


def row_key(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
  return rows_lib.label_key(row["filename"] or row["image_id"]), row


def label_entry(metadata, root: str) -> tuple[str, str]:
  return rows_lib.label_key(sources.relative_id(metadata.path, root)), metadata.path


def read_label(paths: list[str]) -> tuple[Optional[bytes], Optional[str]]:
  """(label bytes, None) from the one label file in `paths`, or (None, why not)."""
  if len(paths) > 1:  # 'felix.png' and 'felix.jpg' for 'felix.jpg': which one is meant?
    shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    return None, f"{len(paths)} label files match this image: {shown}"[:300]
  (path,) = paths
  try:
    with FileSystems.open(path) as f:
      return f.read(), None
  except Exception as error:  # the mask row still counts
    return None, f"cannot read label {path}: {type(error).__name__}: {error}"[:300]


def _has_ground_truth(row: dict[str, Any]) -> bool:
  """Whether the row was scored already, against a label its own tf.Example carried."""
  return row["gt_pixels"] is not None or row["gt_error"] is not None


class ScoreAgainstLabelFiles(beam.DoFn):
  """(key, {ROWS: rows, LABELS: label paths}) -> each row, with its ground-truth columns
  filled from the key's label file where it has one and was not scored already."""

  def __init__(self, context: rows_lib.RunContext):
    self._context = context

  def process(self, element: tuple[str, dict[str, Iterable]]) -> Iterator[dict[str, Any]]:
    _, joined = element
    paths = sorted(joined[LABELS])
    label: Optional[bytes] = None
    label_error: Optional[str] = None
    if paths:
      label, label_error = read_label(paths)
    for row in joined[ROWS]:
      if not paths or _has_ground_truth(row):
        yield row
        continue
      mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
      yield {**row, **rows_lib.ground_truth_columns(mask, label, self._context, label_error)}


class JoinLabelFiles(beam.PTransform):
  """Segments rows -> the same rows, scored against the label files `pattern` matches.

  Args:
    pattern: the label files' glob (`--ground-truth`).
    context: the run's `rows.RunContext`; its label map reads the labels.
  """

  def __init__(self, pattern: str, context: rows_lib.RunContext):
    super().__init__()
    self._pattern = pattern
    self._context = context

  def expand(self, rows):
    labels = (
      rows.pipeline
      | "MatchLabels" >> fileio.MatchFiles(self._pattern)
      | "LabelKeys" >> beam.Map(label_entry, sources.pattern_root(self._pattern))
    )
    keyed = rows | "RowKeys" >> beam.Map(row_key)
    return (
      {ROWS: keyed, LABELS: labels}
      | "ByKey" >> beam.CoGroupByKey()
      | "Score" >> beam.ParDo(ScoreAgainstLabelFiles(self._context))
    )
