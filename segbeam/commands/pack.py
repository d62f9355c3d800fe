"""`segbeam pack`: a folder of images (and masks) -> shards the pipeline reads as input.

`--format` picks the shards:
- tfrecord: tf.train.Example records with the DeepLab / TF features the pipeline reads by
  default: image/encoded, image/filename, image/format, image/height, image/width and, with
  masks, image/segmentation/class/encoded and image/segmentation/class/format.
- parquet: Hugging Face `datasets` Image columns, `image` and (with masks) `label`, each a
  struct<bytes, path>, with the schema metadata `datasets` writes, in row groups of
  `PARQUET_ROW_GROUP` rows.
- webdataset: plain POSIX tar, a sample per image: KEY.<ext> and, with its mask, KEY.seg.<ext>.

Bytes are stored as they are in the files, never re-encoded. Writes through Beam's FileSystems
(local or gs://).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import posixpath
import tarfile
import uuid
from typing import Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from segbeam import exits
from segbeam import options as options_lib
from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord
from segbeam.pipeline import validation

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# --format -> the shards' extension.
FORMATS = {"tfrecord": "tfrecord", "parquet": "parquet", "webdataset": "tar"}
# Images a row group holds at most (segbeam's choice, as `datasets` chose for image datasets
# before it cut row groups by bytes alone): a reader holds a row group at a time.
PARQUET_ROW_GROUP = 100
# A row group is also cut at these many bytes of images (`datasets`' MAX_ROW_GROUP_SIZE), and
# all shards together hold at most PARQUET_BUFFER_BYTES (and an image each) until written:
# round-robin fills every shard's row group at once.
PARQUET_ROW_GROUP_BYTES = 100 * 2**20
PARQUET_BUFFER_BYTES = 512 * 2**20


@dataclasses.dataclass(frozen=True)
class Packed:
  """What `pack` wrote, and what of the folders it left out.

  Attributes:
    shards: the shard paths, in order.
    images: images packed, one record (tf.Example, row or sample) each.
    with_mask: how many of them carry their mask.
    not_images: files of the images folder left out: neither named as an image nor starting
      with an image header (the run would only have made each an error row), or not regular
      files (a dangling link, a link loop, a FIFO).
    masks_without_image: masks whose stem no packed image has.

  Names are `sources.encodable`: bytes that are not UTF-8 backslash-escaped.
  """

  shards: list[str]
  images: int
  with_mask: int
  not_images: list[str]
  masks_without_image: list[str]


def _files(folder: str) -> list[str]:
  """The paths directly in `folder` but its subfolders, sorted: every name, where Beam's `*`
  matches none with a backslash and its local listing drops links it cannot size (a dangling
  link, a loop: `_is_image` leaves those out, said)."""
  if "://" not in folder:
    if not os.path.isdir(folder):
      return []
    with os.scandir(folder) as entries:  # (os.path.isdir: a loop is no folder, and no error)
      paths = [os.path.join(folder, entry.name) for entry in entries]
    return sorted(path for path in paths if not os.path.isdir(path))
  # An object store has no folders: every object below, less those of deeper "folders".
  pattern = FileSystems.join(folder, "**")
  prefix = pattern[: -len("**")]
  matched = FileSystems.match([pattern])[0].metadata_list
  return sorted(
    m.path for m in matched if m.path.startswith(prefix) and "/" not in m.path[len(prefix) :]
  )


def _name(path: str) -> str:
  """The file's name as listed (a backslash is part of a name, on Linux as on object stores)."""
  return posixpath.basename(path.replace(os.sep, "/"))


def _stem(path: str) -> str:
  return posixpath.splitext(_name(path))[0]


def _is_image(path: str) -> bool:
  """A regular file named as an image (packed even when its bytes are damaged: the run reports
  those), or, whatever its name, starting with an image header. A FIFO or device would block
  or never end."""
  if sources.not_a_regular_file(path) is not None:
    return False
  if posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
    return True
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return validation.sniff_format(f.read(16)) is not None


def _masks_by_stem(folder: str) -> dict[str, str]:
  """stem -> path of the masks directly in `folder` (images by name or first bytes, as in the
  images folder); two masks of one stem are refused, since either could be the image's."""
  masks: dict[str, str] = {}
  for path in filter(_is_image, _files(folder)):
    stem = _stem(path)
    if stem in masks:
      raise ValueError(
        sources.encodable(
          f"two masks for the images named {stem!r}: {_name(masks[stem])} and "
          f"{_name(path)} in {folder}; keep one"
        )
      )
    masks[stem] = path
  return masks


def _read(path: str) -> bytes:
  """The file's bytes as stored (a .gz file is not decompressed: the run says what it is)."""
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      return f.read()
  except OSError as error:
    raise OSError(sources.encodable(f"cannot read {path}: {error.strerror or error}")) from error


def _partial_path(shard: str) -> str:
  """Where a shard is written until every shard is whole: a hidden name that a glob for the
  shards (PREFIX-*) does not match, and that no one can have planted a link at beforehand."""
  folder, name = FileSystems.split(shard)
  return FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}.partial")


def make_example(
  filename: str,
  image: bytes,
  mask: Optional[bytes] = None,
  keys: options_lib.ExampleKeys = options_lib.ExampleKeys(),
) -> bytes:
  """A serialized tf.train.Example for one image (and mask). Bytes that are no image, or whose
  header is unreadable, are stored all the same with size 0x0: the run makes each an error row
  that says what is wrong, as it does for such a file. A `filename` listed with bytes that are
  not UTF-8 is stored with those bytes."""
  import tensorflow as tf  # noqa: PLC0415  # `segbeam --help` lists pack's options without it

  image_format = validation.sniff_format(image) or "unknown"
  width, height = validation.header_size(image) or (0, 0)

  def bytes_feature(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def int_feature(value: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  feature = {
    keys.image: bytes_feature(image),
    keys.filename: bytes_feature(filename.encode("utf-8", "surrogateescape")),
    "image/format": bytes_feature(image_format.encode()),
    "image/height": int_feature(height),
    "image/width": int_feature(width),
  }
  if mask is not None:
    feature[keys.label] = bytes_feature(mask)
    feature["image/segmentation/class/format"] = bytes_feature(b"png")
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def shard_path(prefix: str, index: int, num_shards: int, shard_format: str = "tfrecord") -> str:
  return f"{prefix}-{index:05d}-of-{num_shards:05d}.{FORMATS[shard_format]}"


class _TFRecordShard:
  """Writes tf.Examples, one record per image, onto `stream`."""

  def __init__(self, stream):
    self._stream = stream

  def add(self, path: str, image: bytes, mask_path: Optional[str], mask: Optional[bytes]) -> None:
    del mask_path
    self._stream.write(tfrecord.encode_record(make_example(_name(path), image, mask)))

  def finish(self) -> None:
    pass

  abort = finish


def _image_type():
  import pyarrow as pa  # noqa: PLC0415  # `segbeam --help` lists pack's options without it

  return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def parquet_schema(with_masks: bool):
  """The schema `datasets` gives Features({"image": Image()[, "label": Image()]}), with its
  b"huggingface" metadata, so that its loaders decode both columns as images."""
  import pyarrow as pa  # noqa: PLC0415

  columns = ["image", "label"] if with_masks else ["image"]
  features = {column: {"_type": "Image"} for column in columns}
  return pa.schema(
    [(column, _image_type()) for column in columns],
    metadata={"huggingface": json.dumps({"info": {"features": features}})},
  )


class _ParquetShard:
  """Writes Hugging Face Image rows onto `stream`, a row group per `PARQUET_ROW_GROUP` images
  or `max_bytes` of them, whichever comes first: what is held until written.

  Args:
    stream: the shard's writable file.
    with_masks: whether the shard has a `label` column (null for an image without a mask).
    max_bytes: a row group is written once its images and masks reach these many bytes.
  """

  def __init__(self, stream, with_masks: bool, max_bytes: int):
    import pyarrow.parquet as pq  # noqa: PLC0415

    self._schema = parquet_schema(with_masks)
    self._writer = pq.ParquetWriter(stream, self._schema)
    self._max_bytes = max_bytes
    self._rows: dict[str, list] = {name: [] for name in self._schema.names}
    self._bytes = 0

  def add(self, path: str, image: bytes, mask_path: Optional[str], mask: Optional[bytes]) -> None:
    # `path` is a string column: a name whose bytes are not UTF-8 is stored backslash-escaped.
    self._rows["image"].append({"bytes": image, "path": sources.encodable(_name(path))})
    if "label" in self._rows:
      self._rows["label"].append(
        None if mask is None else {"bytes": mask, "path": sources.encodable(_name(mask_path))}
      )
    self._bytes += len(image) + len(mask or b"")
    if len(self._rows["image"]) == PARQUET_ROW_GROUP or self._bytes >= self._max_bytes:
      self._flush()

  def _flush(self) -> None:
    import pyarrow as pa  # noqa: PLC0415

    if self._rows["image"]:
      self._writer.write_table(
        pa.Table.from_pydict(self._rows, schema=self._schema), row_group_size=PARQUET_ROW_GROUP
      )
      self._rows = {name: [] for name in self._schema.names}
      self._bytes = 0

  def finish(self) -> None:
    self._flush()
    self._writer.close()

  def abort(self) -> None:
    # Closed all the same: left open, pyarrow would write its footer onto a closed stream later.
    self._rows = {}
    self._writer.close()


def _extension(path: str, data: bytes) -> str:
  """The file's extension for its tar member, lower-cased; for a file not named as an image,
  its sniffed format, so that readers know the member as an image."""
  extension = posixpath.splitext(_name(path))[1].lower()
  if extension in IMAGE_EXTENSIONS:
    return extension[1:]
  sniffed = validation.sniff_format(data)
  if sniffed is None:  # the file changed since it was listed: keep what its name says
    return extension[1:] or "bin"
  return "jpg" if sniffed == "jpeg" else sniffed


def webdataset_key(path: str) -> str:
  """The sample key of an image: its stem with "." as "_", since WebDataset ends a key at the
  first dot of a member's name."""
  return _stem(path).replace(".", "_")


class _WebDatasetShard:
  """Writes a sample per image onto `stream`: KEY.<ext> and, with its mask, KEY.seg.<ext>,
  consecutive members of a plain POSIX tar; no timestamp, owner or mode of the files, so the
  same folder packs to the same bytes."""

  def __init__(self, stream):
    self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT)

  def _member(self, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    self._tar.addfile(info, io.BytesIO(data))

  def add(self, path: str, image: bytes, mask_path: Optional[str], mask: Optional[bytes]) -> None:
    key = webdataset_key(path)
    self._member(f"{key}.{_extension(path, image)}", image)
    if mask is not None:
      self._member(f"{key}.seg.{_extension(mask_path, mask)}", mask)

  def finish(self) -> None:
    self._tar.close()

  abort = finish


def _refuse_colliding_keys(images: list[str], images_dir: str) -> None:
  """Two images of one WebDataset key would read as one sample, or as two of one key."""
  seen: dict[str, str] = {}
  for path in images:
    key = webdataset_key(path)
    if key in seen:
      raise ValueError(
        sources.encodable(
          f"two images for the WebDataset key {key!r}: {_name(seen[key])} and {_name(path)} "
          f"in {images_dir}; rename one"
        )
      )
    seen[key] = path


def _shard_writer(shard_format: str, stream, with_masks: bool, num_shards: int):
  if shard_format == "parquet":
    max_bytes = min(PARQUET_ROW_GROUP_BYTES, PARQUET_BUFFER_BYTES // num_shards)
    return _ParquetShard(stream, with_masks, max_bytes)
  if shard_format == "webdataset":
    return _WebDatasetShard(stream)
  return _TFRecordShard(stream)


def pack(
  images_dir: str,
  output_prefix: str,
  *,
  masks_dir: Optional[str] = None,
  num_shards: int = 1,
  shard_format: str = "tfrecord",
) -> Packed:
  """Writes every image of `images_dir` (with its same-stem mask from `masks_dir`)
  round-robin into `num_shards` shards.

  The shards appear whole or not at all: each is written under a hidden partial name, and all
  are renamed once the last image is in; on any error or Ctrl-C the partial files are removed.
  A shard cut short would read as a complete one with fewer images.

  Args:
    images_dir: the folder of images (local or gs://).
    output_prefix: the shards' prefix: PREFIX-00000-of-0000N.<extension of the format>.
    masks_dir: a folder of masks matched to the images by stem, or None.
    num_shards: how many shards.
    shard_format: a key of `FORMATS`.
  """
  if num_shards < 1:
    raise ValueError(f"--num-shards must be at least 1, got {num_shards}")
  if shard_format not in FORMATS:
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {shard_format!r}")
  files = _files(images_dir)
  images = [path for path in files if _is_image(path)]
  if not images:
    raise FileNotFoundError(f"no images in {images_dir}")
  masks = _masks_by_stem(masks_dir) if masks_dir else {}
  if shard_format == "webdataset":
    _refuse_colliding_keys(images, images_dir)
  shards = [shard_path(output_prefix, i, num_shards, shard_format) for i in range(num_shards)]
  partial = [_partial_path(shard) for shard in shards]
  streams, writers = [], []
  with_mask = 0
  try:
    for path in partial:
      streams.append(FileSystems.create(path))
      writers.append(_shard_writer(shard_format, streams[-1], bool(masks_dir), num_shards))
    for index, path in enumerate(images):
      mask_path = masks.get(_stem(path))
      mask = _read(mask_path) if mask_path else None
      with_mask += mask is not None
      writers[index % num_shards].add(path, _read(path), mask_path, mask)
    for writer in writers:
      writer.finish()
    for stream in streams:
      stream.close()
  except BaseException:  # Ctrl-C too: leave no partial shard behind
    for writer in writers:
      with contextlib.suppress(Exception):
        writer.abort()
    for stream in streams:
      with contextlib.suppress(Exception):
        stream.close()
    with contextlib.suppress(Exception):
      FileSystems.delete([path for path in partial if FileSystems.exists(path)])
    raise
  FileSystems.rename(partial, shards)
  image_stems = {_stem(path) for path in images}
  packed = set(images)
  return Packed(
    shards=shards,
    images=len(images),
    with_mask=with_mask,
    not_images=[sources.encodable(_name(path)) for path in files if path not in packed],
    masks_without_image=sorted(
      sources.encodable(_name(path)) for stem, path in masks.items() if stem not in image_stems
    ),
  )


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
    "pack", help="write TFRecord, Parquet or WebDataset shards from a folder of images"
  )
  parser.add_argument("--images", required=True, help="folder of images")
  parser.add_argument("--masks", help="folder of masks matched by file stem (optional)")
  parser.add_argument(
    "--output",
    required=True,
    help="shard prefix: PREFIX-00000-of-0000N.tfrecord, .parquet or .tar by --format",
  )
  parser.add_argument("--num-shards", type=int, default=1)
  parser.add_argument(
    "--format",
    choices=list(FORMATS),
    default="tfrecord",
    help="tfrecord: tf.Examples; parquet: Hugging Face Image columns image (and label); "
    "webdataset: tar samples KEY.<ext> (and KEY.seg.<ext>) (default: %(default)s)",
  )
  parser.set_defaults(func=run_pack)


def _some(names: list[str], shown: int = 5) -> str:
  return ", ".join(names[:shown]) + (
    f" and {len(names) - shown} more" if len(names) > shown else ""
  )


def _count(number: int, noun: str) -> str:
  return f"{number} {noun}" + ("" if number == 1 else "s")


def run_pack(args: argparse.Namespace) -> int:
  try:
    packed = pack(
      args.images,
      args.output,
      masks_dir=args.masks,
      num_shards=args.num_shards,
      shard_format=args.format,
    )
  except (FileNotFoundError, ValueError):
    raise  # a bad invocation: the command prints it, exit 2
  except OSError as error:  # a file that cannot be read half way, a shard that cannot be written
    return exits.stopped("pack", f"{error}; no shard was written", exits.FAILED)
  masked = f" ({packed.with_mask} with a mask)" if args.masks else ""
  last = f" ... {_name(packed.shards[-1])}" if len(packed.shards) > 1 else ""
  print(
    f"packed {_count(packed.images, 'image')}{masked} into "
    f"{_count(len(packed.shards), 'shard')}: {packed.shards[0]}{last}"
  )
  if packed.not_images:
    print(
      f"left out {_count(len(packed.not_images), 'file')} of {args.images}, not images by "
      f"name or first bytes, or not regular files: {_some(packed.not_images)}"
    )
  if packed.masks_without_image:
    print(
      f"no image for {_count(len(packed.masks_without_image), 'mask')} of {args.masks}: "
      f"{_some(packed.masks_without_image)}"
    )
  return 0
