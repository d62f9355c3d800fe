"""Ground truth from label files (`--ground-truth`), joined to the segments rows by key.

A label file matches the images whose name (`filename`, else `image_id`) equals its path
relative to the pattern's root, extensions aside: 'cats/felix.png' labels 'cats/felix.jpg'.
A label path is only ever one the pattern's own listing gives: a name from input data that
is not a plain path inside the root ('../x', '/x', 'a\\b') matches no label (`is_inside`).
Labels are scored after segmentation, against the mask read back from the row's PNG, so
inference never waits for the label listing. How rows meet their label paths depends on the
runner:
- on several workers (Dataflow), in a CoGroupByKey: no worker holds every label path (a dict
  side input would, and at 100 million labels it would not fit), and the shuffle is the
  service's;
- in one process (the local runner), which holds a shuffle's data in memory, by listing the
  label folder of each row's key as rows ask for it, a few folders' listings kept
  (`LabelFolders`): rows come in the order their files were listed, folder after folder, so
  each label folder is listed about once and memory does not grow with the labels' number
  (BENCHMARKS.md, "Scale").

A label is read as an input is: a local path that is not a regular file (a FIFO, a link to a
device, a dangling link) is never opened, and no more than --max-file-bytes is read; either
is that row's `gt_error`. Paths in a `gt_error` are `sources.encodable`.
"""

from __future__ import annotations

import collections
import io
import os
import posixpath
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam import constants
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord

ROWS = "rows"
LABELS = "labels"


def label_key(name: str) -> str:
  """Labels match images by name without extension: 'cats/felix.jpg' <-> 'cats/felix.png'."""
  return posixpath.splitext(name)[0]


def is_inside(key: str) -> bool:
  """Whether `key` is a plain relative path below a root, as a listing gives them: no '..' or
  '.' part, no empty part (absolute, '//'), no backslash (a separator elsewhere) and no NUL.
  A key comes from input data (a tf.Example's filename) and may be anything."""
  if not key or "\\" in key or "\0" in key:
    return False
  return all(part not in ("", ".", "..") for part in key.split("/"))


def row_key(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
  return label_key(row["filename"] or row["image_id"]), row


def label_entry(metadata, root: str) -> tuple[str, str]:
  return label_key(sources.relative_id(metadata.path, root)), metadata.path


def coded_label_entry(metadata, root: str) -> tuple[str, bytes]:
  """`label_entry` with the path as bytes: a local name that is not UTF-8 (held as surrogates)
  cannot go through Beam's string coder, and must still be opened as listed."""
  key, path = label_entry(metadata, root)
  return key, os.fsencode(path)


def read_label(
  paths: list[str], max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES
) -> tuple[Optional[bytes], Optional[str]]:
  """(label bytes, None) from the one label file in `paths`, or (None, why not): also for a
  path that is not a regular file (never opened) or a file over `max_file_bytes` (read no
  further)."""
  if len(paths) > 1:  # 'felix.png' and 'felix.jpg' for 'felix.jpg': which one is meant?
    shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    return None, _why_not(f"{len(paths)} label files match this image: {shown}")
  (path,) = paths
  refusal = sources.not_a_regular_file(path)  # a FIFO would block, /dev/zero never end
  if refusal is not None:
    return None, _why_not(f"cannot read label: {refusal}")
  try:
    with FileSystems.open(path) as f:
      # Bounded whatever the listing said: a .gz label is read decompressed.
      label = tfrecord.read_up_to(f, max_file_bytes + 1)
  except Exception as error:  # the mask row still counts
    return None, _why_not(f"cannot read label {path}: {type(error).__name__}: {error}")
  if len(label) > max_file_bytes:
    return None, _why_not(
      f"label over the {max_file_bytes}-byte file limit, read no further: {path}"
    )
  return label, None


def _why_not(reason: str) -> str:
  """A row's `gt_error`: text that encodes (paths may not), at most 300 characters."""
  return sources.encodable(reason)[:300]


def _has_ground_truth(row: dict[str, Any]) -> bool:
  """Whether the row was scored already, against a label its own tf.Example carried."""
  return row["gt_pixels"] is not None or row["gt_error"] is not None


def score(
  rows: Iterable[dict[str, Any]],
  paths: list[str],
  context: rows_lib.RunContext,
  max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
) -> Iterator[dict[str, Any]]:
  """Each of `rows` (one label key's), with its ground-truth columns filled from the label
  file in `paths` where there is one and the row was not scored already."""
  label: Optional[bytes] = None
  label_error: Optional[str] = None
  if paths:
    label, label_error = read_label(paths, max_file_bytes)
  for row in rows:
    if not paths or _has_ground_truth(row):
      yield row
      continue
    mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
    yield {**row, **rows_lib.ground_truth_columns(mask, label, context, label_error)}


def score_joined(
  element: tuple[str, dict[str, Iterable]],
  context: rows_lib.RunContext,
  max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
) -> Iterator[dict[str, Any]]:
  """(key, {ROWS: rows, LABELS: label paths as bytes}), a CoGroupByKey's -> the rows, scored."""
  _, joined = element
  paths = sorted(os.fsdecode(path) for path in joined[LABELS])
  return score(joined[ROWS], paths, context, max_file_bytes)


class LabelFolders:
  """Label file paths by label key, listed one folder at a time as they are asked for.

  The listings of the `keep` folders asked for last are kept: in listing order, one listing
  per folder; in any other order, right all the same, with folders listed again.

  Args:
    pattern: the label files' glob (`--ground-truth`).
    keep: how many folders' listings to keep.
  """

  def __init__(self, pattern: str, keep: int = 8):
    self._pattern = pattern
    self._root = sources.pattern_root(pattern)
    self._keep = keep
    self._folders: collections.OrderedDict[str, dict[str, list[str]]] = collections.OrderedDict()

  def paths(self, key: str) -> list[str]:
    """The label files of `key`, sorted; none for a key that is not inside the root
    (`is_inside`): its folder would be listed outside the pattern's own files."""
    if not is_inside(key):
      return []
    folder = posixpath.dirname(key)
    listing = self._folders.get(folder)
    if listing is None:
      listing = self._folders[folder] = self._list(folder)
      if len(self._folders) > self._keep:
        self._folders.popitem(last=False)
    else:
      self._folders.move_to_end(folder)
    return listing.get(key, [])

  def _list(self, folder: str) -> dict[str, list[str]]:
    children = self._root + (folder + "/" if folder else "") + "*"
    filesystem = FileSystems.get_filesystem(self._pattern)
    listing: dict[str, list[str]] = collections.defaultdict(list)
    for metadata in filesystem.match_files(sources.iter_matches(children), self._pattern):
      key, path = label_entry(metadata, self._root)
      if posixpath.dirname(key) == folder:  # the one folder's files, as the whole listing has
        listing[key].append(path)
    return {key: sorted(paths) for key, paths in listing.items()}


class ScoreFromFolders(beam.DoFn):
  """A row -> itself, scored against the label files its key has (`LabelFolders`).

  Args:
    pattern: the label files' glob.
    context: the run's `rows.RunContext`.
    max_file_bytes: larger label files are not read (--max-file-bytes).
  """

  def __init__(
    self,
    pattern: str,
    context: rows_lib.RunContext,
    max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
  ):
    self._pattern = pattern
    self._context = context
    self._max_file_bytes = max_file_bytes

  def setup(self):
    self._labels = LabelFolders(self._pattern)

  def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    key, _ = row_key(row)
    try:
      paths = self._labels.paths(key)
    except Exception as error:  # the row still counts; its gt_error says why it has no score
      if not _has_ground_truth(row):
        reason = f"cannot list the label files for {key}: {type(error).__name__}: {error}"
        row = {**row, **rows_lib.ground_truth_columns(None, None, self._context, _why_not(reason))}
      yield row
      return
    yield from score([row], paths, self._context, self._max_file_bytes)


class JoinLabelFiles(beam.PTransform):
  """Segments rows -> the same rows, scored against the label files `pattern` matches.

  Args:
    pattern: the label files' glob (`--ground-truth`).
    context: the run's `rows.RunContext`; its label map reads the labels.
    distributed: whether the runner spreads the work over workers (see the module's
      docstring): then a CoGroupByKey, else `ScoreFromFolders`.
    max_file_bytes: larger label files are not read (--max-file-bytes).
  """

  def __init__(
    self,
    pattern: str,
    context: rows_lib.RunContext,
    *,
    distributed: bool = True,
    max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
  ):
    super().__init__()
    self._pattern = pattern
    self._context = context
    self._distributed = distributed
    self._max_file_bytes = max_file_bytes

  def expand(self, rows):
    if not self._distributed:
      return rows | "Score" >> beam.ParDo(
        ScoreFromFolders(self._pattern, self._context, self._max_file_bytes)
      )
    labels = (
      rows.pipeline
      | "LabelsPattern" >> beam.Create([self._pattern])
      | "MatchLabels" >> beam.FlatMap(sources.iter_matches)
      | "LabelKeys" >> beam.Map(coded_label_entry, sources.pattern_root(self._pattern))
    )
    keyed = rows | "RowKeys" >> beam.Map(row_key)
    return (
      {ROWS: keyed, LABELS: labels}
      | "ByKey" >> beam.CoGroupByKey()
      | "Score" >> beam.FlatMap(score_joined, self._context, self._max_file_bytes)
    )
