"""Encoder weights: loaded from a file the test writes itself; clear errors otherwise."""

import keras
import numpy as np
import pytest

from segbeam.model import encoders

SIZE = 64


def _first_kernel(model):
  return next(w for w in model.weights if "kernel" in w.path).numpy()


@pytest.mark.parametrize(
  "name,application",
  [("mobilenetv2", keras.applications.MobileNetV2), ("vgg16", keras.applications.VGG16)],
)
def test_keras_application_encoder_loads_a_weights_file(tmp_path, name, application):
  keras.utils.set_random_seed(7)
  source = application(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None)
  path = str(tmp_path / f"{name}.weights.h5")
  source.save_weights(path)
  keras.utils.set_random_seed(8)  # A different random init, so equality proves the load.
  encoder = encoders.build_encoder(encoders.encoder_spec(name), SIZE, path)
  np.testing.assert_array_equal(_first_kernel(encoder), _first_kernel(source))
  source_weights = {w.path: w.numpy() for w in source.weights}
  for weight in encoder.weights:  # The encoder is a prefix of the application's layers.
    np.testing.assert_array_equal(weight.numpy(), source_weights[weight.path])


def test_resnet34_loads_a_weights_file(tmp_path):
  keras.utils.set_random_seed(7)
  source = encoders.build_resnet34(SIZE, None)
  path = str(tmp_path / "resnet34.weights.h5")
  source.save_weights(path)
  keras.utils.set_random_seed(8)
  loaded = encoders.build_resnet34(SIZE, path)
  for a, b in zip(source.weights, loaded.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_resnet34_has_the_resnet34_shape():
  model = encoders.build_resnet34(SIZE, None)
  blocks = {
    layer.name.rsplit("_", 1)[0]
    for layer in model.layers
    if layer.name.startswith("stage") and layer.name.endswith("_out")
  }
  per_stage = [sum(1 for b in blocks if b.startswith(f"stage{s}_")) for s in (1, 2, 3, 4)]
  assert per_stage == [3, 4, 6, 3]
  assert 21_000_000 < model.count_params() < 21_500_000  # ResNet34 without its classifier.
  assert tuple(model.output.shape) == (None, SIZE // 32, SIZE // 32, 512)


def test_missing_weights_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="encoder weights file not found"):
    encoders.build_encoder(encoders.encoder_spec("mobilenetv2"), SIZE, str(tmp_path / "no.h5"))


def test_resnet34_has_no_keras_imagenet_weights():
  with pytest.raises(ValueError, match="no ImageNet weights for resnet34"):
    encoders.build_encoder(encoders.encoder_spec("resnet34"), SIZE, encoders.IMAGENET)


def test_unknown_encoder():
  with pytest.raises(ValueError, match="unknown encoder"):
    encoders.encoder_spec("efficientnet")


def test_imagenet_download_failure_is_a_clear_error(monkeypatch):
  """The real download path, made to fail by an unreachable proxy (no network needed)."""
  import os

  cached = os.path.expanduser(
    "~/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
  )
  if os.path.exists(cached):
    pytest.skip("the ImageNet weights are cached here; nothing to download")
  import urllib.request

  # urlopen caches a global opener built from the proxy variables: keep it out of other tests.
  monkeypatch.setattr(urllib.request, "_opener", None)
  for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
  monkeypatch.delenv("no_proxy", raising=False)
  monkeypatch.delenv("NO_PROXY", raising=False)
  with pytest.raises(ValueError, match="could not get ImageNet weights for mobilenetv2"):
    encoders.build_encoder(encoders.encoder_spec("mobilenetv2"), 96, encoders.IMAGENET)
