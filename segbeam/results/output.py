"""A completed run's output folder (local or gs://) as Arrow datasets and DuckDB views.

Only a folder with a manifest is a completed run: `segments` and `errors` of an unfinished or
killed run are partial, so every reader here refuses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import shlex
from typing import Any, Optional

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from segbeam import exits
from segbeam.messages import printable
from segbeam.pipeline import layout

TABLES = layout.TABLES


class IncompleteOutputError(exits.InvocationError):
  """The folder holds no completed run: a bad invocation of a command that reads one."""


class OutputNotFoundError(IncompleteOutputError, FileNotFoundError):
  """There is no such folder: nothing at that local path, or no object under that gs://
  prefix (GCS has no folders, only object names). Still an IncompleteOutputError, for callers
  that only ask whether a completed run is there."""


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
  """pyarrow filesystem and the path inside it. gs:// honours STORAGE_EMULATOR_HOST, as the
  Google Cloud clients do."""
  if path.startswith("gs://"):
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
      scheme, _, host = emulator.rpartition("://")
      fs = pafs.GcsFileSystem(endpoint_override=host, scheme=scheme or "http", anonymous=True)
    else:
      fs = pafs.GcsFileSystem()
    return fs, path[len("gs://") :].rstrip("/")
  return pafs.LocalFileSystem(), os.path.abspath(path)


@dataclasses.dataclass(frozen=True)
class Unfinished:
  """What an unfinished run left in its folder: its claim (`_claim.json`, as a dict; None
  where there is none) and the rows its journal made durable."""

  path: str
  claim: Optional[dict[str, Any]]
  segments_rows: int
  errors_rows: int

  def resume_command(self) -> Optional[str]:
    """The claim's command line as `segbeam ...`, with --resume and without --trust-model:
    the claim is a file anyone may write, so the hint never hands over a trust the user did
    not choose (`trusted_model` says whether it held one)."""
    command = list((self.claim or {}).get("command") or [])
    for i, word in enumerate(command):
      if word in ("run", "submit"):  # a demo is run again, not resumed
        args = [str(a) for a in command[i:] if not _trusts_model(a)]
        return shlex.join(["segbeam", *args, *([] if "--resume" in args else ["--resume"])])
    return None

  def trusted_model(self) -> bool:
    """Whether the claim's command line ran with --trust-model."""
    return any(_trusts_model(word) for word in (self.claim or {}).get("command") or [])

  def lines(self) -> list[str]:
    """What `segbeam summary` prints of it, every line safe to print (`printable`)."""
    claim = self.claim or {}
    attempts = claim.get("attempts") or []
    durable = self.segments_rows + self.errors_rows
    lines = [
      f"{self.path} holds an unfinished run (no {layout.MANIFEST_FILE}): "
      + (
        f"run {claim.get('run_id')}, started {claim.get('started')} on {claim.get('host')}, "
        f"attempt {len(attempts)}"
        if claim
        else "no claim says which"
      ),
      f"rows durable so far: {durable:,} ({self.segments_rows:,} segmented, "
      f"{self.errors_rows:,} failed); the inputs' total is counted as a run lists them",
    ]
    command = self.resume_command()
    if command:
      lines.append(f"continue it with: {command}")
      if self.trusted_model():
        lines.append(
          "note: the earlier attempt ran with --trust-model (its model's graph not checked); "
          "add it to the command above only if you trust that --model"
        )
    return [printable(line) for line in lines]


def _trusts_model(word: object) -> bool:
  return str(word) == "--trust-model" or str(word).startswith("--trust-model=")


def unfinished(path: str) -> Optional[Unfinished]:
  """What an unfinished run left in `path`; None where it left no claim and no journal."""
  fs, root = _filesystem(path.rstrip("/"))
  claim = None
  claim_path = posixpath.join(root, layout.CLAIM_FILE)
  if fs.get_file_info(claim_path).type == pafs.FileType.File:
    with fs.open_input_stream(claim_path) as f:
      try:
        claim = json.loads(f.read())
      except ValueError:
        claim = {}
  rows = {}
  for table in TABLES:
    selector = pafs.FileSelector(
      posixpath.join(root, layout.JOURNAL_DIR, table), allow_not_found=True
    )
    parts = [i.path for i in fs.get_file_info(selector) if i.path.endswith(".parquet")]
    rows[table] = sum(pq.read_metadata(fs.open_input_file(p)).num_rows for p in parts)
  if claim is None and not any(rows.values()):
    return None
  return Unfinished(path.rstrip("/"), claim, rows[TABLES[0]], rows[TABLES[1]])


class RunOutput:
  """The output of one completed `segbeam run`."""

  def __init__(self, path: str):
    self.path = path.rstrip("/")
    self._fs, self._root = _filesystem(self.path)
    manifest_path = posixpath.join(self._root, layout.MANIFEST_FILE)
    if self._fs.get_file_info(manifest_path).type == pafs.FileType.NotFound:
      self._refuse_without_manifest(path)
    with self._fs.open_input_stream(manifest_path) as f:
      self.manifest: dict[str, Any] = json.loads(f.read())

  def _refuse_without_manifest(self, path: str) -> None:
    """Raises the reason there is no manifest: no folder at all, a file, or an unfinished run."""
    folder = self._fs.get_file_info(self._root).type
    if folder == pafs.FileType.NotFound:
      why = "no object has that prefix" if path.startswith("gs://") else "no such folder"
      raise OutputNotFoundError(f"{path} does not exist ({why})")
    if folder == pafs.FileType.File:
      raise IncompleteOutputError(f"{path} is a file, not a run's output folder")
    raise IncompleteOutputError(
      f"{path} has no {layout.MANIFEST_FILE}: the run did not complete (still running, "
      "killed, or failed), so its tables would be partial"
    )

  @property
  def class_names(self) -> list[str]:
    return list(self.manifest["model"]["class_names"])

  def dataset(self, table: str) -> ds.Dataset:
    if table not in TABLES:
      raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    return ds.dataset(
      posixpath.join(self._root, table),
      format="parquet",
      filesystem=self._fs,
      partitioning="hive",
      exclude_invalid_files=False,
      ignore_prefixes=[".", "_", "beam-temp"],
    )

  def files(self, folder: str) -> list[str]:
    """Every file under `folder` of this output, recursively, as sorted paths relative to the
    output: what a reader globbing the folder could pick up."""
    selector = pafs.FileSelector(
      posixpath.join(self._root, folder), allow_not_found=True, recursive=True
    )
    return sorted(
      posixpath.relpath(info.path, self._root)
      for info in self._fs.get_file_info(selector)
      if info.type == pafs.FileType.File
    )

  def read_bytes(self, relative_path: str) -> bytes:
    with self._fs.open_input_stream(posixpath.join(self._root, relative_path)) as f:
      return f.read()

  def connect(
    self, connection: Optional[duckdb.DuckDBPyConnection] = None
  ) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views `segments` and `errors` over this output."""
    con = connection or duckdb.connect()
    for table in TABLES:
      con.register(table, self.dataset(table))
    return con
