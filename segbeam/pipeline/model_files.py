"""A model directory on any Beam file system (gs://, ...) as a local directory TensorFlow loads.

TensorFlow reads a SavedModel through its own file systems, which know neither Beam's
configuration nor a storage emulator; Beam's FileSystems are what a pipeline uses for every
other file. So a worker copies a remote export once per process, through FileSystems, into a
local temporary directory, and loads that. Local paths are used where they are.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import logging
import os
import posixpath
import shlex
import shutil
import tempfile
import threading
import time

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from segbeam.model import config as config_lib
from segbeam.model import contract

_LOG = logging.getLogger(__name__)
_GLOB_CHARACTERS = frozenset("*?[")
_COPY_CHUNK_BYTES = 8 << 20
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

# One lock for all copies: a process copies one or two models in its life, and threads asking
# for the model being copied must wait for it anyway.
_LOCK = threading.Lock()
_LOCAL_COPIES: dict[str, str] = {}
_cache_root: str | None = None


def is_local(path: str) -> bool:
  """True for a path TensorFlow can read as it is: no scheme, or file://."""
  return FileSystems.get_scheme(path) in (None, "file")


def local_model_dir(model_dir: str) -> str:
  """`model_dir` itself when local; otherwise a local copy, made on the first call in this
  process and reused by every later call (and thread) asking for the same path."""
  if is_local(model_dir):
    return model_dir
  model_dir = model_dir.rstrip("/")
  with _LOCK:
    local = _LOCAL_COPIES.get(model_dir)
    if local is None:
      local = _copy_to_local(model_dir)
      _LOCAL_COPIES[model_dir] = local
    return local


def read_metadata(model_dir: str) -> contract.ModelMetadata:
  """The export's `segbeam_model.json`, read through Beam's FileSystems (any scheme), without
  copying the model."""
  model_dir = model_dir.rstrip("/")
  try:
    return contract.read_metadata(
      model_dir, exists=FileSystems.exists, open_file=_open_text, join=FileSystems.join
    )
  except FileNotFoundError as error:
    raise FileNotFoundError(_not_an_export(model_dir)) from error


def _open_text(path: str) -> io.TextIOWrapper:
  return io.TextIOWrapper(
    FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED), encoding="utf-8"
  )


def _not_an_export(model_dir: str) -> str:
  """Why `model_dir` is no export; for a Keras file or a plain SavedModel, with the
  `segbeam export` command that makes one of it."""
  if model_dir.lower().endswith(KERAS_SUFFIXES):
    what = "a Keras model file"
    output = os.path.splitext(model_dir)[0] + "-export"
  elif FileSystems.exists(FileSystems.join(model_dir, "saved_model.pb")):
    what = f"a SavedModel without {contract.METADATA_FILE}"
    output = model_dir + "-export"
  else:
    return f"{model_dir} is not a segbeam export: {contract.METADATA_FILE} is missing"
  source, copy = model_dir, ""
  if not is_local(model_dir):  # `segbeam export` reads local files
    source, output = posixpath.basename(source), posixpath.basename(output)
    copy = "copy it here and "
  conventions = config_lib.PREPROCESS_CONVENTIONS
  how = ", ".join(conventions[:-1]) + " or " + conventions[-1]
  return (
    f"{model_dir} is {what}, not a segbeam export; {copy}make one with: segbeam export "
    f"{shlex.quote(source)} --output {shlex.quote(output)} --preprocess "
    f"<how it was trained: {how}>"
  )


def _process_cache_root() -> str:
  global _cache_root
  if _cache_root is None:
    _cache_root = tempfile.mkdtemp(prefix="segbeam-models-")
    atexit.register(shutil.rmtree, _cache_root, ignore_errors=True)
  return _cache_root


def _copy_to_local(model_dir: str) -> str:
  if _GLOB_CHARACTERS & set(model_dir):
    # FileSystems.match has no way to quote them: the listing below would be a different set.
    raise ValueError(f"model path {model_dir!r} contains glob characters (*, ?, [)")
  started = time.monotonic()
  prefix = model_dir + "/"
  files = FileSystems.match([prefix + "**"])[0].metadata_list
  if not files:
    raise FileNotFoundError(f"no files under model path {model_dir}")
  target = tempfile.mkdtemp(prefix="model-", dir=_process_cache_root())
  try:
    total_bytes = sum(_copy_file(metadata, prefix, target) for metadata in files)
  except BaseException:
    shutil.rmtree(target, ignore_errors=True)  # nothing half-copied stays behind
    raise
  _LOG.info(
    "copied model %s to %s: %d files, %.1f MB in %.1f s",
    model_dir,
    target,
    len(files),
    total_bytes / 1e6,
    time.monotonic() - started,
  )
  return target


def _copy_file(metadata, prefix: str, target: str) -> int:
  """Copies one listed object under `target`; returns its size."""
  relative = metadata.path[len(prefix) :]
  destination = os.path.normpath(os.path.join(target, relative))
  if destination != target and not destination.startswith(target + os.sep):
    raise ValueError(f"refusing to copy {metadata.path!r}: it would land outside the copy")
  if not relative or relative.endswith("/"):  # a folder placeholder object some tools create
    os.makedirs(destination, exist_ok=True)
    return 0
  os.makedirs(os.path.dirname(destination), exist_ok=True)
  with (
    FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as src,
    open(destination, "wb") as dst,
  ):
    shutil.copyfileobj(src, dst, _COPY_CHUNK_BYTES)
  return metadata.size_in_bytes


# (real path, each graph and variables file's size and modification time) -> digest: a launch
# asks once per export, and a file changed since is read again.
_DIGESTS: dict[tuple, str] = {}


def files_digest(local_dir: str) -> str:
  """'sha256:...' of the local export's graph and variables (names and bytes): what its
  inference computes with, whatever its segbeam_model.json says its version is."""
  paths = [os.path.join(local_dir, "saved_model.pb")]
  variables = os.path.join(local_dir, "variables")
  if os.path.isdir(variables):
    paths += sorted(os.path.join(variables, name) for name in os.listdir(variables))
  stats = [os.stat(path) for path in paths]
  key = (os.path.realpath(local_dir), tuple((s.st_size, s.st_mtime_ns) for s in stats))
  if key not in _DIGESTS:
    digest = hashlib.sha256()
    for path in paths:
      digest.update(os.path.relpath(path, local_dir).encode() + b"\0")
      with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK_BYTES):
          digest.update(chunk)
    _DIGESTS[key] = "sha256:" + digest.hexdigest()
  return _DIGESTS[key]
