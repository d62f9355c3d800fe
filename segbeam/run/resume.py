"""Resuming: images that earlier completed runs segmented with this model are not done again.

`--skip-existing OUTPUT` (repeatable) names earlier runs' output folders. The image ids in their
segments tables whose `model_version` is this run's model's become a side input, and records
with such an id are set aside right after reading, before validation: they are never decoded
or inferred, and the manifest counts them as `skipped_existing`. Images that failed before are
in the errors table, not the segments one, so they are tried again; another model version
skips nothing.

Before segbeam 0.2.0 a tf.Example's id was its filename; its row's `source` ('<shard
URI>#<index>') still gives the id it has now ('<shard>#<index>', relative to this run's
pattern root), so such an output is matched by that id too.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.io import parquetio
from apache_beam.io.filesystems import FileSystems

from segbeam.pipeline import layout
from segbeam.pipeline import progress
from segbeam.pipeline import sources

SKIPPED = "skipped"


class NotACompletedRunError(Exception):
  """The folder named by --skip-existing holds no completed run."""


def segment_files(output: str) -> list[str]:
  """The segments files of the completed run in `output`: the ones its manifest names, looked
  up in `output` itself, so that a run folder that was moved or copied still works."""
  manifest = layout.read_manifest(output)
  if manifest is None:
    raise NotACompletedRunError(
      f"--skip-existing {output}: no {layout.MANIFEST_FILE} there, so it holds no completed run"
    )
  return [
    FileSystems.join(output, layout.SEGMENTS_DIR, posixpath.basename(path))
    for path in manifest["files"][layout.SEGMENTS_DIR]
  ]


def _same_model(row: Mapping[str, Any], model_version: str) -> bool:
  return row["model_version"] == model_version


_RECORD_SOURCE = re.compile(r"^(.+)#(\d+)$")


def _id_keys(row: Mapping[str, Any], root: str) -> Iterator[tuple[str, None]]:
  """The ids an earlier row stands for: its own, and for a shard record written before ids
  were places, the id its source gives relative to this run's `root`."""
  yield row["image_id"], None
  match = _RECORD_SOURCE.match(row["source"] or "")
  # Those earlier ids were filenames, without '#'; every place has one (a Parquet row's
  # number is no id where an --id-column names the rows).
  if match and "#" not in row["image_id"]:
    place = f"{sources.relative_id(match[1], root)}#{match[2]}"
    if place != row["image_id"]:
      yield place, None


class _SkipListed(beam.DoFn):
  """Element -> itself, or only its image id on the `tag` output when `ids` (a multimap side
  input keyed by image id) holds it, counted on `counter`."""

  def __init__(self, tag: str, counter: str):
    self._tag = tag
    self._counter = progress.Counter(counter)

  def process(self, element, ids) -> Iterator:
    for _ in ids[element.image_id]:  # a lazy iterable on the Fn API runners
      self._counter.inc()
      yield beam.pvalue.TaggedOutput(self._tag, element.image_id)
      return
    yield element


class SkipIds(beam.PTransform):
  """Elements with an `image_id` -> (those whose id `ids` does not hold, tagged 'kept'; the
  ids of the others, tagged `tag`).

  `ids`, a PCollection of (id, None), is a multimap side input looked up id by id: a worker
  fetches and caches the keys it asks for instead of holding every id in memory.

  Args:
    ids: the ids to set aside.
    tag: the output of the ids set aside.
    counter: the `progress.Counter` that counts them.
  """

  def __init__(self, ids: beam.PCollection, tag: str, counter: str):
    super().__init__()
    self._ids = ids
    self._tag = tag
    self._counter = counter

  def expand(self, elements):
    return elements | "Skip" >> beam.ParDo(
      _SkipListed(self._tag, self._counter), beam.pvalue.AsMultiMap(self._ids)
    ).with_outputs(self._tag, main="kept")


class SkipExisting(beam.PTransform):
  """ImageRecords -> (records to segment, ids of records skipped), tagged 'kept' and SKIPPED
  (`SkipIds`).

  Args:
    previous_outputs: the earlier runs' output folders.
    model_version: this run's model version; rows of other versions are not skipped.
    root: this run's pattern root (`sources.pattern_root`), which ids are relative to.
  """

  def __init__(self, previous_outputs: Sequence[str], model_version: str, root: str = ""):
    super().__init__()
    self._previous_outputs = list(previous_outputs)
    self._model_version = model_version
    self._root = root

  def expand(self, image_records):
    segmented = (
      image_records.pipeline
      | "PreviousOutputs" >> beam.Create(self._previous_outputs)
      | "SegmentsFiles" >> beam.FlatMap(segment_files)
      | "ReadIds" >> parquetio.ReadAllFromParquet(columns=["image_id", "source", "model_version"])
      | "SameModel" >> beam.Filter(_same_model, self._model_version)
      | "ById" >> beam.FlatMap(_id_keys, self._root)
    )
    return image_records | SkipIds(segmented, SKIPPED, progress.SKIPPED)
