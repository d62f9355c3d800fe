"""Reading image shards: image files by glob, TFRecord files of tf.train.Example, Parquet files
with an image column (`parquet_images`) or WebDataset tar shards (`webdataset_tars`).

Files are matched and opened through Beam's FileSystems (local paths, gs://, ...). Each image
gets a stable, unique id from its place in the input, known without reading anything else:
- an image file: its path relative to the pattern's root (the folder before the first glob
  character), e.g. 'cats/felix.jpg' for '/data/**/*.jpg';
- a tf.Example: '<shard id>#<record index>', the shard id being the shard's path relative to
  the root ('train-00003-of-00100#417');
- a Parquet row: '<file id>#<row index>', or '<file id>#<value>' of the --id-column;
- a WebDataset sample: '<shard id>#<key>' ('shard-000001.tar#cats/0001').
An image's own name goes in `filename`: an image file's id, a tf.Example's `image/filename`
feature, a Hugging Face image's `path` (else the --id-column's value), a WebDataset image
member's name (None without one). Filenames may repeat (datasets do repeat them); ids do not, so
every shard is read once and no pass over the whole input has to finish before the first
image is segmented. An id is unique unless an input file is literally named like a record of
a shard beside it ('train.tfrecord#3' next to 'train.tfrecord').

Ids, sources and messages are text that encodes (UTF-8, as Parquet and Beam's coders need):
the bytes of a local name that are not UTF-8 are written backslash-escaped (`encodable`:
b'caf\\xe9.png' is 'caf\\xe9.png'), so that such a file is read and segmented like any other. Its
id is unique unless a name beside it is literally spelled with that escape.

The listing (`iter_matches`) gives every name a glob matches, a dangling link or a link loop
too, which Beam's local listing drops unsaid: such a name is refused as not a regular file.

Which files are shards, and of which format: `input_kind` (by name, or by the first bytes where
the name does not say). Reads are bounded whatever a file claims: an image file is read up to
--max-file-bytes and refused beyond; a shard record or tar member over that size is skipped
unread, a Parquet image over it refused once decoded (a page at a time), and a local path that
is not a regular file (a FIFO, a device such as /dev/zero behind a symlink) is refused without
opening it. Nothing read from an input names a file to read: filenames from tf.Examples,
Hugging Face paths and tar member names are only data.

Image files on object stores are read --read-concurrency at a time per reading thread
(`ReadFile`), so that their per-request latency overlaps; a gs:// image is fetched in one
request, its bytes only, since the listing already gave its path and size (`_fetch_gcs_object`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import posixpath
import re
import stat
import threading
import zlib
from concurrent import futures
from typing import BinaryIO, Callable, Iterator, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io import filesystem
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.utils.windowed_value import WindowedValue

from segbeam import constants
from segbeam import options as options_lib
from segbeam.pipeline import elements
from segbeam.pipeline import layout
from segbeam.pipeline import parquet_images
from segbeam.pipeline import progress
from segbeam.pipeline import tfrecord
from segbeam.pipeline import webdataset_tars

_TFRECORD_NAME = re.compile(r"\.(tfrecords?|tfr)(\.gz)?($|-\d+-of-\d+$)|\.tfrecord", re.I)
_PARQUET_NAME = re.compile(r"\.(parquet|parq|pq)$", re.I)
_TAR_NAME = re.compile(r"\.(tar|tar\.gz|tgz)$", re.I)
# Names routed to the image reader without opening them: the supported formats' extensions and
# those of formats refused with a clear reason (validation.UNSUPPORTED and HEIF/AVIF).
_IMAGE_NAME = re.compile(r"\.(jpe?g|jfif|png|gif|bmp|dib|tiff?|webp|jp2|j2k|heic|heif|avif)$", re.I)
_GLOB_CHARS = re.compile(r"[*?\[]")


def has_glob(pattern: str) -> bool:
  return bool(_GLOB_CHARS.search(pattern))


def pattern_root(pattern: str) -> str:
  """The folder part of `pattern` before its first glob character, ending in '/'."""
  match = _GLOB_CHARS.search(pattern)
  fixed = pattern[: match.start()] if match else pattern
  cut = fixed.rfind("/")
  return fixed[: cut + 1] if cut >= 0 else ""


def encodable(text: str) -> str:
  """`text` as it can be written (UTF-8): a local name's bytes that are not UTF-8, which Python
  keeps as lone surrogates, become backslash escapes: b'caf\\xe9.png' -> 'caf\\xe9.png'."""
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    pass
  try:
    raw = text.encode("utf-8", "surrogateescape")
  except UnicodeEncodeError:  # a surrogate that stands for no byte: escape it as itself
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
  return raw.decode("utf-8", "backslashreplace")


def relative_id(path: str, root: str) -> str:
  """`path` relative to `root` (else its name), as text that encodes (`encodable`)."""
  path, root = encodable(path).replace(os.sep, "/"), encodable(root)
  if root and path.startswith(root):
    return path[len(root) :]
  return posixpath.basename(path)


def kind_by_name(path: str, input_format: str) -> Optional[str]:
  """How `path` is read (a `constants.FORMAT_*` other than auto) as far as --input-format and
  its name say; None where only its first bytes can tell (`input_kind`)."""
  if input_format != constants.FORMAT_AUTO:
    return input_format
  name = posixpath.basename(path)
  for pattern, kind in (
    (_TFRECORD_NAME, constants.FORMAT_TFRECORD),
    (_PARQUET_NAME, constants.FORMAT_PARQUET),
    (_TAR_NAME, constants.FORMAT_WEBDATASET),
    (_IMAGE_NAME, constants.FORMAT_IMAGES),
  ):
    if pattern.search(name):
      return kind
  return None


def _kind_by_bytes(head: bytes) -> str:
  """How a file starting with `head` (its first 512 bytes, or fewer) is read."""
  if tfrecord.starts_with_a_record(io.BytesIO(head)):  # a record length and its checksum
    return constants.FORMAT_TFRECORD
  if head.startswith(b"PAR1"):
    return constants.FORMAT_PARQUET
  if head[257:262] == b"ustar":  # a POSIX or GNU tar header's magic
    return constants.FORMAT_WEBDATASET
  if head.startswith(b"\x1f\x8b"):  # gzip, not decompressed by its name: a .tgz under another
    inner = b""
    with contextlib.suppress(zlib.error):  # 512 bytes of the stream decompress as far as they go
      inner = zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(head, webdataset_tars.BLOCK)
    if inner[257:262] == b"ustar":
      return constants.FORMAT_WEBDATASET
  return constants.FORMAT_IMAGES


def input_kind(
  path: str, input_format: str, *, open_file: Optional[Callable[[], BinaryIO]] = None
) -> str:
  """How `path` is read: `constants.FORMAT_IMAGES`, `_TFRECORD`, `_PARQUET` or `_WEBDATASET`.

  With --input-format auto, a name that says which it is decides ('.tfrecord', '.tfr',
  '.parquet', '.tar', '.tar.gz', ... or an image extension; an image's format is still read
  from its bytes), so that the common case opens nothing extra. Any other name (TensorFlow's
  usual 'train-00000-of-01024', say) is decided by the file's first bytes, read through
  `open_file`: a TFRecord shard begins with a record length and its checksum, Parquet with
  'PAR1', a tar with its first header. Without `open_file`, or when it fails, such a file is
  an image (its real read then reports what is wrong with it).
  """
  kind = kind_by_name(path, input_format)
  if kind is not None:
    return kind
  if open_file is None:
    return constants.FORMAT_IMAGES
  try:
    with open_file() as stream:
      return _kind_by_bytes(tfrecord.read_up_to(stream, webdataset_tars.BLOCK))
  except Exception:  # unreadable: the image read says why
    return constants.FORMAT_IMAGES


def not_a_regular_file(path: str) -> Optional[str]:
  """Why a matched local path must not be opened (it would never end, or block), or None.
  Paths of remote file systems (gs://...) are always objects."""
  if "://" in path:
    return None
  try:
    mode = os.stat(path).st_mode
  except OSError as error:
    return f"cannot stat {path}: {error.strerror}"
  if stat.S_ISREG(mode):
    return None
  return f"{path} is not a regular file (mode {stat.filemode(mode)})"


def _bytes_feature(example, key: str) -> Optional[bytes]:
  feature = example.features.feature.get(key)
  if feature is None or feature.WhichOneof("kind") != "bytes_list" or not feature.bytes_list.value:
    return None
  return feature.bytes_list.value[0]


_OUTPUT_FOLDERS = frozenset({layout.SEGMENTS_DIR, layout.ERRORS_DIR, layout.MASKS_DIR})


def output_folder_candidate(path: str) -> Optional[str]:
  """The folder X that would hold `path` as part of a segbeam run's output: X/manifest.json,
  X/masks/<file>, X/segments/<file> or X/errors/<file>; None for any other path."""
  parts = path.replace(os.sep, "/").split("/")
  if len(parts) > 1 and parts[-1] == layout.MANIFEST_FILE:
    return "/".join(parts[:-1])
  if len(parts) > 2 and parts[-2] in _OUTPUT_FOLDERS:
    return "/".join(parts[:-2])
  return None


def holds_a_segbeam_run(folder: str) -> bool:
  """Whether `folder` holds a completed segbeam run: a manifest.json that is segbeam's (a
  dataset's own manifest.json is not)."""
  try:
    manifest = layout.read_manifest(folder)
  except Exception:  # unreadable or not JSON: not segbeam's
    return False
  return isinstance(manifest, dict) and {"run_id", "counts", "conservation"} <= manifest.keys()


class PreviousOutputs:
  """Tells the files of completed segbeam runs that a glob reaches into (its masks are PNGs, and
  would be segmented as photos). Each candidate folder is checked once."""

  def __init__(self, root: str):
    self._root = root
    self._checked: dict[str, bool] = {}

  def holding(self, path: str) -> Optional[str]:
    """The folder of the completed run `path` belongs to, below the pattern's root; or None.
    A pattern rooted inside such a folder ('out/masks/*.png') asks for its files: None."""
    folder = output_folder_candidate(path)
    if folder is None or not (folder + "/").startswith(self._root):
      return None
    if folder not in self._checked:
      self._checked[folder] = holds_a_segbeam_run(folder)
    return folder if self._checked[folder] else None


class OwnFiles:
  """Tells the files of the run writing to `output` (its claim, journal, tables, masks,
  manifest and temporary files): a glob that reaches into its own output folder
  (`--input 'photos/**' --output photos/out`) must never read them as inputs, however either
  path is spelled (a link to the folder, or a link in the pattern's root).

  Args:
    output: the run's output folder; None for no run (the Python API reading alone).
    pattern: the pattern whose matches are asked about; its root may reach the output through
      a link.
  """

  def __init__(self, output: Optional[str], pattern: Optional[str] = None):
    self._outputs: set[str] = set()
    if output is None:
      return
    output = output.rstrip("/")
    if "://" in output:
      self._outputs.add(output)
      return
    real = os.path.realpath(output)
    self._outputs.update({os.path.abspath(output), real})
    root = pattern_root(pattern or "") or "."
    if "://" not in root:  # the output as the listing spells it, below the pattern's root
      real_root = os.path.realpath(root)
      if real.startswith(real_root.rstrip("/") + "/"):
        self._outputs.add(os.path.join(os.path.abspath(root), os.path.relpath(real, real_root)))

  def holds(self, path: str) -> bool:
    if not self._outputs:
      return False
    path = path if "://" in path else os.path.abspath(path)
    for output in self._outputs:
      if path.startswith(output + "/"):
        entry = path[len(output) + 1 :].split("/", 1)[0]
        return layout.is_run_entry(entry)
    return False


def _local_listing(folder: str) -> Iterator[filesystem.FileMetadata]:
  """`LocalFileSystem._list(folder)`, but a name whose size cannot be read (a dangling link, a
  link loop) is listed with size 0 instead of dropped unsaid: it is still a name the pattern
  matches, and `ReadFile` refuses it (`not_a_regular_file`). A file gone since the walk listed
  it is left out, as Beam leaves it out."""
  if not os.path.exists(folder):
    return
  try:
    for dirpath, _, names in os.walk(folder):
      for name in names:
        path = os.path.join(dirpath, name)
        try:
          yield filesystem.FileMetadata(path, os.path.getsize(path), os.path.getmtime(path))
        except OSError:
          try:
            os.lstat(path)
          except OSError:  # gone since it was listed
            continue
          yield filesystem.FileMetadata(path, 0, 0.0)
  except Exception as error:  # as Beam's listing raises it
    raise BeamIOError("List operation failed", {folder: error}) from error


def iter_matches(pattern: str) -> Iterator[filesystem.FileMetadata]:
  """The files `pattern` matches, as `FileSystems.match` finds them, but one by one as the
  file system lists them: `FileSystems.match` returns one list, several hundred bytes a file
  held at once (BENCHMARKS.md, "Scale"), which at millions of files is what grows. Locally,
  names whose size cannot be read are matched too (`_local_listing`)."""
  glob_char = _GLOB_CHARS.search(pattern)
  if glob_char is None:
    (result,) = FileSystems.match([pattern])
    yield from result.metadata_list
    return
  fs = FileSystems.get_filesystem(pattern)
  prefix = pattern[: glob_char.start()]
  if fs.has_dirs():
    prefix = fs._url_dirname(prefix)  # the folder FileSystem.match lists, found as it does
  listing = _local_listing(prefix) if isinstance(fs, LocalFileSystem) else fs._list(prefix)
  yield from fs.match_files(listing, pattern)


def input_matches(pattern: str, output: Optional[str]) -> Iterator[filesystem.FileMetadata]:
  """What `pattern` matches (`iter_matches`) but the files of the run writing to `output`
  (`OwnFiles`)."""
  own = OwnFiles(output, pattern)
  return (m for m in iter_matches(pattern) if not own.holds(m.path))


class ListFiles(beam.DoFn):
  """A glob -> the metadata of each file it matches, as `fileio.MatchFiles` gives them, but
  one by one as they are listed (`iter_matches`).

  Where every match is an image file or a Parquet file by its name (or by --input-format), the
  images they hold go on the `inputs_listed` counter (one a file; a Parquet file's rows, as its
  footer says): the run's total, for its progress. A match that is, or may be, a TFRecord or
  tar shard leaves it unset (their images are counted as they are read), as does a Parquet
  footer that cannot be read.
  With `count_first` the listing is walked twice, to count before the first file goes on (in
  one process, where each file is read as soon as it is listed); without, files are counted
  as they go into the reshuffle that follows the listing, which ends before any is read.
  """

  def __init__(
    self,
    input_format: str = constants.FORMAT_AUTO,
    *,
    count_first: bool = False,
    output: Optional[str] = None,
    parquet_columns: options_lib.ParquetColumns = options_lib.ParquetColumns(),
  ):
    self._input_format = input_format
    self._count_first = count_first
    self._output = output
    self._columns = parquet_columns
    self._listed = progress.Counter(progress.LISTED)

  def process(self, pattern: str) -> Iterator[filesystem.FileMetadata]:
    previous_outputs = PreviousOutputs(pattern_root(pattern))
    if self._count_first:
      for _ in self._counted(self._inputs(pattern), previous_outputs):
        pass
      yield from self._inputs(pattern)
    else:
      yield from self._counted(self._inputs(pattern), previous_outputs)

  def _inputs(self, pattern: str) -> Iterator[filesystem.FileMetadata]:
    return input_matches(pattern, self._output)

  def _counted(
    self, files: Iterator[filesystem.FileMetadata], previous_outputs: PreviousOutputs
  ) -> Iterator[filesystem.FileMetadata]:
    """`files`, each passed on as it is listed; once through, the images they hold onto
    `inputs_listed` where all are image or Parquet files. Parquet footers are read
    `_FOOTER_READS` at a time beside the listing, so that their requests' latency overlaps; a
    file of an earlier run's output (`previous_outputs`) is one input, its error row."""
    images, known = 0, True
    footers: list[futures.Future] = []
    with futures.ThreadPoolExecutor(_FOOTER_READS, "segbeam-footer") as pool:
      for metadata in files:
        if known:
          kind = kind_by_name(metadata.path, self._input_format)
          if kind == constants.FORMAT_IMAGES or previous_outputs.holding(metadata.path):
            images += 1
          elif kind == constants.FORMAT_PARQUET and not_a_regular_file(metadata.path) is None:
            footers.append(pool.submit(_footer_rows, metadata.path, self._columns))
          else:
            known = False
            pool.shutdown(wait=False, cancel_futures=True)
        yield metadata
      rows = [future.result() for future in footers] if known else [None]
    if None not in rows:
      self._listed.inc(images + sum(rows))


# Parquet footers read at a time while listing (`ListFiles`): a request each on object stores.
_FOOTER_READS = 16
# The most rows of an unreadable Parquet range told as an error row each; a footer claiming
# more for one row group holds no images (their row groups hold thousands at the most).
_MOST_UNREAD_ROWS = 100_000


def _footer_rows(path: str, columns: options_lib.ParquetColumns) -> Optional[int]:
  """The inputs the Parquet file at `path` makes, as its footer says: a row each, or one where
  `columns` find no image column in it (its one error row); None where it cannot be read (its
  read then says why)."""
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
      return parquet_images.row_count(stream, columns)
  except Exception:  # not Parquet after all
    return None


class ReadMatches(beam.DoFn):
  """A matched file's metadata -> its `fileio.ReadableFile`, as `fileio.ReadMatches` makes
  them, but for every file: Beam's takes a name ending in a backslash for a folder and drops
  it unsaid, where on Linux and on object stores it is a file like any other. (An object
  store's folder marker, a name ending in '/', is no file: it is left out.)"""

  def process(self, metadata: filesystem.FileMetadata) -> Iterator[fileio.ReadableFile]:
    if not metadata.path.endswith("/"):
      yield fileio.ReadableFile(metadata)  # compression by name, as Beam's


# The most bytes, as listed, of the image files one reading thread has in flight (a file larger
# alone is read alone): the default --max-file-bytes, what one read could always hold.
_IN_FLIGHT_BYTES = constants.DEFAULT_MAX_FILE_BYTES


class ReadFile(beam.DoFn):
  """A matched file -> ImageRecord per image (one per image file, one per shard record, Parquet
  row or WebDataset sample); what cannot be read becomes a Failure on the FAILURES output.

  Image files on object stores (gs://, s3://, ...) are read on a pool of `read_concurrency`
  threads per DoFn instance: at most that many are in flight, and no more than
  `_IN_FLIGHT_BYTES` of them as listed. A pooled read stops one byte past its listed size: an
  object that grew since it was listed is read again, alone, on the bundle's thread, and a
  compressed one (listed compressed, read decompressed) is read there from the start, so what
  the pool holds is bounded by the listing. Each one's outputs go on as soon as it is done,
  the rest when the bundle finishes. Their order is not kept; every read still gives exactly
  the outputs it gives read alone. Local files (no per-request latency to hide, and a 16 MiB
  read buffer each), shards and refusals are read on the bundle's thread, as before.
  """

  def __init__(
    self,
    *,
    root: str,
    input_format: str = constants.FORMAT_AUTO,
    example_keys: options_lib.ExampleKeys = options_lib.ExampleKeys(),
    sample_keys: options_lib.SampleKeys = options_lib.SampleKeys(),
    parquet_columns: options_lib.ParquetColumns = options_lib.ParquetColumns(),
    max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
    read_concurrency: int = constants.DEFAULT_READ_CONCURRENCY,
  ):
    self._root = root
    self._input_format = input_format
    self._keys = example_keys
    self._sample_keys = sample_keys
    self._columns = parquet_columns
    self._max_file_bytes = max_file_bytes
    self._read_concurrency = max(1, read_concurrency)
    self._seen = progress.Counter(progress.SEEN)
    self._failed = progress.Counter(progress.FAILED_READ)

  def setup(self):
    self._previous_outputs = PreviousOutputs(self._root)
    self._gcs = None  # Beam's GcsIO, made on the first gs:// image and shared by the pool
    self._gcs_lock = threading.Lock()
    self._pool = None
    if self._read_concurrency > 1:
      self._pool = futures.ThreadPoolExecutor(self._read_concurrency, "segbeam-read")
    self._pending: dict[futures.Future, tuple] = {}

  def start_bundle(self):
    self._pending = {}  # a failed bundle's reads are abandoned with it

  def process(
    self,
    readable: fileio.ReadableFile,
    timestamp=beam.DoFn.TimestampParam,
    window=beam.DoFn.WindowParam,
  ) -> Iterator:
    outputs, image_id = self._outputs(readable)
    pooled = self._pool is not None and _poolable(readable.metadata.path)
    if image_id is not None:
      outputs = self._read_image(readable, image_id, within_listed_size=pooled)
    if image_id is None or not pooled:
      yield from self._counted(outputs)
      return
    # Within the window's bytes as listed, which bound what pooled reads hold.
    size = max(0, readable.metadata.size_in_bytes)
    while self._pending and self._pending_bytes() + size > _IN_FLIGHT_BYTES:
      yield from self._completed(wait=True)
    # Runs the whole read (the generator) on a pool thread; the outputs keep this element's
    # timestamp and window whenever they go on.
    self._pending[self._pool.submit(list, outputs)] = (timestamp, window, size)
    yield from self._completed(wait=len(self._pending) >= self._read_concurrency)

  def finish_bundle(self) -> Iterator:
    while self._pending:
      yield from self._completed(wait=True)

  def teardown(self):
    if getattr(self, "_pool", None) is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)

  def _completed(self, wait: bool) -> Iterator:
    """The outputs of every read done; with `wait`, after at least one is."""
    done = [future for future in self._pending if future.done()]
    if not done and wait:
      done, _ = futures.wait(self._pending, return_when=futures.FIRST_COMPLETED)
    for future in done:
      timestamp, window, _ = self._pending.pop(future)
      outputs = future.result()
      if outputs and isinstance(outputs[0], _ReadAgain):  # grown since listed: read it here
        outputs = self._read_image(outputs[0].readable, outputs[0].image_id)
      for output in self._counted(outputs):
        if isinstance(output, beam.pvalue.TaggedOutput):
          yield beam.pvalue.TaggedOutput(
            output.tag, WindowedValue(output.value, timestamp, [window])
          )
        else:
          yield WindowedValue(output, timestamp, [window])

  def _pending_bytes(self) -> int:
    return sum(size for _, _, size in self._pending.values())

  def _counted(self, outputs) -> Iterator:
    """`outputs` counted (on the bundle's thread: Beam's counters are per thread)."""
    for output in outputs:
      self._seen.inc()
      if isinstance(output, beam.pvalue.TaggedOutput):
        self._failed.inc()
        output = beam.pvalue.TaggedOutput(output.tag, _encodable(output.value))
      yield output

  def _outputs(self, readable: fileio.ReadableFile) -> tuple[Iterator, Optional[str]]:
    """(the outputs of `readable`, a generator where they need a read; None), or, for an image
    file to read (the one kind of read that may run on the pool), (nothing; its id)."""
    path = readable.metadata.path
    source = encodable(path)  # the path opened stays as listed
    file_id = relative_id(path, self._root)
    refusal = not_a_regular_file(path)
    previous_output = self._previous_outputs.holding(path)
    if previous_output is not None:
      outputs = [
        beam.pvalue.TaggedOutput(
          elements.FAILURES,
          elements.Failure(
            file_id,
            source,
            elements.STAGE_READ,
            "SegbeamOutput",
            f"a file of the segbeam run in {previous_output}, not an input: narrow --input (say, "
            "to the photos' extension) or keep outputs outside the input folder",
            filename=file_id,
          ),
        )
      ]
    elif refusal is not None:
      outputs = [
        beam.pvalue.TaggedOutput(
          elements.FAILURES,
          elements.Failure(
            file_id, source, elements.STAGE_READ, "NotARegularFile", refusal, filename=file_id
          ),
        )
      ]
    else:
      kind = input_kind(path, self._input_format, open_file=readable.open)
      if kind == constants.FORMAT_IMAGES:
        return iter(()), file_id
      read = {
        constants.FORMAT_TFRECORD: self._read_shard,
        constants.FORMAT_PARQUET: self._read_parquet,
        constants.FORMAT_WEBDATASET: self._read_tar,
      }[kind]
      outputs = read(readable, file_id)
    return outputs, None

  def _read_image(
    self, readable: fileio.ReadableFile, image_id: str, *, within_listed_size: bool = False
  ):
    """The image file's ImageRecord or Failure. `within_listed_size`: read at most one byte
    past its listed size, and yield only a `_ReadAgain` where that byte came."""
    path = encodable(readable.metadata.path)
    size = readable.metadata.size_in_bytes
    if size > self._max_file_bytes:
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure(
          image_id,
          path,
          elements.STAGE_READ,
          "FileTooLarge",
          f"{size} bytes is over the {self._max_file_bytes}-byte file limit",
          filename=image_id,
        ),
      )
      return
    try:
      # The size listed may be wrong (a symlink to a device lists 0; a .gz file is listed
      # compressed and read decompressed; an object replaced since): the read itself stops one
      # byte past the limit.
      limit = self._max_file_bytes + 1
      if within_listed_size:
        limit = min(limit, max(0, size) + 1)
      data = self._fetch(readable, limit)
    except Exception as error:  # any I/O error is one bad input
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure.from_exception(
          image_id, path, elements.STAGE_READ, error, filename=image_id
        ),
      )
      return
    if within_listed_size and len(data) > max(0, size):
      yield _ReadAgain(readable, image_id)
      return
    if len(data) > self._max_file_bytes:
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure(
          image_id,
          path,
          elements.STAGE_READ,
          "FileTooLarge",
          f"more than {self._max_file_bytes} bytes read, over the file limit (listed as "
          f"{size} bytes)",
          filename=image_id,
        ),
      )
      return
    yield elements.ImageRecord(image_id, path, data, filename=image_id)

  def _fetch(self, readable: fileio.ReadableFile, limit: int) -> bytes:
    """Up to `limit` bytes of an image file. A gs:// object (not decompressed by its name) in
    one request for its bytes alone; anything else, or an object that request fails for, as
    Beam opens it: that path's errors are the ones a read has always reported."""
    path = readable.metadata.path
    if path.startswith("gs://") and (
      CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
    ):
      try:
        return _fetch_gcs_object(self._gcs_io(path), path, limit)
      except Exception:  # a 404, a 403, ...: Beam's open below says it as it always has
        pass
    with readable.open() as stream:
      return tfrecord.read_up_to(stream, limit)

  def _gcs_io(self, path: str):
    # One client for this instance's reads: its connections are kept for the next ones.
    with self._gcs_lock:
      if self._gcs is None:
        gcs = FileSystems.get_filesystem(path)._gcsIO()
        _widen_connection_pool(gcs.client, self._read_concurrency)
        self._gcs = gcs
      return self._gcs

  def _read_shard(self, readable: fileio.ReadableFile, shard_id: str):
    path = encodable(readable.metadata.path)
    try:
      for index, filename, example in iter_shard(
        readable, shard_id, self._keys.filename, self._max_file_bytes
      ):
        source, image_id = f"{path}#{index}", f"{shard_id}#{index}"
        if isinstance(example, elements.Failure):
          yield beam.pvalue.TaggedOutput(elements.FAILURES, example)
          continue
        data = _bytes_feature(example, self._keys.image)
        if data is None:
          yield beam.pvalue.TaggedOutput(
            elements.FAILURES,
            elements.Failure(
              image_id,
              source,
              elements.STAGE_READ,
              "MissingImage",
              f"the tf.Example has no bytes feature {self._keys.image!r}",
              filename=filename or None,
            ),
          )
          continue
        yield elements.ImageRecord(
          image_id,
          source,
          data,
          label=_bytes_feature(example, self._keys.label),
          filename=filename or None,
        )
    except Exception as error:  # unreadable shard
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure.from_exception(shard_id, path, elements.STAGE_READ, error),
      )

  def _read_parquet(self, readable: fileio.ReadableFile, file_id: str):
    """A Parquet file's rows: an ImageRecord each, or a Failure naming the file and row."""
    path = encodable(readable.metadata.path)
    by_value = self._columns.id is not None
    # With --id-column, what follows '#' in the ids the file's rows took, values and places
    # alike: a value may be spelled like a place ('row 3'), and no id may repeat.
    taken: set[str] = set()

    def place(index: int) -> str:
      """The id of a row that no value names, `FILE#row N` (never one taken)."""
      if not by_value:
        return f"{file_id}#{index}"
      where = f"row {index}"
      while where in taken:
        where += "~"
      taken.add(where)
      return f"{file_id}#{where}"

    def failure(image_id, source, error_type, message, filename=None):
      return beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure(
          image_id, source, elements.STAGE_READ, error_type, message, filename=filename
        ),
      )

    try:
      with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        for row in parquet_images.iter_rows(stream, self._columns):
          if isinstance(row, parquet_images.Unread):
            yield from self._unread_rows(row, path, failure, place)
            continue
          source, image_id = f"{path}#{row.index}", f"{file_id}#{row.index}"
          filename = row.path
          if by_value:
            value = _id_text(row.id)
            if value is None:
              yield failure(
                place(row.index),
                source,
                "MissingId",
                f"row {row.index}: its {self._columns.id!r} (--id-column) is null",
                filename,
              )
              continue
            if value in taken:
              yield failure(
                place(row.index),
                source,
                "DuplicateId",
                f"row {row.index}: its {self._columns.id!r} (--id-column) {value!r} names an "
                "earlier row of the file too",
                filename or value,
              )
              continue
            taken.add(value)
            image_id, filename = f"{file_id}#{value}", filename or value
          if row.image is None:
            yield failure(
              image_id, source, "MissingImage", f"row {row.index}: {row.missing}", filename
            )
          elif len(row.image) > self._max_file_bytes or len(row.label or b"") > (
            self._max_file_bytes
          ):
            what = "image" if len(row.image) > self._max_file_bytes else "label"
            size = len(row.image if what == "image" else row.label)
            yield failure(
              image_id,
              source,
              "FileTooLarge",
              f"row {row.index}: its {what}'s {size} bytes are over the "
              f"{self._max_file_bytes}-byte file limit",
              filename,
            )
          else:
            yield elements.ImageRecord(
              encodable(image_id),
              source,
              row.image,
              label=row.label,
              filename=None if filename is None else encodable(filename),
            )
    except parquet_images.ColumnsError as error:
      yield failure(file_id, path, error.error_type, str(error), file_id)
    except Exception as error:  # not Parquet, or unreadable
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure.from_exception(
          file_id, path, elements.STAGE_READ, error, filename=file_id
        ),
      )

  @staticmethod
  def _unread_rows(
    row: parquet_images.Unread, path: str, failure, place: Callable[[int], str]
  ) -> Iterator[beam.pvalue.TaggedOutput]:
    """An error row for each row of an unreadable range, under its `place`: each is an input
    the footer counts; a range longer than `_MOST_UNREAD_ROWS` (a footer no image file has)
    is one row, under its first row's place."""
    message = f"rows {row.first} to {row.last} of the file: {row.reason}"
    last = row.last if row.last - row.first < _MOST_UNREAD_ROWS else row.first
    for index in range(row.first, last + 1):
      yield failure(place(index), f"{path}#{index}", "UnreadableRows", message)

  def _read_tar(self, readable: fileio.ReadableFile, shard_id: str):
    """A WebDataset shard's samples: an ImageRecord each, or a Failure naming the sample or the
    bytes that could not be read."""
    path = encodable(readable.metadata.path)
    keys = self._sample_keys
    keys_seen: set[str] = set()

    def failure(where, error_type, message, filename=None):
      """A Failure of the sample (or bytes) `where` names; None: of the whole shard."""
      return beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure(
          encodable(shard_id if where is None else f"{shard_id}#{where}"),
          encodable(path if where is None else f"{path}#{where}"),
          elements.STAGE_READ,
          error_type,
          encodable(message),
          filename=None if filename is None else encodable(filename),
        ),
      )

    try:
      with readable.open() as stream:
        samples = webdataset_tars.iter_samples(
          stream, frozenset(keys.image + keys.label), self._max_file_bytes
        )
        for item in samples:
          if isinstance(item, webdataset_tars.Damage):
            if item.not_a_tar:
              yield failure(None, "NotATar", item.reason, shard_id)
              continue
            # A key's last part has no dot: '@N.damage' is no sample's id.
            where = f"@{item.offset}.damage" if item.offset >= 0 else "@end.damage"
            error_type = "TruncatedShard" if item.fatal else "DamagedShard"
            yield failure(where, error_type, item.reason)
            continue
          if isinstance(item, webdataset_tars.Stray):
            name = item.member.name
            yield failure(
              f"@{item.member.offset}.member",  # as a damage's: no sample's id
              "NotASampleMember",
              f"member {name!r} has no extension, so it is in no WebDataset sample (KEY.EXTENSION)",
              name,
            )
            continue
          yield self._sample_output(item, keys, keys_seen, failure, shard_id, path)
    except Exception as error:  # unreadable shard
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure.from_exception(shard_id, path, elements.STAGE_READ, error),
      )

  def _sample_output(
    self,
    sample: webdataset_tars.Sample,
    keys: options_lib.SampleKeys,
    keys_seen: set[str],
    failure: Callable[..., beam.pvalue.TaggedOutput],
    shard_id: str,
    path: str,
  ):
    """A sample's ImageRecord, or the Failure saying why it has no usable image."""
    key = sample.key
    image_key = next((k for k in keys.image if k in sample.members), None)
    image = sample.members.get(image_key)
    filename = image.name if image is not None else None
    if key in keys_seen:  # WebDataset would make two samples of one key: ids must not repeat
      return failure(
        f"{key}@{sample.offset}.again",  # as a damage's: no sample's id
        "DuplicateKey",
        f"a second sample with key {key!r} (at byte {sample.offset}): a sample's members must "
        "be adjacent in the tar (`tar --sort=name`, or webdataset's TarWriter) and keys unique",
        filename,
      )
    keys_seen.add(key)
    if sample.cut is not None:
      error_type = "DamagedShard" if sample.damaged else "TruncatedShard"
      return failure(key, error_type, sample.cut, filename)
    if sample.repeated is not None:
      return failure(
        key, "RepeatedMember", f"two members {sample.repeated!r} in one sample", filename
      )
    if image is None:
      has = ", ".join(sorted(sample.members)) or "nothing"
      return failure(
        key,
        "MissingImage",
        f"sample {key!r} has no member {';'.join(keys.image)} (--image-key); it has {has}",
      )
    label_key = next((k for k in keys.label if k in sample.members), None)
    label = sample.members.get(label_key)
    for member, what in ((image, "image"), (label, "label")):
      if member is None:
        continue
      if not member.regular:
        return failure(
          key,
          "NotAFile",
          f"its {what} member {member.name!r} is a link or special file, never followed",
          filename,
        )
      if member.too_large:
        return failure(
          key,
          "FileTooLarge",
          f"its {what} member {member.name!r} is {member.size} bytes, over the "
          f"{self._max_file_bytes}-byte file limit",
          filename,
        )
    return elements.ImageRecord(
      encodable(f"{shard_id}#{key}"),
      encodable(f"{path}#{key}"),
      image.data,
      label=None if label is None else label.data,
      filename=encodable(filename),
    )


def _id_text(value) -> Optional[str]:
  """An --id-column value as an id's text; None for a null."""
  if value is None:
    return None
  if isinstance(value, bytes):
    return value.decode("utf-8", "backslashreplace")
  return str(value)


def _poolable(path: str) -> bool:
  """Whether `path` is read on `ReadFile`'s pool: an object store's object (not a local file,
  file:// included; no per-request latency to hide there) that is not decompressed by its name
  (its listed size is then what a read holds)."""
  return (
    "://" in path
    and not path.startswith("file://")
    and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
  )


@dataclasses.dataclass(frozen=True)
class _ReadAgain:
  """A pooled read's answer for an object that grew since it was listed."""

  readable: fileio.ReadableFile
  image_id: str


def _fetch_gcs_object(gcs, path: str, limit: int) -> bytes:
  """The first `limit` bytes of the object at `path`, in one ranged GET of its media: no
  metadata request first (Beam's `GcsIO.open` reloads the blob's metadata before every read),
  and raw bytes, as Beam reads them (no decompressive transcoding).

  Args:
    gcs: Beam's `GcsIO`, for its client and retry policy.
  """
  from apache_beam.io.gcp import gcsio  # noqa: PLC0415
  from google.api_core.exceptions import RequestRangeNotSatisfiable  # noqa: PLC0415  # gs:// only

  bucket, name = gcsio.parse_gcs_path(path)
  blob = gcs.client.bucket(bucket).blob(name)
  try:
    return blob.download_as_bytes(
      start=0,
      end=limit - 1,
      raw_download=True,
      checksum=None,  # a range: the server's checksum is the whole object's
      retry=gcs._storage_client_retry,
    )
  except RequestRangeNotSatisfiable:  # GCS's answer for a range of an empty object
    return b""


def _widen_connection_pool(client, size: int) -> None:
  """Lets `client` keep `size` connections per host (requests keeps 10): a read over that
  would open and close one of its own."""
  import requests  # noqa: PLC0415

  session = getattr(client, "_http", None)
  if size > 10 and isinstance(session, requests.Session):
    adapter = requests.adapters.HTTPAdapter(pool_connections=size, pool_maxsize=size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)


def _encodable(failure: elements.Failure) -> elements.Failure:
  """`failure` with its text `encodable`: an error's message may quote a path as listed."""
  return dataclasses.replace(
    failure,
    image_id=encodable(failure.image_id),
    source=encodable(failure.source),
    message=encodable(failure.message),
    filename=None if failure.filename is None else encodable(failure.filename),
  )


def iter_shard(
  readable: fileio.ReadableFile,
  shard_id: str,
  filename_key: str,
  max_record_bytes: int = tfrecord.MAX_RECORD_BYTES,
):
  """(record index, filename or '', tf.train.Example or Failure) for each record of a shard."""
  import tensorflow as tf  # noqa: PLC0415  # `segbeam report` imports this module light

  path = readable.metadata.path
  with readable.open() as stream:
    for index, record in tfrecord.read_records(stream, max_record_bytes):
      fallback_id, source = f"{shard_id}#{index}", f"{path}#{index}"
      if isinstance(record, tfrecord.RecordError):
        yield (
          index,
          "",
          elements.Failure(
            fallback_id, source, elements.STAGE_READ, record.error_type, record.reason
          ),
        )
        continue
      try:
        example = tf.train.Example.FromString(record)
      except Exception as error:  # protobuf DecodeError
        yield (
          index,
          "",
          elements.Failure(
            fallback_id,
            source,
            elements.STAGE_READ,
            "NotAnExample",
            f"record {index} is not a tf.train.Example ({type(error).__name__})",
          ),
        )
        continue
      filename = (_bytes_feature(example, filename_key) or b"").decode("utf-8", "replace")
      yield index, filename, example


class ReadImages(beam.PTransform):
  """Pattern -> `elements.Outputs`: image records (`elements.ImageRecord`) and failures.
  Matches the files itself.

  Every file is read once, and each image goes on as soon as it is read: its id is its place
  in the input (see the module's docstring), so no pass over the whole input comes first.

  `spread_files` reshuffles the matched files before reading, so that a runner with several
  workers spreads them (one shard can hold many images); a runner that reads them all in this
  process has nothing to spread, and skips that shuffle.

  `output`, a run's output folder, is left out of what the pattern matches (`OwnFiles`).
  `read_concurrency` image files are read at a time per reading thread (`ReadFile`).
  `example_keys`, `sample_keys` and `parquet_columns` say where a tf.Example, a WebDataset
  sample and a Parquet row hold the image and its ground truth.
  """

  def __init__(
    self,
    pattern: str,
    *,
    input_format: str = constants.FORMAT_AUTO,
    example_keys: options_lib.ExampleKeys = options_lib.ExampleKeys(),
    sample_keys: options_lib.SampleKeys = options_lib.SampleKeys(),
    parquet_columns: options_lib.ParquetColumns = options_lib.ParquetColumns(),
    max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
    spread_files: bool = True,
    output: Optional[str] = None,
    read_concurrency: int = constants.DEFAULT_READ_CONCURRENCY,
  ):
    super().__init__()
    self._pattern = pattern
    self._spread_files = spread_files
    self._input_format = input_format
    self._output = output
    self._columns = parquet_columns
    self._read = ReadFile(
      root=pattern_root(pattern),
      input_format=input_format,
      example_keys=example_keys,
      sample_keys=sample_keys,
      parquet_columns=parquet_columns,
      max_file_bytes=max_file_bytes,
      read_concurrency=read_concurrency,
    )

  def expand(self, pbegin):
    matched = (
      pbegin
      | "Pattern" >> beam.Create([self._pattern])
      | "MatchFiles"
      >> beam.ParDo(
        ListFiles(
          self._input_format,
          count_first=not self._spread_files,
          output=self._output,
          parquet_columns=self._columns,
        )
      )
    )
    if self._spread_files:
      matched = matched | "Reshuffle" >> beam.Reshuffle()
    read = (
      matched
      | "ReadMatches" >> beam.ParDo(ReadMatches())
      | "ReadImages" >> beam.ParDo(self._read).with_outputs(elements.FAILURES, main="records")
    )
    return elements.Outputs(read.records, read[elements.FAILURES])
