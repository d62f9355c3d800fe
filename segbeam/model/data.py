"""Training and evaluation data: images and masks matched by file stem, as tf.data."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from segbeam.model import labels as labels_lib
from segbeam.model import preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclasses.dataclass(frozen=True)
class ImageMaskPair:
  name: str
  image_path: str
  mask_path: str


@dataclasses.dataclass(frozen=True)
class SkippedPair:
  name: str
  reason: str


def read_names(path: str) -> list[str]:
  """A list file: the first word of each non-empty line not starting with '#' (Oxford's
  list files carry more columns after the name)."""
  with tf.io.gfile.GFile(path) as f:
    return [line.split()[0] for line in f if line.strip() and not line.startswith("#")]


def _by_stem(directory: str) -> dict[str, str]:
  files = {}
  for filename in sorted(tf.io.gfile.listdir(directory)):
    stem, ext = os.path.splitext(filename)
    if ext.lower() in IMAGE_EXTENSIONS:
      files.setdefault(stem, os.path.join(directory, filename))
  return files


def match_pairs(
  images_dir: str, masks_dir: str, names: Optional[Sequence[str]] = None
) -> list[ImageMaskPair]:
  """Pairs each image with the mask of the same stem (Abyssinian_1.jpg <-> Abyssinian_1.png).

  With `names`, exactly those pairs, and a missing image or mask is an error; without, every
  image that has a mask (images without one are logged).
  """
  images, masks = _by_stem(images_dir), _by_stem(masks_dir)
  if names is not None:
    missing = [n for n in names if n not in images or n not in masks]
    if missing:
      raise FileNotFoundError(
        f"{len(missing)} listed names have no image or no mask, e.g. {missing[:5]}"
      )
    stems = list(names)
  else:
    stems = [s for s in images if s in masks]
    unmatched = len(images) - len(stems)
    if unmatched:
      logging.warning("%d images in %s have no mask in %s", unmatched, images_dir, masks_dir)
  if not stems:
    raise FileNotFoundError(f"no image in {images_dir} has a mask in {masks_dir}")
  return [ImageMaskPair(s, images[s], masks[s]) for s in stems]


def read_mask(data: bytes, label_map: labels_lib.LabelMap) -> np.ndarray:
  """Encoded mask -> uint8 [H, W] class indices (IGNORE_INDEX where unmapped).

  Read with PIL because palette PNG masks must keep their palette indices; TensorFlow's decoder
  would expand them to colours.
  """
  with Image.open(io.BytesIO(data)) as mask:
    if mask.mode not in ("L", "P", "I", "I;16", "1"):
      raise ValueError(f"mask has mode {mask.mode}; expected one channel of class values")
    raw = np.asarray(mask)
  return label_map.apply(raw)


def describe_error(error: BaseException) -> str:
  """'Type: first line of the message', short enough for a log line or a report."""
  return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


class PairLoader:
  """Decodes pairs for tf.data and remembers the ones that could not be used, with why.

  Images are decoded as the export decodes them (`preprocessing.decode_for_size`), so a JPEG
  may come back at a DCT scale of its original size; masks always at full size.
  """

  def __init__(
    self,
    pairs: Sequence[ImageMaskPair],
    *,
    channels: int,
    input_size: int,
    label_map: labels_lib.LabelMap,
  ):
    self._pairs = list(pairs)
    self._channels = channels
    self._input_size = input_size
    self._label_map = label_map
    self.skipped: dict[str, SkippedPair] = {}

  def load(self, pair: ImageMaskPair) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (uint8 image [h, w, C], uint8 mask [H, W]); raises ValueError if unusable."""
    with tf.io.gfile.GFile(pair.image_path, "rb") as f:
      image, height, width = preprocessing.decode_for_size(
        f.read(), self._channels, self._input_size
      )
    with tf.io.gfile.GFile(pair.mask_path, "rb") as f:
      mask = read_mask(f.read(), self._label_map)
    if mask.shape != (int(height), int(width)):
      raise ValueError(
        f"mask is {mask.shape[1]}x{mask.shape[0]} but image is {int(width)}x{int(height)}"
      )
    return image.numpy(), mask

  def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for pair in self._pairs:
      try:
        yield self.load(pair)
      except (ValueError, OSError, tf.errors.OpError) as error:
        reason = describe_error(error)
        if pair.name not in self.skipped:
          logging.warning("skipping %s: %s", pair.name, reason)
          self.skipped[pair.name] = SkippedPair(pair.name, reason)


def _augment(image: tf.Tensor, mask: tf.Tensor, size: int):
  """Random flip, zoom-crop and colour jitter; the mask follows every geometric change."""
  flip = tf.random.uniform([]) < 0.5
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  mask = tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)
  scaled = tf.cast(tf.cast(size, tf.float32) * tf.random.uniform([], 1.0, 1.3), tf.int32)
  image = tf.image.resize(image, [scaled, scaled], method="bilinear")
  mask = preprocessing.resize_mask(mask, scaled)
  offset = tf.random.uniform([2], 0, scaled - size + 1, dtype=tf.int32)
  image = image[offset[0] : offset[0] + size, offset[1] : offset[1] + size]
  mask = mask[offset[0] : offset[0] + size, offset[1] : offset[1] + size]
  image = image * tf.random.uniform([], 0.8, 1.2) + tf.random.uniform([], -20.0, 20.0)
  return tf.clip_by_value(image, 0.0, 255.0), mask


def _with_weights(image, mask):
  """(image, class mask with ignored pixels set to 0, per-pixel weight 0 where ignored)."""
  valid = tf.not_equal(mask, labels_lib.IGNORE_INDEX)
  return image, tf.where(valid, tf.cast(mask, tf.int32), 0), tf.cast(valid, tf.float32)


def make_dataset(
  loader: PairLoader,
  *,
  input_size: int,
  channels: int,
  batch_size: int,
  training: bool,
  seed: int = 0,
) -> tf.data.Dataset:
  """Batches of (float32 images 0..255, int32 masks, float32 pixel weights) at input_size.

  Decoding and resizing run once, here: the resized pairs are cached in memory, so each epoch
  only shuffles, augments (when training) and batches. The dataset knows its length (its
  `cardinality()`, in batches, the last one possibly short): Keras then runs exactly that many
  steps per epoch. A generator's dataset has no known length, and Keras reads it until it ends
  and warns "Your input ran out of data; interrupting training" (as if a `steps_per_epoch` were
  too large) once the first epoch and each validation pass end. Unusable pairs are skipped
  (`loader.skipped`); none usable is a ValueError.
  """
  dataset = tf.data.Dataset.from_generator(
    loader.__iter__,
    output_signature=(
      tf.TensorSpec([None, None, channels], tf.uint8),
      tf.TensorSpec([None, None], tf.uint8),
    ),
  )
  dataset = dataset.map(
    lambda image, mask: (
      preprocessing.resize_image(image, input_size),
      preprocessing.resize_mask(mask, input_size),
    ),
    num_parallel_calls=tf.data.AUTOTUNE,
  ).cache()
  # One pass fills the cache and counts what the loader could use: the count of pairs given
  # would be too many when one is skipped.
  usable = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
  if not usable:
    skipped = list(loader.skipped.values())
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
    raise ValueError(
      f"none of the {len(skipped)} pairs could be used ({reasons})"
      if skipped
      else "no image/mask pairs to make a dataset of"
    )
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(usable))
  if training:
    dataset = dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
      lambda i, m: _augment(i, m, input_size), num_parallel_calls=tf.data.AUTOTUNE
    )
  return dataset.map(_with_weights).batch(batch_size).prefetch(tf.data.AUTOTUNE)
