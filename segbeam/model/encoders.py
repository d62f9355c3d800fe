"""Encoders (backbones): each maps a normalised image to skip features and a bottleneck.

An encoder is a `keras.Model` named "encoder" whose outputs are the skip features, finest first,
then the bottleneck at stride 32. `EncoderSpec` records the strides of the skips so the decoder
can pair each of its blocks with the skip of the same resolution.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Optional

import keras

IMAGENET = "imagenet"

# Normalisations the published weights were trained with, on 0..255 RGB input.
_TF_MODE = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))  # to [-1, 1]
_CAFFE_MODE = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), reverse_channels=True)
_TORCH_MODE = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """How to build one encoder.

  Attributes:
    name: registry name.
    build_base: builds the full backbone for (input_size, weights) where weights is None,
      'imagenet' or a file path, loading them.
    skip_layers: names of the layers whose outputs are the skips, finest first.
    bottleneck_layer: name of the layer whose output is the stride-32 bottleneck.
    skip_strides: stride of each skip relative to the input, same order as `skip_layers`.
    normalization: keyword arguments of `layers.PixelNormalization` for this encoder's weights.
    imagenet_available: whether Keras distributes ImageNet weights for it.
  """

  name: str
  build_base: Callable[[int, Optional[str]], keras.Model]
  skip_layers: tuple[str, ...]
  bottleneck_layer: str
  skip_strides: tuple[int, ...]
  normalization: Mapping[str, object]
  imagenet_available: bool = True


def _check_weights(name: str, weights: Optional[str], imagenet_available: bool) -> None:
  if weights is None:
    return
  if weights == IMAGENET:
    if not imagenet_available:
      raise ValueError(
        f"Keras distributes no ImageNet weights for {name}; pass a weights file instead "
        "(--encoder-weights PATH)"
      )
    return
  if not os.path.exists(weights):
    raise FileNotFoundError(f"encoder weights file not found: {weights}")


def _keras_application(constructor: Callable[..., keras.Model], name: str):
  """Builds a keras.applications backbone; Keras itself loads 'imagenet' or a file path."""

  def build(input_size: int, weights: Optional[str]) -> keras.Model:
    _check_weights(name, weights, imagenet_available=True)
    try:
      return constructor(
        input_shape=(input_size, input_size, 3), include_top=False, weights=weights
      )
    except Exception as error:  # Keras' download raises Exception
      if weights == IMAGENET:
        raise ValueError(
          f"could not get ImageNet weights for {name} ({error}); without network access "
          "pass a local weights file with --encoder-weights PATH"
        ) from error
      raise

  return build


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, name: str):
  x = keras.layers.Conv2D(
    filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
  )(x)
  x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, filters: int, stride: int, name: str):
  """ResNet basic block: two 3x3 convs, projection shortcut when the shape changes."""
  shortcut = x
  if stride != 1 or x.shape[-1] != filters:
    shortcut = keras.layers.Conv2D(
      filters, 1, strides=stride, use_bias=False, name=f"{name}_shortcut_conv"
    )(x)
    shortcut = keras.layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
  y = _conv_bn_relu(x, filters, 3, stride, name=f"{name}_1")
  y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
  y = keras.layers.BatchNormalization(name=f"{name}_2_bn")(y)
  y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
  return keras.layers.ReLU(name=f"{name}_out")(y)


RESNET34_STAGES = (3, 4, 6, 3)
RESNET34_WIDTHS = (64, 128, 256, 512)


def build_resnet34(input_size: int, weights: Optional[str]) -> keras.Model:
  """ResNet34 without its classifier: stem, then stages of 3, 4, 6, 3 basic blocks."""
  _check_weights("resnet34", weights, imagenet_available=False)
  inputs = keras.Input((input_size, input_size, 3))
  x = _conv_bn_relu(inputs, 64, 7, 2, name="stem")
  x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
  for stage, (blocks, filters) in enumerate(zip(RESNET34_STAGES, RESNET34_WIDTHS), start=1):
    for block in range(1, blocks + 1):
      stride = 2 if block == 1 and stage > 1 else 1
      x = _basic_block(x, filters, stride, name=f"stage{stage}_block{block}")
  model = keras.Model(inputs, x, name="resnet34")
  if weights is not None:
    model.load_weights(weights)
  return model


ENCODERS: Mapping[str, EncoderSpec] = {
  "mobilenetv2": EncoderSpec(
    name="mobilenetv2",
    build_base=_keras_application(keras.applications.MobileNetV2, "mobilenetv2"),
    skip_layers=(
      "block_1_expand_relu",
      "block_3_expand_relu",
      "block_6_expand_relu",
      "block_13_expand_relu",
    ),
    bottleneck_layer="block_16_project",
    skip_strides=(2, 4, 8, 16),
    normalization=_TF_MODE,
  ),
  "resnet34": EncoderSpec(
    name="resnet34",
    build_base=build_resnet34,
    skip_layers=("stem_relu", "stage1_block3_out", "stage2_block4_out", "stage3_block6_out"),
    bottleneck_layer="stage4_block3_out",
    skip_strides=(2, 4, 8, 16),
    normalization=_TORCH_MODE,
    imagenet_available=False,
  ),
  "vgg16": EncoderSpec(
    name="vgg16",
    build_base=_keras_application(keras.applications.VGG16, "vgg16"),
    skip_layers=("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
    bottleneck_layer="block5_pool",
    skip_strides=(1, 2, 4, 8, 16),
    normalization=_CAFFE_MODE,
  ),
}


def encoder_spec(name: str) -> EncoderSpec:
  try:
    return ENCODERS[name]
  except KeyError:
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}") from None


def build_encoder(spec: EncoderSpec, input_size: int, weights: Optional[str]) -> keras.Model:
  """The encoder as one model: input -> [skips finest first..., bottleneck]."""
  base = spec.build_base(input_size, weights)
  outputs = [base.get_layer(name).output for name in (*spec.skip_layers, spec.bottleneck_layer)]
  return keras.Model(base.input, outputs, name="encoder")
