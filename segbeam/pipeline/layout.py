"""The output folder's layout: what a run writes where, and reading it back.

A run's folder holds the segments and errors tables, the mask files, and its manifest (written
last: a folder without one holds no completed run); while the run goes, its claim on the folder
(`segbeam.run.output_claim`) and the rows made durable so far (`segbeam.run.journal`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from typing import Any, Optional

SEGMENTS_DIR = "segments"
ERRORS_DIR = "errors"
MASKS_DIR = "masks"
MANIFEST_FILE = "manifest.json"
# While a run goes: its claim on the folder (`output_claim`), and the rows made durable so far
# (`journal`), both removed once the manifest is written.
CLAIM_FILE = "_claim.json"
JOURNAL_DIR = "_journal"
OUTPUT_ENTRIES = (SEGMENTS_DIR, ERRORS_DIR, MASKS_DIR, MANIFEST_FILE, CLAIM_FILE, JOURNAL_DIR)
# The two Parquet tables, each a folder of files (and a folder of the journal's): a run's own
# rows in PARTS_PREFIX-NNNNN-of-NNNNN.parquet, the rows an earlier attempt made durable
# (--resume) in RESUMED_PREFIX-*.
TABLES = (SEGMENTS_DIR, ERRORS_DIR)
PARTS_PREFIX = "part"
RESUMED_PREFIX = "resumed"
# What a run checks its folder is writable with (`segbeam.run.job`), under a name of its own.
WRITE_CHECK_PREFIX = ".segbeam-write-check-"
# Names only a run writes at the top of its output folder, beside `OUTPUT_ENTRIES`: the write
# check, and a claim's temporary and replaced files (`output_claim`).
OWN_NAME_PREFIXES = (WRITE_CHECK_PREFIX, CLAIM_FILE + ".")


def is_run_entry(name: str) -> bool:
  """Whether a run writes `name` at the top of its output folder."""
  return name in OUTPUT_ENTRIES or name.startswith(OWN_NAME_PREFIXES)


# Object stores make an object visible only once its upload completed: no temporary name needed.
_ATOMIC_CREATE_SCHEMES = ("gs", "s3", "azfs")


def _filesystems():
  # Beam's file systems, imported where a folder is read or changed: the names above are read
  # by light modules (`segbeam.results`), which must not wait for Beam to import.
  from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

  return FileSystems


def _uncompressed():
  from apache_beam.io.filesystem import CompressionTypes  # noqa: PLC0415  # as above

  return CompressionTypes.UNCOMPRESSED


PARTIAL_SUFFIX = ".partial"


def mask_file_name(image_id: str) -> str:
  """A flat, safe file name for an image id: readable part + hash of the full id.

  Only [A-Za-z0-9._-] survive, there is no directory part and no leading dot, so the name cannot
  leave the masks folder; the hash keeps ids that sanitise alike apart.
  """
  readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._-")[:100] or "image"
  digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
  return f"{readable}.{digest}.png"


def on_object_store(path: str) -> bool:
  """Whether `path` is on an object store, where an upload is all or nothing."""
  filesystems = _filesystems()
  return filesystems.get_scheme(path) in _ATOMIC_CREATE_SCHEMES


def _entry_exists(path: str) -> bool:
  """Whether a file or a folder is at `path`; on an object store, where folders are only name
  prefixes, whether an object is, or any object is under it."""
  filesystems = _filesystems()
  if filesystems.exists(path):
    return True
  if not on_object_store(path):
    return False
  return bool(filesystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def entries_present(output: str, entries=OUTPUT_ENTRIES) -> list[str]:
  """Which of a run's `entries` (OUTPUT_ENTRIES) exist in `output`: any of them means
  a run, finished (with the manifest) or not."""
  filesystems = _filesystems()
  return [entry for entry in entries if _entry_exists(filesystems.join(output, entry))]


def delete_entries(output: str, entries) -> None:
  """Deletes `entries` of `output` (files or folders, each with all it holds) where present.
  Locally a link among them, or in a folder among them, is removed itself: what it points to
  is never touched."""
  filesystems = _filesystems()
  if not on_object_store(output) and filesystems.get_scheme(output) is None:
    for entry in entries:
      _delete_local(os.path.join(output, entry))
    return
  for entry in entries_present(output, entries):
    path = filesystems.join(output, entry)
    if on_object_store(path) and not filesystems.exists(path):
      path = path.rstrip("/") + "/"  # a prefix: every object under it
    filesystems.delete([path])


def _delete_local(path: str) -> None:
  try:
    mode = os.lstat(path).st_mode
  except FileNotFoundError:
    return
  if stat.S_ISDIR(mode):
    shutil.rmtree(path)  # removes the links it holds, never follows them
  else:
    os.remove(path)  # a file, or a link itself


# `sinks.write_file`'s temporary names: '.<name>.<32 hex digits>.partial'.
_PARTIAL_NAME = re.compile(r"\..+\.[0-9a-f]{32}" + re.escape(PARTIAL_SUFFIX))


def partial_name(name: str) -> str:
  """A new temporary name for writing the file `name` beside it, never the same twice."""
  return f".{name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"


def is_partial_name(name: str) -> bool:
  """Whether `name` is one of `sinks.write_file`'s temporary names (`partial_name`)."""
  return _PARTIAL_NAME.fullmatch(name) is not None


def remove_partials(output: str) -> None:
  """Removes what `sinks.write_file` calls killed mid-write left in a local `output`: temporary
  files beside the manifest and among the masks (a journal goes whole once the run
  completes). A retry writes under a new temporary name, so nothing else would."""
  filesystems = _filesystems()
  if filesystems.get_scheme(output) is not None:
    return  # on an object store an upload is all or nothing: no temporary names
  for folder in (output, os.path.join(output, MASKS_DIR)):
    try:
      names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
      continue
    for name in names:
      if is_partial_name(name):
        remove_quietly(os.path.join(folder, name))  # a link is removed, not followed


def read_manifest(output: str) -> Optional[dict[str, Any]]:
  """The manifest of the run in `output`, or None when it has none (no completed run)."""
  filesystems = _filesystems()
  path = filesystems.join(output, MANIFEST_FILE)
  if not filesystems.exists(path):
    return None
  with filesystems.open(path, compression_type=_uncompressed()) as f:
    return json.loads(f.read())


def remove_quietly(path: str) -> None:
  """Removes a local file (a link itself, never what it points to), if it is still there."""
  try:
    os.remove(path)
  except OSError:
    pass
