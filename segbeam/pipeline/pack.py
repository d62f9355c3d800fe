"""`segbeam pack`: a folder of images (and masks) -> TFRecord shards of tf.train.Example.

Features follow the DeepLab / TF convention the pipeline reads by default: image/encoded,
image/filename, image/format, image/height, image/width and, with masks,
image/segmentation/class/encoded and image/segmentation/class/format. Bytes are stored as they
are in the files, never re-encoded. Writes through Beam's FileSystems (local or gs://).
"""

from __future__ import annotations

import argparse
import io
import posixpath
from typing import Optional

from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord
from segbeam.pipeline import validation

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def _list(folder: str) -> dict[str, str]:
  """stem -> path of the images directly in `folder`."""
  matched = FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list
  files = {}
  for metadata in sorted(matched, key=lambda m: m.path):
    name = posixpath.basename(metadata.path.replace("\\", "/"))
    stem, ext = posixpath.splitext(name)
    if ext.lower() in IMAGE_EXTENSIONS:
      files.setdefault(stem, metadata.path)
  return files


def _read(path: str) -> bytes:
  with FileSystems.open(path) as f:
    return f.read()


def make_example(filename: str, image: bytes, mask: Optional[bytes] = None,
                 keys: sources.ExampleKeys = sources.ExampleKeys()) -> bytes:
  """A serialized tf.train.Example for one image (and mask)."""
  import tensorflow as tf
  image_format = validation.sniff_format(image) or "unknown"
  width = height = 0
  if image_format != "unknown":
    with Image.open(io.BytesIO(image)) as decoded:
      width, height = decoded.size

  def bytes_feature(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def int_feature(value: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  feature = {keys.image: bytes_feature(image), keys.filename: bytes_feature(filename.encode()),
             "image/format": bytes_feature(image_format.encode()),
             "image/height": int_feature(height), "image/width": int_feature(width)}
  if mask is not None:
    feature[keys.label] = bytes_feature(mask)
    feature["image/segmentation/class/format"] = bytes_feature(b"png")
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def shard_path(prefix: str, index: int, num_shards: int) -> str:
  return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def pack(images_dir: str, output_prefix: str, *, masks_dir: Optional[str] = None,
         num_shards: int = 1) -> list[str]:
  """Writes every image of `images_dir` (with its same-stem mask when `masks_dir` is given)
  round-robin into `num_shards` shards; returns their paths."""
  if num_shards < 1:
    raise ValueError(f"--num-shards must be at least 1, got {num_shards}")
  images = _list(images_dir)
  if not images:
    raise FileNotFoundError(f"no images in {images_dir}")
  masks = _list(masks_dir) if masks_dir else {}
  paths = [shard_path(output_prefix, i, num_shards) for i in range(num_shards)]
  writers = [FileSystems.create(path) for path in paths]
  try:
    for index, (stem, path) in enumerate(images.items()):
      mask = _read(masks[stem]) if stem in masks else None
      example = make_example(posixpath.basename(path.replace("\\", "/")), _read(path), mask)
      writers[index % num_shards].write(tfrecord.encode_record(example))
  finally:
    for writer in writers:
      writer.close()
  return paths


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser("pack", help="write TFRecord shards from a folder of images")
  parser.add_argument("--images", required=True, help="folder of images")
  parser.add_argument("--masks", help="folder of masks matched by file stem (optional)")
  parser.add_argument("--output", required=True,
                      help="shard prefix: PREFIX-00000-of-0000N.tfrecord")
  parser.add_argument("--num-shards", type=int, default=1)
  parser.set_defaults(func=run_pack)


def run_pack(args: argparse.Namespace) -> int:
  paths = pack(args.images, args.output, masks_dir=args.masks, num_shards=args.num_shards)
  print(f"wrote {len(paths)} shard(s): {paths[0]}" + (" ..." if len(paths) > 1 else ""))
  return 0


