"""Small custom layers, registered so `.keras` checkpoints reload without `custom_objects`."""

from __future__ import annotations

from typing import Sequence

import keras


@keras.saving.register_keras_serializable(package="segbeam")
class PixelNormalization(keras.layers.Layer):
  """Maps raw 0..255 pixels to what an encoder's weights expect: (x[..., order] - mean) / std.

  Kept inside the model (not in the data pipeline) so that training, evaluation and the export
  all feed raw pixels and cannot disagree about the normalisation. It has no weights.
  """

  def __init__(
    self, mean: Sequence[float], std: Sequence[float], reverse_channels: bool = False, **kwargs
  ):
    super().__init__(**kwargs)
    self.mean = [float(m) for m in mean]
    self.std = [float(s) for s in std]
    self.reverse_channels = bool(reverse_channels)

  def call(self, inputs):
    x = keras.ops.cast(inputs, self.compute_dtype)
    if self.reverse_channels:  # RGB -> BGR for Caffe-trained weights (VGG16).
      x = keras.ops.flip(x, axis=-1)
    mean = keras.ops.convert_to_tensor(self.mean, dtype=x.dtype)
    std = keras.ops.convert_to_tensor(self.std, dtype=x.dtype)
    return (x - mean) / std

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {
      **super().get_config(),
      "mean": self.mean,
      "std": self.std,
      "reverse_channels": self.reverse_channels,
    }


@keras.saving.register_keras_serializable(package="segbeam")
class RepeatChannels(keras.layers.Layer):
  """Repeats a one-channel image to `channels` channels, so RGB encoder weights apply to
  grayscale input. No weights."""

  def __init__(self, channels: int = 3, **kwargs):
    super().__init__(**kwargs)
    self.channels = int(channels)

  def call(self, inputs):
    return keras.ops.repeat(inputs, self.channels, axis=-1)

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.channels)

  def get_config(self):
    return {**super().get_config(), "channels": self.channels}


def load_keras_model(path: str) -> keras.Model:
  """Loads a `.keras` checkpoint of a segbeam U-Net (this module registers its layers)."""
  return keras.models.load_model(path)
