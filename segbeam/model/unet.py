"""The U-Net: preprocessing + encoder + decoder blocks + head, composed from a `UNetConfig`."""

from __future__ import annotations

import warnings

import keras

from segbeam.model import config as config_lib
from segbeam.model import decoders
from segbeam.model import encoders
from segbeam.model import layers

ENCODER_LAYER = "encoder"

RANDOM_ENCODER_FROZEN_WARNING = (
  "freezing a randomly initialised encoder makes it a fixed random feature extractor: only "
  "the decoder and head will learn. Use encoder trainable 'all' (or 'auto') without weights."
)


def build_unet(config: config_lib.UNetConfig) -> keras.Model:
  """Builds the U-Net the config describes; its input is raw 0..255 pixels, its output logits."""
  spec = encoders.encoder_spec(config.encoder.name)
  image = keras.Input((config.input_size, config.input_size, config.channels), name="image")
  x = image
  if config.channels == 1:
    x = layers.RepeatChannels(3, name="to_rgb")(x)
  x = layers.PixelNormalization(**spec.normalization, name="normalize")(x)

  encoder = encoders.build_encoder(spec, config.input_size, config.encoder.weights)
  *skips, x = encoder(x)
  skip_by_stride = dict(zip(spec.skip_strides, skips))

  stride = config_lib.BOTTLENECK_STRIDE
  for index in range(len(config.decoder.filters)):
    stride //= 2
    skip = skip_by_stride.get(stride)
    block = decoders.build_decoder_block(
      config.decoder, index, tuple(x.shape), None if skip is None else tuple(skip.shape)
    )
    x = block([x, skip] if skip is not None else x)

  head = decoders.build_head(config.num_classes, config.decoder.output_stride, tuple(x.shape))
  logits = head(x)
  model = keras.Model(image, logits, name=f"unet_{config.architecture}")
  set_encoder_trainable(model, config.encoder)
  return model


def set_encoder_trainable(model: keras.Model, encoder_config: config_lib.EncoderConfig) -> None:
  """Applies the encoder's trainability policy (see `EncoderConfig.trainable`)."""
  encoder = model.get_layer(ENCODER_LAYER)
  policy = encoder_config.effective_trainable
  if policy == config_lib.TRAINABLE_ALL:
    encoder.trainable = True
    return
  if not encoder_config.pretrained:
    warnings.warn(RANDOM_ENCODER_FROZEN_WARNING, stacklevel=2)
  if policy == config_lib.TRAINABLE_FROZEN:
    encoder.trainable = False
    return
  # Fine-tuning: only the top N layers that hold weights train.
  encoder.trainable = True
  weighted = [layer for layer in encoder.layers if layer.weights]
  for layer in weighted[: max(len(weighted) - policy, 0)]:
    layer.trainable = False
