"""Image decoding and resizing shared by training, evaluation and the exported serving graph.

One function decodes for all three, so the model never sees pixels at serving time that were
prepared differently from the ones it was trained on.
"""

from __future__ import annotations

import tensorflow as tf


def decode_image(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [height, width, channels].

  The format comes from the bytes, not a file name. GIFs give their first frame; grayscale,
  RGBA and palette images are converted to `channels`; 16-bit PNGs are scaled to 8 bits.
  """
  image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


JPEG_SCALES = (1, 2, 4, 8)


def decode_for_size(encoded: tf.Tensor, channels: int, size: int):
  """Encoded bytes -> (uint8 image, original height, original width) for resizing to `size`.

  A JPEG is decoded at the largest DCT scale (1/2, 1/4 or 1/8) that still leaves both sides at
  least `size`: libjpeg then skips most of the work, and the scaled decode is itself a proper
  low-pass, so the final resize loses nothing. Other formats decode fully. The original size is
  always that of the full image.
  """

  def jpeg():
    shape = tf.io.extract_jpeg_shape(encoded)
    short_side = tf.minimum(shape[0], shape[1])
    scale_index = tf.add_n([tf.cast(short_side >= scale * size, tf.int32)
                            for scale in JPEG_SCALES[1:]])
    image = tf.switch_case(scale_index, [
        (lambda ratio=ratio: tf.io.decode_jpeg(encoded, channels=channels, ratio=ratio))
        for ratio in JPEG_SCALES])
    image.set_shape([None, None, channels])
    return image, shape[0], shape[1]

  def other():
    image = decode_image(encoded, channels)
    shape = tf.shape(image)
    return image, shape[0], shape[1]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 or float [H, W, C] -> float32 [size, size, C] in 0..255, bilinear with antialiasing."""
  resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                            antialias=True)
  return tf.clip_by_value(resized, 0.0, 255.0)


def resize_mask(mask: tf.Tensor, size: int) -> tf.Tensor:
  """Class-index mask [H, W] -> [size, size], nearest neighbour: a class index is never blended
  into a value between two classes."""
  resized = tf.image.resize(mask[..., tf.newaxis], [size, size], method="nearest")
  return tf.cast(resized[..., 0], mask.dtype)


def decode_and_resize_batch(encoded: tf.Tensor, size: int, channels: int):
  """1-D string tensor of encoded images -> (float32 [B, size, size, C], int32 heights [B],
  int32 widths [B]), the original sizes being those of the decoded images."""

  def one(data):
    image, height, width = decode_for_size(data, channels, size)
    return resize_image(image, size), height, width

  return tf.map_fn(
      one, encoded,
      fn_output_signature=(tf.TensorSpec([size, size, channels], tf.float32),
                           tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)))
