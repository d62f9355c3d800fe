"""Writing a run's files all at once or not at all (`write_file`): its mask files
(`WriteMaskFile`), its manifest and its journal's files (`segbeam.run`).

Nothing lost, nothing doubled, when a runner retries a failed bundle:
- The Parquet tables go through Beam's file sinks (`transforms.WriteSegments`): each bundle
  attempt writes its own temporary file, and only the attempts the runner committed are
  renamed to final names on finalize.
- A mask file's name derives only from the image id, so a retry rewrites the same file; on a
  local or other non-object file system it is written under a temporary name and renamed, so
  no reader ever sees half a PNG (an object store's upload is already all or nothing).
- The manifest (`segbeam.run.manifest`) is written last, the same way.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from segbeam.pipeline import layout


def write_file(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
  """Writes `data` to `path` all at once or not at all, replacing what is there.

  Elsewhere than on an object store, it goes to a temporary name beside `path` first,
  '.<name>.<random>.partial', then is renamed over it: a rename replaces a link at `path`,
  never writes through it. The name is unpredictable and, locally, created only where nothing
  is (no link planted under it is followed). A file left by a process killed mid-write is
  removed by the next --resume or --overwrite (`layout.remove_partials`), or with the journal.
  """
  if layout.on_object_store(path):
    with FileSystems.create(
      path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
      f.write(data)
    return
  folder, name = FileSystems.split(path)
  target = FileSystems.join(folder, layout.partial_name(name))
  if FileSystems.get_scheme(path) is None:
    _write_local(target, data)
    try:
      os.replace(target, path)
    except BaseException:
      layout.remove_quietly(target)
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
    layout.remove_quietly(path)
    raise


class WriteMaskFile(beam.DoFn):
  """Writes a segments row's mask PNG to DIR/masks/<mask_file_name>; passes its path on."""

  def __init__(self, output_dir: str):
    self._masks_dir = FileSystems.join(output_dir, layout.MASKS_DIR)

  def process(self, row: Mapping[str, Any]):
    path = FileSystems.join(self._masks_dir, layout.mask_file_name(row["image_id"]))
    write_file(path, row["mask_png"], mime_type="image/png")
    yield path
