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


class MaskSizeError(ValueError):
  """A mask whose header says another size than its image's."""


def read_mask(
  data: bytes, label_map: labels_lib.LabelMap, size: Optional[tuple[int, int]] = None
) -> np.ndarray:
  """Encoded mask -> uint8 [H, W] class indices (IGNORE_INDEX where unmapped).

  Read with PIL because palette PNG masks must keep their palette indices; TensorFlow's decoder
  would expand them to colours.

  Args:
    size: the image's (width, height): a mask whose header says otherwise raises
      MaskSizeError before it is decoded (a small PNG may declare a huge one).
  """
  with Image.open(io.BytesIO(data)) as mask:
    if mask.mode not in ("L", "P", "I", "I;16", "1"):
      raise ValueError(f"mask has mode {mask.mode}; expected one channel of class values")
    if size is not None and mask.size != tuple(size):
      raise MaskSizeError(f"label is {mask.size[0]}x{mask.size[1]}, image {size[0]}x{size[1]}")
    raw = np.asarray(mask)
  return label_map.apply(raw)


def describe_error(error: BaseException) -> str:
  """'Type: first line of the message', short enough for a log line or a report."""
  return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


class PairLoader:
  """Decodes pairs for tf.data and remembers the ones that could not be used, with why.

  Images are decoded as the export decodes them (`preprocessing.decode_for_size`), so a JPEG
  may come back at a DCT scale of its original size; masks always at full size. With
  `full_resolution` (training on crops, `make_crop_dataset`) images are decoded in full: a crop
  must see the pixels at the scale the model will be run at, not a DCT-shrunk copy.
  """

  def __init__(
    self,
    pairs: Sequence[ImageMaskPair],
    *,
    channels: int,
    input_size: int,
    label_map: labels_lib.LabelMap,
    full_resolution: bool = False,
  ):
    self._pairs = list(pairs)
    self._channels = channels
    self._input_size = input_size
    self._label_map = label_map
    self._full_resolution = full_resolution
    self.skipped: dict[str, SkippedPair] = {}

  def load(self, pair: ImageMaskPair) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (uint8 image [h, w, C], uint8 mask [H, W]); raises ValueError if unusable."""
    with tf.io.gfile.GFile(pair.image_path, "rb") as f:
      encoded = f.read()
    if self._full_resolution:
      image = preprocessing.decode_image(encoded, self._channels)
      height, width = image.shape[0], image.shape[1]
    else:
      image, height, width = preprocessing.decode_for_size(
        encoded, self._channels, self._input_size
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


def _decoded(loader: PairLoader, channels: int) -> tf.data.Dataset:
  return tf.data.Dataset.from_generator(
    loader.__iter__,
    output_signature=(
      tf.TensorSpec([None, None, channels], tf.uint8),
      tf.TensorSpec([None, None], tf.uint8),
    ),
  )


def _count(dataset: tf.data.Dataset, loader: PairLoader) -> int:
  """Elements of a cached dataset; a ValueError when there are none.

  One pass fills the cache and counts what the loader could use: the count of pairs given
  would be too many when one is skipped.
  """
  usable = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
  if not usable:
    skipped = list(loader.skipped.values())
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
    raise ValueError(
      f"none of the {len(skipped)} pairs could be used ({reasons})"
      if skipped
      else "no image/mask pairs to make a dataset of"
    )
  return usable


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
  dataset = _decoded(loader, channels)
  dataset = dataset.map(
    lambda image, mask: (
      preprocessing.resize_image(image, input_size),
      preprocessing.resize_mask(mask, input_size),
    ),
    num_parallel_calls=tf.data.AUTOTUNE,
  ).cache()
  dataset = dataset.apply(tf.data.experimental.assert_cardinality(_count(dataset, loader)))
  if training:
    dataset = dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
      lambda i, m: _augment(i, m, input_size), num_parallel_calls=tf.data.AUTOTUNE
    )
  return dataset.map(_with_weights).batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- Crops at native resolution (`segbeam train --crop`, for `segbeam run --tile`) ----------


def _scaled(image: tf.Tensor, mask: tf.Tensor, scale: float):
  """A full-resolution pair at `scale` times its size: the image bilinear with antialiasing,
  rounded back to uint8 (a fourth of float32's memory in the cache, at most half a grey level
  off); the mask nearest neighbour, so no value between two classes appears."""
  if scale == 1.0:
    return image, mask
  shape = tf.cast(tf.shape(mask), tf.float32)
  size = tf.maximum(tf.cast(tf.math.round(shape * scale), tf.int32), 1)
  resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
  image = tf.cast(tf.math.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
  mask = tf.image.resize(mask[..., tf.newaxis], size, method="nearest")[..., 0]
  return image, tf.cast(mask, tf.uint8)


def _pad_to(image: tf.Tensor, mask: tf.Tensor, size: int):
  """Pads a pair smaller than `size` on a side to `size` there, at the bottom and right: the
  image by repeating its last row or column (as `tiling.TilePlan.cut` pads tiles), the mask
  with IGNORE_INDEX, so padding weighs nothing in loss or metrics (`_with_weights`)."""
  shape = tf.shape(mask)
  pad_rows = tf.maximum(size - shape[0], 0)
  pad_columns = tf.maximum(size - shape[1], 0)
  image = tf.concat([image, tf.repeat(image[-1:], pad_rows, axis=0)], 0)
  image = tf.concat([image, tf.repeat(image[:, -1:], pad_columns, axis=1)], 1)
  mask = tf.pad(mask, [[0, pad_rows], [0, pad_columns]], constant_values=labels_lib.IGNORE_INDEX)
  return image, mask


def _random_crop(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, size: int, augment: bool):
  """One random `size` x `size` window of the pair (padded first where smaller), the same for
  image and mask; with `augment`, a random horizontal flip and `_augment`'s gain and offset
  jitter. No zoom: a crop-trained model is to learn one scale, the one it is run at.

  Stateless ops on a per-element `seed` (from `Dataset.random`, drawn anew each epoch): a
  seeded `tf.random.uniform` in a map repeats the same draws every epoch.
  """
  image, mask = _pad_to(image, mask, size)
  seeds = tf.random.experimental.stateless_split(seed, 5)
  shape = tf.shape(mask)
  top = tf.random.stateless_uniform([], seeds[0], 0, shape[0] - size + 1, tf.int32)
  left = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - size + 1, tf.int32)
  image = tf.cast(image[top : top + size, left : left + size], tf.float32)
  mask = mask[top : top + size, left : left + size]
  image.set_shape([size, size, None])
  mask.set_shape([size, size])
  if augment:
    flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    gain = tf.random.stateless_uniform([], seeds[3], 0.8, 1.2)
    image = image * gain + tf.random.stateless_uniform([], seeds[4], -20.0, 20.0)
    image = tf.clip_by_value(image, 0.0, 255.0)
  return image, mask


def _grid_crops(image: tf.Tensor, mask: tf.Tensor, size: int, channels: int) -> tf.data.Dataset:
  """The pair's non-overlapping `size` x `size` crops on a grid centred in it (one, padded,
  along a side shorter than `size`): every crop the same each pass, each pixel scored at most
  once, and most of the image seen; the margins (under `size` / 2 a side) are left out."""
  image, mask = _pad_to(image, mask, size)
  shape = tf.shape(mask)
  rows, columns = shape[0] // size, shape[1] // size
  top, left = (shape[0] - rows * size) // 2, (shape[1] - columns * size) // 2

  def tiles(array, depth):
    window = array[top : top + rows * size, left : left + columns * size]
    window = tf.reshape(window, [rows, size, columns, size, depth])
    return tf.reshape(tf.transpose(window, [0, 2, 1, 3, 4]), [rows * columns, size, size, depth])

  return tf.data.Dataset.from_tensor_slices(
    (tiles(image, channels), tiles(mask[..., tf.newaxis], 1)[..., 0])
  )


def make_crop_dataset(
  loader: PairLoader,
  *,
  crop: int,
  scale: float,
  channels: int,
  batch_size: int,
  training: bool,
  augment: bool = True,
  seed: int = 0,
) -> tf.data.Dataset:
  """Batches of (float32 images 0..255, int32 masks, float32 pixel weights), `crop` x `crop`
  windows of the pairs at `scale` times their full resolution (`loader` decoding in full).

  training: each pair once per epoch, in shuffled order, as a random window (a different one
  each epoch), flipped and colour-jittered when `augment`.
  Otherwise (validation): every pair's grid of crops (`_grid_crops`), the same each pass, so
  the best-checkpoint monitor compares epochs on the same pixels.

  The scaled full pairs are cached in memory (as uint8): fine for the hundreds of photos
  training sets here hold, and decoding each photo once per epoch would cost far more. Training
  crops stay out of the cache, which would freeze them; validation crops are cached instead of
  their images, being fixed. Like `make_dataset`, the dataset knows its length in batches.
  """
  dataset = _decoded(loader, channels).map(
    lambda image, mask: _scaled(image, mask, scale), num_parallel_calls=tf.data.AUTOTUNE
  )
  if training:
    dataset = dataset.cache()
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(_count(dataset, loader)))
    dataset = dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    # Pairs of int64 seeds, drawn anew each time the dataset is iterated (each epoch).
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip((dataset, seeds)).map(
      lambda pair, pair_seed: _random_crop(*pair, pair_seed, crop, augment),
      num_parallel_calls=tf.data.AUTOTUNE,
    )
  else:
    dataset = dataset.flat_map(lambda image, mask: _grid_crops(image, mask, crop, channels)).cache()
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(_count(dataset, loader)))
    dataset = dataset.map(lambda image, mask: (tf.cast(image, tf.float32), mask))
  return dataset.map(_with_weights).batch(batch_size).prefetch(tf.data.AUTOTUNE)
