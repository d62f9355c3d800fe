"""Writing a run's output: segments and errors Parquet, optional mask files, the manifest.

Parquet goes through Beam's file sinks (temporary files, renamed on finalize), so a retried
bundle never duplicates rows. Mask files have names derived only from the image id, so a retry
rewrites the same file. The manifest is written last, from the sinks' final file names, and only
when every input is accounted for.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import Any, Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from segbeam.pipeline import records

SEGMENTS_DIR = "segments"
ERRORS_DIR = "errors"
MASKS_DIR = "masks"
MANIFEST_FILE = "manifest.json"
OUTPUT_ENTRIES = (SEGMENTS_DIR, ERRORS_DIR, MASKS_DIR, MANIFEST_FILE)


def mask_file_name(image_id: str) -> str:
  """A flat, safe file name for an image id: readable part + hash of the full id.

  Only [A-Za-z0-9._-] survive, there is no directory part and no leading dot, so the name cannot
  leave the masks folder; the hash keeps ids that sanitise alike apart.
  """
  readable = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._-")[:100] or "image"
  digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
  return f"{readable}.{digest}.png"


class WriteMaskFile(beam.DoFn):
  """Writes a segments row's mask PNG to DIR/masks/<mask_file_name>; passes nothing on."""

  def __init__(self, output_dir: str):
    self._masks_dir = FileSystems.join(output_dir, MASKS_DIR)

  def process(self, row: Mapping[str, Any]):
    path = FileSystems.join(self._masks_dir, mask_file_name(row["image_id"]))
    with FileSystems.create(path, mime_type="image/png") as f:
      f.write(row["mask_png"])
    yield path


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_manifest(base: Mapping[str, Any], *, seen: int, segmented: int,
                   failures: list[tuple[tuple[str, str], int]], segment_files: list[str],
                   error_files: list[str], masks_written: int = 0) -> dict[str, Any]:
  failed = sum(count for _, count in failures)
  by_stage: dict[str, int] = {}
  for (stage, _), count in failures:
    by_stage[stage] = by_stage.get(stage, 0) + count
  return {
      **base,
      "status": "complete",
      "finished": _now(),
      "counts": {
          "inputs_seen": seen, "segmented": segmented, "failed": failed,
          "failed_by_stage": dict(sorted(by_stage.items())),
          "failed_by_reason": [{"stage": stage, "error_type": error_type, "count": count}
                               for (stage, error_type), count in sorted(failures)],
      },
      "conservation": {"holds": seen == segmented + failed,
                       "rule": "inputs_seen == segmented + failed"},
      "files": {SEGMENTS_DIR: sorted(segment_files), ERRORS_DIR: sorted(error_files),
                MASKS_DIR: masks_written},
  }


class WriteManifest(beam.DoFn):
  """Runs once, after both Parquet sinks finalized (their file names are its side inputs)."""

  def __init__(self, output_dir: str, base: Mapping[str, Any]):
    self._path = FileSystems.join(output_dir, MANIFEST_FILE)
    self._base = dict(base)

  def process(self, unused_element, seen, segmented, failures, segment_files, error_files,
              masks_written):
    manifest = build_manifest(self._base, seen=seen, segmented=segmented,
                              failures=list(failures), segment_files=list(segment_files),
                              error_files=list(error_files), masks_written=masks_written)
    if not manifest["conservation"]["holds"]:
      # A lost or doubled input is a bug; without a manifest the output reads as incomplete.
      raise RuntimeError(f"inputs not accounted for: {manifest['counts']}")
    with FileSystems.create(self._path, mime_type="application/json") as f:
      f.write(json.dumps(manifest, indent=2).encode())
    yield manifest


def failure_key(failure: records.Failure) -> tuple[str, str]:
  return failure.stage, failure.error_type
