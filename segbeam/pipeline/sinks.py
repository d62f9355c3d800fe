"""Writing a run's output: segments and errors Parquet, optional mask files, the manifest.

Nothing lost, nothing doubled, when a runner retries a failed bundle:
- Parquet goes through Beam's file sinks: each bundle attempt writes its own temporary file, and
  only the attempts the runner committed are renamed to final names on finalize.
- A mask file's name derives only from the image id, so a retry rewrites the same file; on a
  local or other non-object file system it is written under a temporary name and renamed, so
  no reader ever sees half a PNG (an object store's upload is already all or nothing).
- The manifest is written last, the same way, from the sinks' final file names, and only when
  every input is accounted for, counting the rows the Parquet files really hold.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from typing import Any, Callable, Iterator, Mapping, Optional

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window

from segbeam.pipeline import constants
from segbeam.pipeline import output_claim

# Object stores make an object visible only once its upload completed: no temporary name needed.
_ATOMIC_CREATE_SCHEMES = ("gs", "s3", "azfs")
PARTIAL_SUFFIX = ".partial"
CONSERVATION_RULE = (
  "inputs_seen + resumed_inputs_gone == segmented + failed + skipped_existing, where "
  "segmented and failed are the rows the segments and errors Parquet files hold, equal to "
  "the pipeline's counts; with --mask-files, one mask per segmented image; "
  "resumed (inputs an earlier attempt did) + resumed_inputs_gone (inputs it did that are "
  "gone since, their rows kept) == from_earlier_attempts (its rows)"
)
_LOG = logging.getLogger(__name__)


def mask_file_name(image_id: str) -> str:
  """A flat, safe file name for an image id: readable part + hash of the full id.

  Only [A-Za-z0-9._-] survive, there is no directory part and no leading dot, so the name cannot
  leave the masks folder; the hash keeps ids that sanitise alike apart.
  """
  readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._-")[:100] or "image"
  digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
  return f"{readable}.{digest}.png"


def write_file(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
  """Writes `data` to `path` all at once or not at all, replacing what is there.

  Elsewhere than on an object store, it goes to a temporary name beside `path` first,
  '.<name>.<random>.partial', then is renamed over it: a rename replaces a link at `path`,
  never writes through it. The name is unpredictable and, locally, created only where nothing
  is (no link planted under it is followed). A file left by a process killed mid-write is
  removed by the next --resume or --overwrite (`remove_partials`), or with the journal.
  """
  if FileSystems.get_scheme(path) in _ATOMIC_CREATE_SCHEMES:
    with FileSystems.create(
      path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
      f.write(data)
    return
  folder, name = FileSystems.split(path)
  target = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
  if FileSystems.get_scheme(path) is None:
    _write_local(target, data)
    try:
      os.replace(target, path)
    except BaseException:
      _remove_quietly(target)
      raise
    return
  with FileSystems.create(
    target, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
  ) as f:
    f.write(data)
  FileSystems.rename([target], [path])


def _write_local(path: str, data: bytes) -> None:
  """Creates the new file `path` holding `data`: O_EXCL and O_NOFOLLOW, so a name that exists,
  a link above all, fails instead of being written through."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
  fd = os.open(path, flags, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
  except BaseException:
    _remove_quietly(path)
    raise


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


class WriteMaskFile(beam.DoFn):
  """Writes a segments row's mask PNG to DIR/masks/<mask_file_name>; passes its path on."""

  def __init__(self, output_dir: str):
    self._masks_dir = FileSystems.join(output_dir, constants.MASKS_DIR)

  def process(self, row: Mapping[str, Any]):
    path = FileSystems.join(self._masks_dir, mask_file_name(row["image_id"]))
    write_file(path, row["mask_png"], mime_type="image/png")
    yield path


def parquet_rows(path: str) -> int:
  """Rows in a Parquet file, from its footer alone."""
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return pq.ParquetFile(f).metadata.num_rows


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_manifest(
  base: Mapping[str, Any],
  *,
  seen: int,
  segmented: int,
  failures: list[tuple[tuple[str, str], int]],
  segment_files: list[str],
  error_files: list[str],
  segments_rows: int,
  errors_rows: int,
  skipped_existing: int = 0,
  masks_written: int = 0,
  mask_files: bool = False,
  resumed: int = 0,
  replayed: int = 0,
  resumed_gone: int = 0,
) -> dict[str, Any]:
  """The manifest of a run. `segmented`, `failed` and `masks_written` are what the pipeline
  counted; `segments_rows` and `errors_rows` what the written tables hold; `resumed`, the
  inputs set aside as done by an earlier attempt, `replayed`, the rows of those attempts
  written to the tables, and `resumed_gone`, the inputs of such rows that this attempt did not
  see, gone since (all 0 for a run in one attempt). The conservation check holds when every
  input seen, and every input gone since an earlier attempt did it, is in exactly one table
  or was skipped, the tables, the counts and the mask files agree, and each input an earlier
  attempt did has its one row from it."""
  failed = sum(count for _, count in failures)
  by_stage: dict[str, int] = {}
  for (stage, _), count in failures:
    by_stage[stage] = by_stage.get(stage, 0) + count
  tables_match_counts = segments_rows == segmented and errors_rows == failed
  masks_match = masks_written == (segmented if mask_files else 0)
  return {
    **base,
    "status": "complete",
    "finished": _now(),
    "counts": {
      "inputs_seen": seen,
      "segmented": segmented,
      "failed": failed,
      "skipped_existing": skipped_existing,
      "from_earlier_attempts": replayed,
      "resumed_inputs_gone": resumed_gone,
      "failed_by_stage": dict(sorted(by_stage.items())),
      "failed_by_reason": [
        {"stage": stage, "error_type": error_type, "count": count}
        for (stage, error_type), count in sorted(failures)
      ],
    },
    "conservation": {
      "inputs_seen": seen,
      "segmented": segments_rows,
      "failed": errors_rows,
      "skipped_existing": skipped_existing,
      "masks_written": masks_written,
      "resumed": resumed,
      "resumed_inputs_gone": resumed_gone,
      "from_earlier_attempts": replayed,
      "holds": (
        seen + resumed_gone == segments_rows + errors_rows + skipped_existing
        and tables_match_counts
        and masks_match
        and resumed + resumed_gone == replayed
      ),
      "rule": CONSERVATION_RULE,
    },
    "files": {
      constants.SEGMENTS_DIR: sorted(segment_files),
      constants.ERRORS_DIR: sorted(error_files),
      constants.MASKS_DIR: masks_written,
    },
  }


class UnbalancedRunError(RuntimeError):
  """Inputs were lost or doubled: the run must fail, and leave no manifest."""


# The run's counts come from one combine (`transforms.WriteOutput`): every counted
# element becomes a key naming what it counts, (what, stage, error type), the last two set only
# for failures. Nothing counted, no key: its count is 0.
COUNT_RECORDS = "records"  # records the reader produced
COUNT_READ_FAILURES = "read_failures"  # inputs the reader could not make a record of
COUNT_SEGMENTED = "segmented"  # rows sent to the segments table
COUNT_SKIPPED = "skipped_existing"  # records skipped as segmented by an earlier run
COUNT_RESUMED = "resumed"  # inputs set aside as in an earlier attempt's journal (--resume)
COUNT_REPLAYED = "replayed"  # rows of that journal written to the tables
COUNT_RESUMED_GONE = "resumed_inputs_gone"  # inputs of those rows not seen by this attempt
COUNT_MASK_FILES = "mask_files"  # mask files written
COUNT_FAILED = "failed"  # failures sent to the errors table, by stage and type
CountKey = tuple[str, str, str]


def count_key(unused_element: Any, what: str) -> CountKey:
  return what, "", ""


def error_count_key(error_row: Mapping[str, Any]) -> CountKey:
  return COUNT_FAILED, error_row["stage"], error_row["error_type"]


class CountPerBundle(beam.DoFn):
  """Elements -> (CountKey, how many) per bundle, emitted as the bundle finishes: a few
  partial counts per bundle cross to the combine that sums them, instead of one keyed element
  per input (each encoded and decoded between stages, since the counts flatten several
  PCollections). A retried bundle's partial counts are dropped with its other outputs.

  Args:
    key: element -> its CountKey.
  """

  def __init__(self, key: Callable[[Any], CountKey]):
    self._key = key

  def start_bundle(self):
    self._counts: collections.Counter = collections.Counter()

  def process(self, element) -> Iterator:
    self._counts[self._key(element)] += 1
    return iter(())

  def finish_bundle(self) -> Iterator:
    for key, count in self._counts.items():
      yield window.GlobalWindows.windowed_value((key, count))


class WriteManifest(beam.DoFn):
  """Runs once, after both Parquet sinks finalized (their file names are among its side
  inputs) and the run's counts are in (`CountKey`s with their counts). Raises instead of
  writing when the conservation check does not hold.

  The rows each final file holds, what readers will see, are read here from the files'
  footers, not taken from a step over the file names: as another side input such a step's
  output depended on the runner's scheduling (Beam's BundleBasedDirectRunner ran this DoFn
  with the file names but before the rows step, and the check failed a complete run).
  """

  def __init__(self, output_dir: str, base: Mapping[str, Any]):
    self._output = output_dir
    self._path = FileSystems.join(output_dir, constants.MANIFEST_FILE)
    self._base = dict(base)

  def process(self, unused_element, counts, segment_files, error_files):
    started = time.monotonic()
    by_key = dict(counts)
    segment_files, error_files = list(segment_files), list(error_files)

    def count(what: str) -> int:
      return by_key.get((what, "", ""), 0)

    failures = [
      ((stage, error_type), n)
      for (what, stage, error_type), n in by_key.items()
      if what == COUNT_FAILED
    ]
    segments_rows = sum(map(parquet_rows, segment_files))
    errors_rows = sum(map(parquet_rows, error_files))
    manifest = build_manifest(
      self._base,
      seen=count(COUNT_RECORDS) + count(COUNT_READ_FAILURES),
      segmented=count(COUNT_SEGMENTED),
      failures=failures,
      segment_files=segment_files,
      error_files=error_files,
      segments_rows=segments_rows,
      errors_rows=errors_rows,
      skipped_existing=count(COUNT_SKIPPED),
      masks_written=count(COUNT_MASK_FILES),
      mask_files=bool(self._base.get("options", {}).get("mask_files")),
      resumed=count(COUNT_RESUMED),
      replayed=count(COUNT_REPLAYED),
      resumed_gone=count(COUNT_RESUMED_GONE),
    )
    if not manifest["conservation"]["holds"]:
      # A lost or doubled input is a bug. Fail the job (non-zero exit, a failed Dataflow job)
      # and write no manifest, so that every reader treats the output as incomplete.
      message = (
        f"inputs not accounted for, no manifest written: {json.dumps(manifest['conservation'])}"
      )
      _LOG.error(message)
      raise UnbalancedRunError(message)
    write_file(self._path, json.dumps(manifest, indent=2).encode(), mime_type="application/json")
    # Complete: the rows made durable while it went, and its claim on the folder, go.
    delete_entries(self._output, [constants.JOURNAL_DIR])
    output_claim.release(self._output)
    # The one step that reads every output file's footer: its time is watched as runs grow.
    _LOG.info(
      "wrote the manifest (%d Parquet files, %d rows) in %.2f s",
      len(segment_files) + len(error_files),
      segments_rows + errors_rows,
      time.monotonic() - started,
    )
    yield manifest


def _on_object_store(path: str) -> bool:
  return FileSystems.get_scheme(path) in _ATOMIC_CREATE_SCHEMES


def _entry_exists(path: str) -> bool:
  """Whether a file or a folder is at `path`; on an object store, where folders are only name
  prefixes, whether an object is, or any object is under it."""
  if FileSystems.exists(path):
    return True
  if not _on_object_store(path):
    return False
  return bool(FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def entries_present(output: str, entries=constants.OUTPUT_ENTRIES) -> list[str]:
  """Which of a run's `entries` (constants.OUTPUT_ENTRIES) exist in `output`: any of them means
  a run, finished (with the manifest) or not."""
  return [entry for entry in entries if _entry_exists(FileSystems.join(output, entry))]


def delete_entries(output: str, entries) -> None:
  """Deletes `entries` of `output` (files or folders, each with all it holds) where present.
  Locally a link among them, or in a folder among them, is removed itself: what it points to
  is never touched."""
  if not _on_object_store(output) and FileSystems.get_scheme(output) is None:
    for entry in entries:
      _delete_local(os.path.join(output, entry))
    return
  for entry in entries_present(output, entries):
    path = FileSystems.join(output, entry)
    if _on_object_store(path) and not FileSystems.exists(path):
      path = path.rstrip("/") + "/"  # a prefix: every object under it
    FileSystems.delete([path])


def _delete_local(path: str) -> None:
  try:
    mode = os.lstat(path).st_mode
  except FileNotFoundError:
    return
  if stat.S_ISDIR(mode):
    shutil.rmtree(path)  # removes the links it holds, never follows them
  else:
    os.remove(path)  # a file, or a link itself


# `write_file`'s temporary names: '.<name>.<32 hex digits>.partial'.
_PARTIAL_NAME = re.compile(r"\..+\.[0-9a-f]{32}" + re.escape(PARTIAL_SUFFIX))


def is_partial_name(name: str) -> bool:
  """Whether `name` is one of `write_file`'s temporary names."""
  return _PARTIAL_NAME.fullmatch(name) is not None


def remove_partials(output: str) -> None:
  """Removes what `write_file` calls killed mid-write left in a local `output`: temporary
  files beside the manifest and among the masks (a journal goes whole once the run
  completes). A retry writes under a new temporary name, so nothing else would."""
  if FileSystems.get_scheme(output) is not None:
    return  # on an object store an upload is all or nothing: no temporary names
  for folder in (output, os.path.join(output, constants.MASKS_DIR)):
    try:
      names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
      continue
    for name in names:
      if is_partial_name(name):
        _remove_quietly(os.path.join(folder, name))  # a link is removed, not followed


def read_manifest(output: str) -> Optional[dict[str, Any]]:
  """The manifest of the run in `output`, or None when it has none (no completed run)."""
  path = FileSystems.join(output, constants.MANIFEST_FILE)
  if not FileSystems.exists(path):
    return None
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return json.loads(f.read())
