"""Every registered architecture, timm-style: small inputs, shapes, NaNs, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbeam.model import config as config_lib
from segbeam.model import unet

SMALL = 64
VARIANTS = [
  (name, upsample)
  for name in sorted(config_lib.PRESETS)
  for upsample in (config_lib.UPSAMPLE_TRANSPOSE, config_lib.UPSAMPLE_UPSAMPLING)
  if not (name == "mobilenetv2" and upsample == config_lib.UPSAMPLE_UPSAMPLING)
]


def _build(name, **changes):
  keras.utils.set_random_seed(0)
  return unet.build_unet(config_lib.preset(name, input_size=SMALL, **changes))


@pytest.mark.parametrize("name,upsample", VARIANTS)
def test_forward_shape_no_nan_and_every_trainable_weight_gets_a_gradient(name, upsample):
  changes = dict(num_classes=4, decoder_upsample=upsample)
  if upsample == config_lib.UPSAMPLE_UPSAMPLING:
    changes["decoder_convs_per_block"] = max(config_lib.PRESETS[name].decoder.convs_per_block, 1)
  model = _build(name, **changes)
  images = np.random.default_rng(0).uniform(0, 255, (2, SMALL, SMALL, 3)).astype("float32")
  labels = np.random.default_rng(1).integers(0, 4, (2, SMALL, SMALL))
  with tf.GradientTape() as tape:
    logits = model(images, training=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
  assert tuple(logits.shape) == (2, SMALL, SMALL, 4)
  assert np.isfinite(logits.numpy()).all()
  gradients = tape.gradient(loss, model.trainable_weights)
  no_gradient = [
    w.path for w, g in zip(model.trainable_weights, gradients) if g is None or not np.any(g.numpy())
  ]
  assert not no_gradient, f"weights without gradient: {no_gradient[:5]}"
  assert all(np.isfinite(g.numpy()).all() for g in gradients)


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_grayscale_input(name):
  model = _build(name, channels=1, num_classes=2)
  assert tuple(model.input.shape) == (None, SMALL, SMALL, 1)
  out = model(np.full((1, SMALL, SMALL, 1), 128.0, "float32"))
  assert tuple(out.shape) == (1, SMALL, SMALL, 2)


def test_tutorial_unet_parameter_counts_are_pinned():
  """The TensorFlow tutorial's model at 128x128x3, 3 classes, frozen encoder."""
  with pytest.warns(UserWarning, match="randomly initialised encoder"):
    model = unet.build_unet(config_lib.preset("mobilenetv2", encoder_trainable="frozen"))
  trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  assert model.count_params() == 6_504_227
  assert trainable == 4_660_323


def _trainable_encoder_weights(model):
  return sum(int(np.prod(w.shape)) for w in model.get_layer(unet.ENCODER_LAYER).trainable_weights)


def test_pretrained_encoder_is_frozen_by_default(tmp_path):
  weights = tmp_path / "mobilenetv2.weights.h5"
  keras.applications.MobileNetV2(
    input_shape=(SMALL, SMALL, 3), include_top=False, weights=None
  ).save_weights(weights)
  model = _build("mobilenetv2", encoder_weights=str(weights))
  assert _trainable_encoder_weights(model) == 0


def test_random_encoder_trains_by_default_and_freezing_it_warns():
  assert _trainable_encoder_weights(_build("resnet34")) > 0
  with pytest.warns(UserWarning, match="fixed random feature extractor"):
    frozen = _build("resnet34", encoder_trainable="frozen")
  assert _trainable_encoder_weights(frozen) == 0


def test_fine_tuning_unfreezes_only_the_top_layers(tmp_path):
  weights = tmp_path / "vgg16.weights.h5"
  keras.applications.VGG16(
    input_shape=(SMALL, SMALL, 3), include_top=False, weights=None
  ).save_weights(weights)
  model = _build("vgg16", encoder_weights=str(weights), encoder_trainable=2)
  encoder = model.get_layer(unet.ENCODER_LAYER)
  trainable_layers = [layer.name for layer in encoder.layers if layer.trainable_weights]
  assert trainable_layers == ["block5_conv2", "block5_conv3"]
  everything = _build("vgg16", encoder_weights=str(weights), encoder_trainable="all")
  assert (
    _trainable_encoder_weights(everything)
    == everything.get_layer(unet.ENCODER_LAYER).count_params()
  )


def test_config_validation():
  with pytest.raises(ValueError, match="multiple of 32"):
    config_lib.preset("mobilenetv2", input_size=100)
  with pytest.raises(ValueError, match="channels"):
    config_lib.preset("mobilenetv2", channels=4)
  with pytest.raises(ValueError, match="unknown architecture"):
    config_lib.preset("alexnet")
  with pytest.raises(ValueError, match="trainable"):
    config_lib.preset("vgg16", encoder_trainable="some")


def test_config_round_trips_through_a_dict():
  config = config_lib.preset(
    "resnet34", input_size=96, encoder_trainable=3, decoder_upsample="transpose"
  )
  assert config_lib.UNetConfig.from_dict(config.to_dict()) == config


def test_tutorial_unet_skip_resolutions():
  """Skips at strides 2, 4, 8, 16 and the bottleneck at 32, as the tutorial's layers give."""
  encoder = _build("mobilenetv2").get_layer(unet.ENCODER_LAYER)
  assert [tuple(o.shape[1:]) for o in encoder.outputs] == [
    (32, 32, 96),
    (16, 16, 144),
    (8, 8, 192),
    (4, 4, 576),
    (2, 2, 320),
  ]
