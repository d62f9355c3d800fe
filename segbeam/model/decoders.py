"""Decoder blocks and segmentation heads.

Each decoder block is its own small `keras.Model` (named decoder_block_N) so that a summary can
report, per block, the shape change and the parameters that train.
"""

from __future__ import annotations

from typing import Optional

import keras

from segbeam.model import config as config_lib

# The pix2pix upsample block initialises its transpose convolution like this.
_PIX2PIX_INITIALIZER = dict(class_name="RandomNormal", config=dict(mean=0.0, stddev=0.02))


def build_decoder_block(
  decoder: config_lib.DecoderConfig, index: int, input_shape: tuple, skip_shape: Optional[tuple]
) -> keras.Model:
  """Decoder block `index` (0 = coarsest): upsample x2, concatenate the skip, then convs.

  With `convs_per_block=0` and 'transpose' this is exactly the TensorFlow tutorial's
  `pix2pix.upsample` (Conv2DTranspose stride 2 -> BatchNorm -> optional Dropout -> ReLU) followed
  by the tutorial's Concatenate.
  """
  filters = decoder.filters[index]
  name = f"decoder_block_{index + 1}"
  x_in = keras.Input(input_shape[1:], name=f"{name}_input")
  inputs = [x_in]
  if decoder.upsample == config_lib.UPSAMPLE_TRANSPOSE:
    x = keras.layers.Conv2DTranspose(
      filters,
      decoder.upsample_kernel,
      strides=2,
      padding="same",
      use_bias=False,
      kernel_initializer=keras.initializers.get(_PIX2PIX_INITIALIZER),
      name=f"{name}_transpose",
    )(x_in)
    x = keras.layers.BatchNormalization(name=f"{name}_transpose_bn")(x)
    if decoder.dropout_rate:
      x = keras.layers.Dropout(decoder.dropout_rate, name=f"{name}_dropout")(x)
    x = keras.layers.ReLU(name=f"{name}_transpose_relu")(x)
  else:
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsampling")(x_in)
  if skip_shape is not None:
    skip_in = keras.Input(skip_shape[1:], name=f"{name}_skip")
    inputs.append(skip_in)
    x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip_in])
  for conv in range(1, decoder.convs_per_block + 1):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{conv}")(
      x
    )
    x = keras.layers.BatchNormalization(name=f"{name}_conv{conv}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_conv{conv}_relu")(x)
    if decoder.dropout_rate and decoder.upsample != config_lib.UPSAMPLE_TRANSPOSE:
      x = keras.layers.Dropout(decoder.dropout_rate, name=f"{name}_conv{conv}_dropout")(x)
  return keras.Model(inputs if len(inputs) > 1 else x_in, x, name=name)


def build_head(num_classes: int, decoder_output_stride: int, input_shape: tuple) -> keras.Model:
  """Per-pixel class logits at the input resolution.

  A decoder that stops at stride 2 (the tutorial's four blocks) gets the tutorial's last layer,
  a Conv2DTranspose with stride 2; a full-resolution decoder gets a 3x3 convolution.
  """
  x_in = keras.Input(input_shape[1:], name="head_input")
  if decoder_output_stride == 2:
    logits = keras.layers.Conv2DTranspose(
      num_classes, 3, strides=2, padding="same", name="head_transpose"
    )(x_in)
  elif decoder_output_stride == 1:
    logits = keras.layers.Conv2D(num_classes, 3, padding="same", name="head_conv")(x_in)
  else:
    raise ValueError(f"a head cannot upsample from stride {decoder_output_stride}")
  return keras.Model(x_in, logits, name="head")
