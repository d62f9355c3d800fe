"""Generated hostile inputs: broken, disguised, oversized and odd images and TFRecord shards.

Everything is made here from numpy and PIL at test time; no binary fixture is committed.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Optional

import numpy as np
from PIL import Image

from segbeam.pipeline import tfrecord
from tests import synthetic


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
  return synthetic.pet_scene(width, height, seed)[0]


def encode(image: Image.Image, fmt: str, **params) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **params)
  return buffer.getvalue()


def exif_bytes(orientation: int) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = orientation
  return exif.tobytes()


def oriented(stored: np.ndarray, orientation: int) -> np.ndarray:
  """What a viewer shows for `stored` pixels tagged with an EXIF orientation, written from the
  EXIF specification's (0th row, 0th column) table, independently of PIL."""
  return {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.flipud(np.rot90(a, -1)),
    8: lambda a: np.rot90(a, 1),
  }[orientation](stored)


def png_with_size(png: bytes, width: int, height: int) -> bytes:
  """The PNG with its IHDR rewritten to declare another size (CRC fixed, so it is believed)."""
  data = bytearray(png)
  at = data.index(b"IHDR")
  data[at + 4 : at + 12] = struct.pack(">II", width, height)
  data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
  return bytes(data)


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
  """A PNG of a few hundred bytes whose header declares width x height (1.6 G pixels)."""
  return png_with_size(encode(Image.new("L", (8, 8)), "PNG"), width, height)


def gif_with_screen(gif: bytes, width: int, height: int) -> bytes:
  """The GIF with its logical screen rewritten to declare another size."""
  return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def animated_gif(width: int, height: int, frames: int) -> bytes:
  """A GIF of `frames` frames, the first a pet scene, the others flat: small to store, large to
  decode whole."""
  first = Image.fromarray(scene(width, height)).convert("P")
  flat = [Image.new("P", (width, height), i % 2) for i in range(1, frames)]
  return encode(first, "GIF", save_all=True, append_images=flat, duration=40)


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
  """The JPEG with its baseline SOF rewritten to declare another size."""
  data = bytearray(jpeg)
  at = data.index(b"\xff\xc0")
  data[at + 5 : at + 9] = struct.pack(">HH", height, width)
  return bytes(data)


def bmp_with_size(bmp: bytes, width: int, height: int) -> bytes:
  """The BMP with its info header rewritten to declare another size."""
  return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


def example(
  filename: Optional[str] = None, image: Optional[bytes] = None, image_key: str = "image/encoded"
) -> bytes:
  """A serialized tf.train.Example, with no filename or image feature where None."""
  import tensorflow as tf

  def bytes_feature(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  feature = {}
  if filename is not None:
    feature["image/filename"] = bytes_feature(filename.encode("utf-8"))
  if image is not None:
    feature[image_key] = bytes_feature(image)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def shard(payloads: list[bytes]) -> bytes:
  return b"".join(tfrecord.encode_record(payload) for payload in payloads)


def with_bad_data_crc(record: bytes) -> bytes:
  """An encoded record whose data checksum no longer matches (the framing still holds)."""
  data = bytearray(record)
  data[-1] ^= 0xFF
  return bytes(data)
