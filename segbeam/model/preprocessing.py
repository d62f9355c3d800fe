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
    image = decode_image(data, channels)
    shape = tf.shape(image)
    return resize_image(image, size), shape[0], shape[1]

  return tf.map_fn(
      one, encoded,
      fn_output_signature=(tf.TensorSpec([size, size, channels], tf.float32),
                           tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)))
