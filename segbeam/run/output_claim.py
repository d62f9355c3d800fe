"""One output folder, one run at a time: a run claims its folder before writing anything.

The claim is OUTPUT/_claim.json, created only where none exists: locally by linking a
complete temporary file to that name (link fails where the name exists, so two runs never
both succeed, and a reader never sees half a claim); on gs:// by an upload with the
precondition generation 0 ('only if no such object'). A second run into a claimed folder is
refused with the holder's run id. The claim also records what the run's rows depend on (its
fingerprint) and every attempt so far: `--resume` continues a claim a killed run left, and
refuses one whose fingerprint differs; `--overwrite` replaces it. Taking a claim over is
atomic too: locally by renaming the claim read away (only one taker's rename succeeds), on
gs:// by deleting it with the precondition of the generation read.

A completed run releases its claim once its manifest is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import stat
import uuid
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems
from google.api_core import exceptions
from google.cloud import storage

from segbeam.pipeline import layout
from segbeam.pipeline import sources


class ClaimedError(Exception):
  """Another run holds the output folder's claim (or took it first)."""


class UnreadableClaimError(ValueError):
  """The claim file holds no claim segbeam can read; `token` still names it for `take_over`."""

  def __init__(self, message: str, token: Any):
    super().__init__(message)
    self.token = token


@dataclasses.dataclass(frozen=True)
class Claim:
  """What OUTPUT/_claim.json holds.

  Attributes:
    run_id, started: the run holding the folder now (its latest attempt).
    host, pid: where that attempt runs: a launcher's process for a Dataflow job.
    command: the command line that started it, for `segbeam summary` to say how to resume.
    fingerprint: what the rows depend on (`job.fingerprint`): a resume must match it.
    attempts: every attempt at this output so far, oldest first, as {run_id, started}.
  """

  run_id: str
  started: str
  host: str
  pid: int
  command: tuple[str, ...]
  fingerprint: dict[str, Any]
  attempts: tuple[dict[str, str], ...]

  def to_json(self) -> bytes:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True).encode()

  @classmethod
  def from_json(cls, data: bytes) -> "Claim":
    fields = json.loads(data)
    return cls(
      run_id=fields["run_id"],
      started=fields["started"],
      host=fields["host"],
      pid=int(fields["pid"]),
      command=tuple(fields["command"]),
      fingerprint=dict(fields["fingerprint"]),
      attempts=tuple(dict(a) for a in fields["attempts"]),
    )

  def holder(self) -> str:
    """'run R (started S on host H, process P)', with whether that process is gone when it
    ran on this host."""
    where = f"started {self.started} on {self.host}, process {self.pid}"
    if self.host == socket.gethostname() and not _alive(self.pid):
      where += ", which is no longer running"
    return f"run {self.run_id} ({where})"

  def holder_running_here(self) -> bool:
    """Whether the holder's process is alive on this very host (so surely still running)."""
    return self.host == socket.gethostname() and _alive(self.pid)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def new_claim(
  run_id: str,
  started: str,
  command: tuple[str, ...],
  fingerprint: dict[str, Any],
  earlier: Optional[Claim] = None,
) -> Claim:
  """This process's claim; an attempt after `earlier`'s when it resumes one."""
  attempts = (earlier.attempts if earlier else ()) + ({"run_id": run_id, "started": started},)
  return Claim(
    run_id, started, socket.gethostname(), os.getpid(), tuple(command), fingerprint, attempts
  )


def claim_path(output: str) -> str:
  return FileSystems.join(output, layout.CLAIM_FILE)


def _gcs_client() -> storage.Client:
  """A google-cloud-storage client that honours STORAGE_EMULATOR_HOST as Beam's own does."""
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    return storage.Client.create_anonymous_client()
  return storage.Client()


def _gcs_blob(path: str):
  """The google-cloud-storage blob of gs://bucket/name."""
  bucket, _, name = path[len("gs://") :].partition("/")
  return _gcs_client().bucket(bucket).blob(name)


def _on_gcs(path: str) -> bool:
  return path.startswith("gs://")


def read_claim(output: str) -> tuple[Optional[Claim], Any]:
  """(the claim in `output`, a token naming that version of it for `take_over`), or
  (None, None) where there is none; UnreadableClaimError where the file is no claim."""
  path = claim_path(output)
  if _on_gcs(path):
    blob = _gcs_blob(path)
    try:
      blob.reload()
      token = blob.generation
      data = blob.download_as_bytes(if_generation_match=token)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      # None, or replaced between the two calls: as good as read a moment earlier
      return None, None
  else:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None, None
    # Not the inode: a file system reuses a freed one for the very next file.
    token = hashlib.sha256(data).hexdigest()
  try:
    return Claim.from_json(data), token
  except (ValueError, KeyError, TypeError) as error:
    raise UnreadableClaimError(f"{path} is not a segbeam claim: {error}", token) from error


def claim(output: str, mine: Claim) -> None:
  """Creates `output`'s claim as `mine` where there is none; raises ClaimedError naming the
  holder where another run's is there."""
  path = claim_path(output)
  if _on_gcs(path):
    try:
      _gcs_blob(path).upload_from_string(
        mine.to_json(), content_type="application/json", if_generation_match=0
      )
      return
    except exceptions.PreconditionFailed:
      pass
  else:
    os.makedirs(output, exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex}.partial"
    # Created only where nothing is: never written through a link planted under the name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(temporary, flags, 0o666), "wb") as f:
      f.write(mine.to_json())
      f.flush()
      os.fsync(f.fileno())
    try:
      os.link(temporary, path)  # fails where the name exists: the exclusive create
      return
    except FileExistsError:
      pass
    finally:
      os.remove(temporary)
  raise ClaimedError(_taken_by(output))


def _taken_by(output: str) -> str:
  try:
    holder, _ = read_claim(output)
  except ValueError:
    holder = None
  who = holder.holder() if holder else "another run"
  return f"{output} is claimed by {who}"


def take_over(output: str, token: Any, mine: Claim) -> None:
  """Replaces the claim `read_claim` named by `token` with `mine`. Of several runs taking over
  the same claim at once, one succeeds; the others get ClaimedError."""
  path = claim_path(output)
  if _on_gcs(path):
    try:
      _gcs_blob(path).delete(if_generation_match=token)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      raise ClaimedError(_taken_by(output)) from None
  else:
    stale = f"{path}.{uuid.uuid4().hex}.replaced"
    try:
      os.rename(path, stale)  # of several renames of the one file, one succeeds
    except FileNotFoundError:
      raise ClaimedError(_taken_by(output)) from None
    with open(stale, "rb") as f:
      renamed = hashlib.sha256(f.read()).hexdigest()
    if renamed != token:
      # Another run's claim came between our read and our rename: give it back (unless a
      # third run claimed the name meanwhile; it holds the folder then).
      try:
        os.link(stale, path)
      except FileExistsError:
        pass
      finally:
        os.remove(stale)
      raise ClaimedError(_taken_by(output))
    os.remove(stale)
  claim(output, mine)


def entries(output: str) -> list[str]:
  """The names directly in `output`, files and folders alike (a folder's without its '/'),
  sorted; none where it does not exist."""
  if _on_gcs(output):
    bucket, _, name = output[len("gs://") :].partition("/")
    prefix = name.strip("/") + "/" if name.strip("/") else ""
    listing = _gcs_client().list_blobs(bucket, prefix=prefix, delimiter="/")
    names = {blob.name[len(prefix) :] for blob in listing}  # the pages first: then prefixes
    names |= {folder[len(prefix) :].rstrip("/") for folder in listing.prefixes}
  elif "://" in output:  # any other object store: every object, cut to its first part
    names = {
      metadata.path[len(output.rstrip("/")) + 1 :].split("/", 1)[0]
      for metadata in FileSystems.match([output.rstrip("/") + "/**"])[0].metadata_list
    }
  else:
    try:
      names = set(os.listdir(output))
    except (FileNotFoundError, NotADirectoryError):
      names = set()
  return sorted(name for name in names if name)


def _segbeams_name(name: str) -> bool:
  return (
    layout.is_run_entry(name)
    # the manifest's temporary file, left where a run was killed while writing it (`sinks`)
    or (name.startswith(f".{layout.MANIFEST_FILE}.") and name.endswith(layout.PARTIAL_SUFFIX))
  )


def not_plain_entries(output: str) -> list[str]:
  """Which of a local `output`'s segbeam entries (`layout.OUTPUT_ENTRIES`, and the
  journal's table folders) exist as anything but a plain file or folder: a link (to anything,
  or to nothing), a FIFO, a device. A run writing or deleting there would reach through it, so
  none may run into such a folder. None on an object store, which has no links."""
  if "://" in output:
    return []
  names = list(layout.OUTPUT_ENTRIES) + [f"{layout.JOURNAL_DIR}/{table}" for table in layout.TABLES]
  found = []
  for name in names:
    try:
      mode = os.lstat(os.path.join(output, name)).st_mode
    except (FileNotFoundError, NotADirectoryError):
      continue
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
      found.append(name)
  return found


def not_written_by_segbeam(output: str, *, claimed: bool) -> list[str]:
  """What in `output` no segbeam run wrote, which `--overwrite` must not delete: anything but
  a run's own entries (`layout.OUTPUT_ENTRIES`, its temporary files), and those too where
  nothing shows a run was there (a claim, `claimed`; a journal; a manifest that is segbeam's,
  `sources.holds_a_segbeam_run`): a dataset's own masks/ and manifest.json are not a run's."""
  names = entries(output)
  a_run = claimed or layout.JOURNAL_DIR in names or sources.holds_a_segbeam_run(output)
  return [name for name in names if not (a_run and _segbeams_name(name))]


def release(output: str) -> None:
  """Removes `output`'s claim: its run completed."""
  path = claim_path(output)
  if _on_gcs(path):
    try:
      _gcs_blob(path).delete()
    except exceptions.NotFound:
      pass
  elif os.path.exists(path):
    os.remove(path)
