"""Ground truth from label files (`--ground-truth`), joined to the segments rows by key.

A label file matches the images whose name (`filename`, else `image_id`) equals its path
relative to the pattern's root, extensions aside: 'cats/felix.png' labels 'cats/felix.jpg'.
Labels are scored after segmentation, against the mask read back from the row's PNG, so
inference never waits for the label listing. How rows meet their label paths depends on the
runner:
- on several workers (Dataflow), in a CoGroupByKey: no worker holds every label path (a dict
  side input would, and at 100 million labels it would not fit), and the shuffle is the
  service's;
- in one process (the local runner), from a dict side input of label key -> paths: that
  runner holds a shuffle's data in memory, and a row (KBs) costs far more there than a label
  path (BENCHMARKS.md, "Scale").
"""

from __future__ import annotations

import io
import posixpath
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import sources

ROWS = "rows"
LABELS = "labels"


def label_key(name: str) -> str:
  """Labels match images by name without extension: 'cats/felix.jpg' <-> 'cats/felix.png'."""
  return posixpath.splitext(name)[0]


def row_key(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
  return label_key(row["filename"] or row["image_id"]), row


def label_entry(metadata, root: str) -> tuple[str, str]:
  return label_key(sources.relative_id(metadata.path, root)), metadata.path


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


def score(
  rows: Iterable[dict[str, Any]], paths: list[str], context: rows_lib.RunContext
) -> Iterator[dict[str, Any]]:
  """Each of `rows` (one label key's), with its ground-truth columns filled from the label
  file in `paths` where there is one and the row was not scored already."""
  label: Optional[bytes] = None
  label_error: Optional[str] = None
  if paths:
    label, label_error = read_label(paths)
  for row in rows:
    if not paths or _has_ground_truth(row):
      yield row
      continue
    mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
    yield {**row, **rows_lib.ground_truth_columns(mask, label, context, label_error)}


def score_joined(
  element: tuple[str, dict[str, Iterable]], context: rows_lib.RunContext
) -> Iterator[dict[str, Any]]:
  """(key, {ROWS: rows, LABELS: label paths}), a CoGroupByKey's -> the rows, scored."""
  _, joined = element
  return score(joined[ROWS], sorted(joined[LABELS]), context)


def score_looked_up(
  row: dict[str, Any], label_paths: dict[str, list[str]], context: rows_lib.RunContext
) -> Iterator[dict[str, Any]]:
  """A row -> itself, scored against its key's paths in `label_paths` (key -> sorted paths)."""
  key, _ = row_key(row)
  return score([row], label_paths.get(key, []), context)


class JoinLabelFiles(beam.PTransform):
  """Segments rows -> the same rows, scored against the label files `pattern` matches.

  Args:
    pattern: the label files' glob (`--ground-truth`).
    context: the run's `rows.RunContext`; its label map reads the labels.
    distributed: whether the runner spreads the work over workers (see the module's
      docstring): then a CoGroupByKey, else a dict side input.
  """

  def __init__(self, pattern: str, context: rows_lib.RunContext, *, distributed: bool = True):
    super().__init__()
    self._pattern = pattern
    self._context = context
    self._distributed = distributed

  def expand(self, rows):
    labels = (
      rows.pipeline
      | "LabelsPattern" >> beam.Create([self._pattern])
      | "MatchLabels" >> beam.FlatMap(sources.iter_matches)
      | "LabelKeys" >> beam.Map(label_entry, sources.pattern_root(self._pattern))
    )
    if not self._distributed:
      # Every label file of a key, so that two for one image are an error, not a pick.
      paths = labels | "LabelsByKey" >> beam.GroupByKey() | "Sorted" >> beam.MapTuple(_sorted)
      return rows | "Score" >> beam.FlatMap(
        score_looked_up, beam.pvalue.AsDict(paths), self._context
      )
    keyed = rows | "RowKeys" >> beam.Map(row_key)
    return (
      {ROWS: keyed, LABELS: labels}
      | "ByKey" >> beam.CoGroupByKey()
      | "Score" >> beam.FlatMap(score_joined, self._context)
    )


def _sorted(key: str, paths: Iterable[str]) -> tuple[str, list[str]]:
  return key, sorted(paths)
