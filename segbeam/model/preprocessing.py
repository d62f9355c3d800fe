"""Image decoding and resizing shared by training, evaluation and the exported serving graph.

One function decodes for all three, so the model never sees pixels at serving time that were
prepared differently from the ones it was trained on.
"""

from __future__ import annotations

from typing import Union

import tensorflow as tf

from segbeam.model import config as config_lib

Size = Union[int, tuple[int, int]]


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
    scale_index = tf.add_n(
      [tf.cast(short_side >= scale * size, tf.int32) for scale in JPEG_SCALES[1:]]
    )
    image = tf.switch_case(
      scale_index,
      [
        (lambda ratio=ratio: tf.io.decode_jpeg(encoded, channels=channels, ratio=ratio))
        for ratio in JPEG_SCALES
      ],
    )
    image.set_shape([None, None, channels])
    return image, shape[0], shape[1]

  def other():
    image = decode_image(encoded, channels)
    shape = tf.shape(image)
    return image, shape[0], shape[1]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 or float [H, W, C] -> float32 [size, size, C] in 0..255, bilinear with antialiasing."""
  resized = tf.image.resize(
    tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True
  )
  return tf.clip_by_value(resized, 0.0, 255.0)


def resize_mask(mask: tf.Tensor, size: int) -> tf.Tensor:
  """Class-index mask [H, W] -> [size, size], nearest neighbour: a class index is never blended
  into a value between two classes."""
  resized = tf.image.resize(mask[..., tf.newaxis], [size, size], method="nearest")
  return tf.cast(resized[..., 0], mask.dtype)


def _height_width(size: Size) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_full_image(image: tf.Tensor, size: Size, method: str) -> tf.Tensor:
  """uint8 [H, W, C] -> float32 [height, width, C], as `tf.image.resize` gives it with `method`
  ('antialias': bilinear with antialiasing): what a model's own tf.data pipeline usually did."""
  antialias = method == config_lib.RESIZE_ANTIALIAS
  return tf.image.resize(
    tf.cast(image, tf.float32),
    _height_width(size),
    method="bilinear" if antialias else method,
    antialias=antialias,
  )


def decode_and_resize_batch(
  encoded: tf.Tensor, size: Size, channels: int, resize: str = config_lib.RESIZE_DCT_ANTIALIAS
):
  """1-D string tensor of encoded images -> (float32 [B, height, width, C] in 0..255, int32
  heights [B], int32 widths [B]), the original sizes being those of the decoded images.

  `resize` (see `config.RESIZE_METHODS`): 'dct-antialias', segbeam's own, decodes JPEGs at a
  reduced DCT scale (`decode_for_size`); the other methods decode in full, so that the pixels
  equal those of a pipeline that called `tf.image.resize` on the decoded image.
  """
  height, width = _height_width(size)

  def one(data):
    if resize == config_lib.RESIZE_DCT_ANTIALIAS:
      if height != width:
        raise ValueError("the 'dct-antialias' resize serves square inputs only")
      image, image_height, image_width = decode_for_size(data, channels, height)
      return resize_image(image, height), image_height, image_width
    image = decode_image(data, channels)
    shape = tf.shape(image)
    return resize_full_image(image, (height, width), resize), shape[0], shape[1]

  return tf.map_fn(
    one,
    encoded,
    fn_output_signature=(
      tf.TensorSpec([height, width, channels], tf.float32),
      tf.TensorSpec([], tf.int32),
      tf.TensorSpec([], tf.int32),
    ),
  )


# ImageNet statistics as `keras.applications.imagenet_utils.preprocess_input` applies them.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def normalize(pixels: tf.Tensor, convention: str) -> tf.Tensor:
  """float32 [..., C] pixels in 0..255 (RGB) -> the model's input under `convention` (see
  `config.PREPROCESS_CONVENTIONS`), with the same operations in the same order as the
  conventions' usual implementations, so the values agree to the last bit."""
  if convention == config_lib.PREPROCESS_NONE:
    return pixels
  if convention == config_lib.PREPROCESS_UNIT:
    return pixels / 255.0
  if convention == config_lib.PREPROCESS_SYMMETRIC:
    return pixels / 127.5 - 1.0
  if convention == config_lib.PREPROCESS_CAFFE:
    return pixels[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN, tf.float32)
  if convention == config_lib.PREPROCESS_TORCH:
    return (pixels / 255.0 - tf.constant(_TORCH_MEAN, tf.float32)) / tf.constant(
      _TORCH_STD, tf.float32
    )
  raise ValueError(
    f"unknown preprocessing {convention!r}; known: {', '.join(config_lib.PREPROCESS_CONVENTIONS)}"
  )
