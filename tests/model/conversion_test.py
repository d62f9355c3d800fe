"""`segbeam export` on models built the way their users build them, checked on real photos.

Each model is made in the test, small and untrained (no pretrained weights can be downloaded
here), saved in its user's format, exported with `segbeam export`, and compared with the
original model run on pixels prepared the way that model's own pipeline prepares them: the
class mask equal at every pixel, probabilities within 1e-5.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import re
import zipfile
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbeam import cli
from segbeam.model import contract
from segbeam.model import export as export_lib
from segbeam.model import postprocess
from segbeam.results import output as output_lib
from tests import accounting

PHOTOS = 6
TOLERANCE = 1e-5

# tf.keras says .h5 is a legacy format: these tests save one because their users have them.
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


@pytest.fixture(scope="module")
def photos(shared_data):
  """(path, encoded bytes) of a few real photos of different sizes."""
  paths = sorted(glob.glob(os.path.join(shared_data, "images", "*.jpg")))[:PHOTOS]
  return [(path, open(path, "rb").read()) for path in paths]


@dataclasses.dataclass
class Case:
  """A user's model and its own pipeline.

  Attributes:
    source: the saved model (file or folder).
    reference: encoded image -> class probabilities [H, W, classes] at the model's input size,
      computed with the original model and its own preprocessing.
    export_args: what its user tells `segbeam export`.
  """

  source: str
  reference: Callable[[bytes], np.ndarray]
  export_args: list[str]


def _decoded(encoded: bytes) -> tf.Tensor:
  return tf.io.decode_jpeg(encoded, channels=3)


def _resized(encoded: bytes, size: int, method: str = "bilinear") -> np.ndarray:
  """Full decode and `tf.image.resize` (no antialiasing), as tf.data pipelines do."""
  return tf.image.resize(_decoded(encoded), (size, size), method=method).numpy()


def _pix2pix_upsample(filters: int):
  """The tutorial's `pix2pix.upsample` block (Conv2DTranspose, BatchNorm, ReLU)."""
  return keras.Sequential(
    [
      keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False),
      keras.layers.BatchNormalization(),
      keras.layers.ReLU(),
    ]
  )


def tutorial_unet(tmp_path) -> Case:
  """The TensorFlow segmentation tutorial's U-Net, saved with model.save('unet.keras')."""
  keras.utils.set_random_seed(0)
  base = keras.applications.MobileNetV2(input_shape=[128, 128, 3], include_top=False, weights=None)
  names = [
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
    "block_16_project",
  ]
  down_stack = keras.Model(base.input, [base.get_layer(n).output for n in names])
  down_stack.trainable = False
  inputs = keras.layers.Input(shape=[128, 128, 3])
  *skips, x = down_stack(inputs)
  for up, skip in zip([_pix2pix_upsample(f) for f in (512, 256, 128, 64)], reversed(skips)):
    x = keras.layers.Concatenate()([up(x), skip])
  outputs = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same")(x)  # logits
  model = keras.Model(inputs, outputs)
  path = str(tmp_path / "unet.keras")
  model.save(path)

  def reference(encoded):
    pixels = tf.cast(_resized(encoded, 128), tf.float32) / 255.0  # the tutorial's normalize()
    return tf.nn.softmax(model(pixels[tf.newaxis], training=False), axis=-1).numpy()[0]

  return Case(path, reference, ["--preprocess", "unit", "--class-names", "pet,background,border"])


def resnet_unet_h5(tmp_path) -> Case:
  """A ResNet34-style U-Net in tf.keras (Keras 2) with one sigmoid channel, saved as .h5, fed
  as segmentation-models pipelines feed it: bilinear resize, ImageNet mean and std."""
  tf_keras = pytest.importorskip("tf_keras")
  layers = tf_keras.layers
  tf_keras.utils.set_random_seed(1)

  def basic_block(x, filters, stride):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.ReLU()(layers.BatchNormalization()(y))
    y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
    if stride != 1 or shortcut.shape[-1] != filters:
      shortcut = layers.BatchNormalization()(
        layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
      )
    return layers.ReLU()(layers.Add()([y, shortcut]))

  inputs = layers.Input((64, 64, 3))
  x = layers.ReLU()(
    layers.BatchNormalization()(
      layers.Conv2D(16, 7, strides=2, padding="same", use_bias=False)(inputs)
    )
  )  # /2
  skips = [x]
  x = layers.MaxPooling2D(3, strides=2, padding="same")(x)  # /4
  for filters, stride in ((16, 1), (32, 2), (64, 2)):  # /4, /8, /16
    x = basic_block(x, filters, stride)
    skips.append(x)
  skips.pop()
  for filters in (64, 32, 16):  # decoder: UpSampling2D, concatenate, two convs
    x = layers.Concatenate()([layers.UpSampling2D()(x), skips.pop()])
    for _ in range(2):
      x = layers.ReLU()(
        layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
      )
  x = layers.UpSampling2D()(x)
  outputs = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
  model = tf_keras.Model(inputs, outputs)
  path = str(tmp_path / "resnet34_unet.h5")
  model.save(path)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

  def reference(encoded):
    pixels = _resized(encoded, 64) / 255.0
    pixels = ((pixels - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32)
    foreground = model(pixels[np.newaxis], training=False).numpy()[0]
    return np.concatenate([1.0 - foreground, foreground], axis=-1)

  return Case(path, reference, ["--preprocess", "torch", "--class-names", "background,pet"])


def vgg16_unet(tmp_path) -> Case:
  """A VGG16 U-Net with a softmax head, fed with Keras' caffe preprocessing after an area
  resize."""
  keras.utils.set_random_seed(2)
  base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
  skips = [
    base.get_layer(n).output
    for n in ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")
  ]
  x = base.get_layer("block5_conv3").output
  for filters, skip in zip((64, 32, 16, 16), reversed(skips)):
    x = keras.layers.Concatenate()([keras.layers.UpSampling2D()(x), skip])
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
  outputs = keras.layers.Conv2D(4, 1, activation="softmax")(x)
  model = keras.Model(base.input, outputs)
  path = str(tmp_path / "vgg16_unet.keras")
  model.save(path)

  def reference(encoded):
    pixels = keras.applications.vgg16.preprocess_input(_resized(encoded, 64, "area"))
    return model(pixels[np.newaxis], training=False).numpy()[0]

  return Case(path, reference, ["--preprocess", "caffe", "--resize", "area"])


class _OtherTeamsModel(tf.Module):
  """Another team's export: a SavedModel with a pixel signature and a string one."""

  def __init__(self):
    super().__init__()
    initial = tf.random.stateless_normal
    self.kernel = tf.Variable(initial([3, 3, 3, 8], seed=(3, 0)) * 0.5)
    self.head = tf.Variable(initial([1, 1, 8, 3], seed=(3, 1)))
    self.bias = tf.Variable(initial([3], seed=(3, 2)))

  @tf.function(input_signature=[tf.TensorSpec([None, 48, 48, 3], tf.float32, name="image")])
  def segment(self, image):
    hidden = tf.nn.relu(tf.nn.conv2d(image, self.kernel, 1, "SAME"))
    logits = tf.nn.bias_add(tf.nn.conv2d(hidden, self.head, 1, "SAME"), self.bias)
    return {"segmentation": tf.nn.softmax(logits)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
  def lengths(self, text):
    return {"length": tf.strings.length(text)}


def saved_model_folder(tmp_path) -> Case:
  """A SavedModel folder (tf.saved_model.save) whose serving signature takes x/127.5 - 1
  pixels resized by nearest neighbour."""
  module = _OtherTeamsModel()
  path = str(tmp_path / "team_model")
  tf.saved_model.save(
    module, path, signatures={"serving_default": module.segment, "lengths": module.lengths}
  )

  def reference(encoded):
    pixels = _resized(encoded, 48, "nearest") / 127.5 - 1.0
    return module.segment(tf.constant(pixels[np.newaxis], tf.float32))["segmentation"].numpy()[0]

  return Case(path, reference, ["--preprocess", "symmetric", "--resize", "nearest"])


def quarter_output(tmp_path) -> Case:
  """A DeepLab-style head: logits at a quarter of the input, enlarged bilinearly by its
  pipeline before the argmax; images resized with antialiasing, normalised in the model."""
  keras.utils.set_random_seed(4)
  inputs = keras.Input((64, 64, 3))
  x = keras.layers.Rescaling(1 / 255.0)(inputs)
  x = keras.layers.Conv2D(12, 3, strides=2, padding="same", activation="relu")(x)
  x = keras.layers.Conv2D(12, 3, strides=2, padding="same", activation="relu")(x)
  outputs = keras.layers.Conv2D(5, 1)(x)  # 16x16 logits
  model = keras.Model(inputs, outputs)
  path = str(tmp_path / "deeplab_like.keras")
  model.save(path)

  def reference(encoded):
    pixels = tf.image.resize(_decoded(encoded), (64, 64), antialias=True)
    logits = model(pixels[tf.newaxis], training=False)
    return tf.nn.softmax(tf.image.resize(logits, (64, 64)), axis=-1).numpy()[0]

  return Case(path, reference, ["--preprocess", "none", "--resize", "antialias"])


CASES = {
  "tutorial-unet-keras": tutorial_unet,
  "resnet34-sigmoid-h5": resnet_unet_h5,
  "vgg16-caffe-keras": vgg16_unet,
  "saved-model-folder": saved_model_folder,
  "quarter-output": quarter_output,
}


def _export(case: Case, output: str, *extra: str) -> int:
  return cli.main(["export", case.source, "--output", output, *case.export_args, *extra])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_export_agrees_with_the_original_model(kind, tmp_path, photos, capsys):
  case = CASES[kind](tmp_path)
  export_dir = str(tmp_path / "export")
  assert _export(case, export_dir) == 0, capsys.readouterr().err
  assert f"exported {case.source}" in capsys.readouterr().out
  export = export_lib.LoadedExport(export_dir)
  outputs = export.predict([data for _, data in photos])
  for index, (path, data) in enumerate(photos):
    expected = case.reference(data)
    got = outputs[contract.OUTPUT_PROBABILITIES][index]
    assert got.shape == expected.shape, path
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=path)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1), err_msg=path)
    height, width = _decoded(data).shape[:2]
    assert (outputs[contract.OUTPUT_HEIGHT][index], outputs[contract.OUTPUT_WIDTH][index]) == (
      height,
      width,
    )
  # The metadata says how to serve it, for `model summary` and the run's manifest.
  assert (
    export.metadata.imported
    and export.metadata.serving["preprocess"]
    == case.export_args[case.export_args.index("--preprocess") + 1]
  )


def test_a_single_sigmoid_channel_thresholds_at_the_given_value(tmp_path, photos):
  case = resnet_unet_h5(tmp_path)
  export_dir = str(tmp_path / "export")
  assert _export(case, export_dir, "--threshold", "0.3") == 0
  export = export_lib.LoadedExport(export_dir)
  assert export.metadata.mask_threshold == 0.3
  _, data = photos[0]
  probabilities = export.predict([data])[contract.OUTPUT_PROBABILITIES][0]
  height, width = probabilities.shape[:2]
  mask, _ = postprocess.class_mask(probabilities, height, width, threshold=0.3)
  np.testing.assert_array_equal(mask, (probabilities[..., 1] > 0.3).astype(np.uint8))


@pytest.mark.parametrize(
  "kind,threshold", [("tutorial-unet-keras", None), ("resnet34-sigmoid-h5", 0.3)]
)
def test_segbeam_run_segments_photos_with_an_export(kind, threshold, tmp_path, photos):
  """An export end to end through `segbeam run`: every photo segmented, each mask at the
  photo's size equal to the one made from the original model's probabilities (thresholded
  where the export says so)."""
  case = CASES[kind](tmp_path)
  export_dir = str(tmp_path / "export")
  extra = ["--threshold", str(threshold)] if threshold else []
  assert _export(case, export_dir, *extra) == 0
  inputs = tmp_path / "photos"
  inputs.mkdir()
  for path, data in photos:
    (inputs / os.path.basename(path)).write_bytes(data)
  output = str(tmp_path / "run")
  manifest = accounting.run_and_account(
    ["--input", str(inputs / "*.jpg"), "--output", output, "--model", export_dir],
    inputs_seen=len(photos),
  )
  assert manifest["counts"]["segmented"] == len(photos)
  assert manifest["model"]["class_names"] == list(contract.read_metadata(export_dir).class_names)
  rows = (
    output_lib.RunOutput(output)
    .dataset("segments")
    .to_table(columns=["image_id", "mask_png"])
    .to_pylist()
  )
  by_id = {row["image_id"]: row["mask_png"] for row in rows}
  for path, data in photos:
    image_id = os.path.basename(path)  # the path under the input's folder
    mask = np.asarray(Image.open(io.BytesIO(by_id[image_id])))
    height, width = _decoded(data).shape[:2]
    expected, _ = postprocess.class_mask(case.reference(data), height, width, threshold=threshold)
    assert mask.shape == (height, width)
    assert np.mean(mask == expected) == 1.0, image_id


# --- A model file is code ---------------------------------------------------------------------


def _tiny_keras_model(*middle) -> keras.Model:
  inputs = keras.Input((32, 32, 3))
  x = inputs
  for layer in middle:
    x = layer(x)
  return keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))


def _refused(capsys, argv: list[str], output: str) -> str:
  """Runs `segbeam export` expecting a refusal: exit 2, one line, nothing written beside
  `output`. Returns the line."""
  parent = os.path.dirname(output)
  before = sorted(os.listdir(parent))
  assert cli.main(["export", *argv, "--output", output]) == 2
  err = capsys.readouterr().err
  assert err.startswith("segbeam export: ") and err.count("\n") == 1, err
  assert not os.path.exists(output) and sorted(os.listdir(parent)) == before
  return err


def _plant_in_config(config_json: str, saved_model: str) -> str:
  """The config with an operation node that safe mode let call `keras.layers.TFSMLayer` on a
  path (a SavedModel load nothing checked), as red-teaming found."""
  config = json.loads(config_json)
  tfsm = {"module": "keras.layers", "class_name": "function", "config": "TFSMLayer"}
  config["config"]["layers"].insert(
    1,
    {
      "module": "keras.src.ops.core",
      "class_name": "Switch",
      "config": {"name": "sw"},
      "registered_name": None,
      "name": "sw",
      "inbound_nodes": [{"args": [0, [tfsm], saved_model], "kwargs": {}}],
    },
  )
  return json.dumps(config)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_config_calling_more_than_layers_is_refused_before_keras_reads_it(fmt, tmp_path, capsys):
  import h5py

  path = str(tmp_path / f"model.{fmt}")
  _tiny_keras_model().save(path)
  planted = str(tmp_path / "unchecked_saved_model")
  if fmt == "keras":
    with zipfile.ZipFile(path) as archive:
      members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = _plant_in_config(members["config.json"].decode(), planted).encode()
    with zipfile.ZipFile(path, "w") as archive:
      for name, data in members.items():
        archive.writestr(name, data)
  else:
    with h5py.File(path, "r+") as f:
      f.attrs["model_config"] = _plant_in_config(f.attrs["model_config"], planted)
  err = _refused(capsys, [path, "--preprocess", "none"], str(tmp_path / "export"))
  assert "its config names 'keras.src.ops.core.Switch' (at /config/layers/1)" in err
  assert "--allow-custom-code" in err


_CUSTOM_LAYERS = """
import keras

@keras.saving.register_keras_serializable(package="my_layers")
class Doubling(keras.layers.Layer):
  def call(self, inputs):
    return inputs * 2.0
"""


def test_an_unknown_custom_layer_is_refused_and_named(tmp_path, capsys):
  module_file = tmp_path / "my_layers.py"
  module_file.write_text(_CUSTOM_LAYERS)
  namespace = {}
  exec(compile(_CUSTOM_LAYERS, str(module_file), "exec"), namespace)  # as the user's script did
  path = str(tmp_path / "custom.keras")
  registered = keras.saving.get_custom_objects()
  saved = dict(registered)
  try:
    _tiny_keras_model(namespace["Doubling"]()).save(path)
    registered.clear()  # as in a fresh process that never imported the user's module
    err = _refused(capsys, [path, "--preprocess", "none"], str(tmp_path / "export"))
    assert "Doubling'" in err and "--custom-objects" in err
    err = _refused(
      capsys,
      [path, "--preprocess", "none", "--custom-objects", str(module_file)],
      str(tmp_path / "export"),
    )
    assert "--allow-custom-code" in err
    # Named by the file that defines it, and trusted, it loads.
    assert (
      cli.main(
        [
          "export",
          path,
          "--preprocess",
          "none",
          "--scores",
          "logits",
          "--allow-custom-code",
          "--custom-objects",
          str(module_file),
          "--output",
          str(tmp_path / "export"),
        ]
      )
      == 0
    )
  finally:
    registered.clear()
    registered.update(saved)


@pytest.mark.parametrize(
  "damage", ["not-a-model", "truncated-h5", "bad-keras-member", "weights-only-h5", "empty-folder"]
)
def test_what_is_not_a_whole_model_is_refused_in_one_line(damage, tmp_path, capsys):
  model = _tiny_keras_model()
  if damage == "not-a-model":
    path = tmp_path / "photo.keras"
    path.write_bytes(b"\xff\xd8\xff\xe0 not a model")
  elif damage == "truncated-h5":
    path = tmp_path / "model.h5"
    model.save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
  elif damage == "bad-keras-member":
    path = tmp_path / "model.keras"
    model.save(str(path))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
      info = archive.getinfo("model.weights.h5")
    # Flip bytes inside the member's data: its CRC no longer matches.
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    data[start : start + 16] = bytes(16)
    path.write_bytes(bytes(data))
  elif damage == "weights-only-h5":
    path = tmp_path / "model.weights.h5"
    model.save_weights(str(path))
  else:
    path = tmp_path / "folder"
    path.mkdir()
  err = _refused(capsys, [str(path), "--preprocess", "unit"], str(tmp_path / "export"))
  assert str(path) in err


class _FileWriter(tf.Module):
  """A SavedModel whose serving function writes a file when called."""

  def __init__(self, target: str):
    super().__init__()
    self.target = target
    self.kernel = tf.Variable(tf.ones([1, 1, 3, 2]))

  @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
  def serve(self, image):
    tf.io.write_file(self.target, "pwned")
    return {"scores": tf.nn.conv2d(image, self.kernel, 1, "SAME")}


def test_a_saved_model_that_writes_files_is_refused_and_never_run(tmp_path, capsys):
  target = tmp_path / "written-by-the-model"
  module = _FileWriter(str(target))
  source = str(tmp_path / "writer")
  tf.saved_model.save(module, source, signatures={"serving_default": module.serve})
  assert not target.exists()
  err = _refused(capsys, [source, "--preprocess", "none"], str(tmp_path / "export"))
  assert "WriteFile" in err and "--trust-model" in err
  assert not target.exists()


def test_a_saved_model_with_several_image_signatures_asks_which(tmp_path, capsys):
  module = _OtherTeamsModel()
  source = str(tmp_path / "two")
  tf.saved_model.save(
    module,
    source,
    signatures={"segment": module.segment, "also": module.segment, "lengths": module.lengths},
  )
  err = _refused(capsys, [source, "--preprocess", "unit"], str(tmp_path / "export"))
  assert "--signature" in err and "(also, lengths, segment)" in err
  assert (
    cli.main(
      [
        "export",
        source,
        "--preprocess",
        "unit",
        "--signature",
        "also",
        "--output",
        str(tmp_path / "export"),
      ]
    )
    == 0
  )
  assert "signature also" in capsys.readouterr().out


@pytest.mark.parametrize("saved_by", ["tf.keras model.save(dir)", "keras model.export(dir)"])
def test_keras_saved_model_folders_serve_their_default_signature(
  saved_by, tmp_path, capsys, photos
):
  source = str(tmp_path / "folder")
  if saved_by.startswith("tf.keras"):  # Keras 2's SavedModel format
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(5)
    inputs = tf_keras.Input((32, 32, 3))
    hidden = tf_keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model = tf_keras.Model(inputs, tf_keras.layers.Conv2D(3, 1, activation="softmax")(hidden))
    model.save(source)
    expected_scores = "softmax"
  else:  # Keras 3's export: 'serve' and 'serving_default', the same function
    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.export(source, verbose=False)
    expected_scores = "logits"
  export_dir = str(tmp_path / "export")
  assert cli.main(["export", source, "--preprocess", "unit", "--output", export_dir]) == 0
  assert "signature serving_default" in capsys.readouterr().out
  export = export_lib.LoadedExport(export_dir)
  assert export.metadata.serving["output"] == expected_scores
  _, data = photos[0]
  scores = model(_resized(data, 32)[np.newaxis] / 255.0, training=False)
  expected = (
    scores.numpy()[0] if expected_scores == "softmax" else tf.nn.softmax(scores, axis=-1).numpy()[0]
  )
  got = export.predict([data])[contract.OUTPUT_PROBABILITIES][0]
  np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_what_the_model_cannot_say_is_asked_for(tmp_path, capsys):
  inputs = keras.Input((None, None, 3))
  path = str(tmp_path / "any_size.keras")
  keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs)).save(path)
  err = _refused(capsys, [path, "--preprocess", "unit"], str(tmp_path / "export"))
  assert "--input-size" in err
  err = _refused(
    capsys,
    [path, "--preprocess", "unit", "--input-size", "64", "--class-names", "a,b"],
    str(tmp_path / "export"),
  )
  assert "2 names for the model's 3 classes" in err
  assert (
    cli.main(
      [
        "export",
        path,
        "--preprocess",
        "unit",
        "--input-size",
        "64x96",
        "--output",
        str(tmp_path / "export"),
      ]
    )
    == 0
  )
  metadata = contract.read_metadata(str(tmp_path / "export"))
  assert (metadata.config["input_height"], metadata.config["input_width"]) == (64, 96)
  assert metadata.class_names == ("class_0", "class_1", "class_2")


def test_model_summary_says_how_an_import_is_served(tmp_path, capsys):
  path = str(tmp_path / "binary.keras")
  inputs = keras.Input((32, 32, 3))
  keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)).save(path)
  export_dir = str(tmp_path / "export")
  assert (
    cli.main(
      ["export", path, "--preprocess", "torch", "--threshold", "0.4", "--output", export_dir]
    )
    == 0
  )
  capsys.readouterr()
  assert cli.main(["model", "summary", "--model", export_dir, "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["preprocess"] == "torch" and report["resize"] == "bilinear"
  assert report["scores"] == "sigmoid (one channel, foreground above 0.4)"
  assert report["classes"] == "background, foreground" and report["input"] == "32x32x3"
  assert report["parameters"] == "4" and report["trusted"] == "no"
  assert cli.main(["model", "summary", "--model", export_dir]) == 0
  assert re.search(r"^preprocess +torch$", capsys.readouterr().out, re.MULTILINE)


# --- A model file's sizes are capped before it is read ------------------------------------------

_MEASURED_EXPORT = """
import json, resource, sys, time
import keras, tensorflow  # loaded before the baseline: what the export itself uses is measured
from segbeam import cli
from segbeam.model import conversion
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
code = cli.main(sys.argv[1:])
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"code": code, "grew_mib": grew / 1024, "seconds": time.monotonic() - started}))
"""


def _measured_export(source: str, output: str) -> tuple[dict, str]:
  """`segbeam export` in a fresh process: ({code, grew_mib (its peak memory's growth),
  seconds}, stderr)."""
  import subprocess
  import sys

  run = subprocess.run(
    [sys.executable, "-c", _MEASURED_EXPORT, "export", source, "--output", output]
    + ["--preprocess", "unit", "--scores", "logits"],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def _refused_in_bounds(bomb: str, tmp_path) -> str:
  """`segbeam export` of `bomb` in a fresh process: refused (exit 2, no export) with under
  100 MiB of peak memory growth, in under 10 s. Returns its last line on stderr."""
  measured, err = _measured_export(bomb, str(tmp_path / "export"))
  assert measured["code"] == 2
  assert measured["grew_mib"] < 100 and measured["seconds"] < 10, measured
  assert not (tmp_path / "export").exists()
  return err.strip().splitlines()[-1]


def _keras_with_config_bomb(tmp_path, *, lying: bool = False) -> str:
  """A .keras whose config.json is a real one followed by 1 GiB of spaces (valid JSON: Keras
  loads it), deflated to a few MB. `lying`: its headers declare the real config's size."""
  plain = tmp_path / "plain.keras"
  _tiny_keras_model().save(str(plain))
  bomb = tmp_path / "bomb.keras"
  with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w") as dst:
    for info in src.infolist():
      data = src.read(info)
      if info.filename != "config.json":
        dst.writestr(info, data)
        continue
      real_size = len(data)
      member = zipfile.ZipInfo("config.json", info.date_time)
      member.compress_type = zipfile.ZIP_DEFLATED
      with dst.open(member, "w") as f:
        f.write(data)
        spaces = b" " * (16 << 20)
        for _ in range((1 << 30) // len(spaces)):
          f.write(spaces)
  if lying:  # the local and the central header's uncompressed size: the real config's
    raw = bytearray(bomb.read_bytes())
    with zipfile.ZipFile(bomb) as archive:
      info = archive.getinfo("config.json")
    central = raw.rindex(b"config.json") - 46  # its central directory record, the last one
    raw[info.header_offset + 22 : info.header_offset + 26] = real_size.to_bytes(4, "little")
    raw[central + 24 : central + 28] = real_size.to_bytes(4, "little")
    bomb.write_bytes(bytes(raw))
  assert bomb.stat().st_size < 16 << 20
  return str(bomb)


def test_a_keras_config_bomb_is_refused_before_it_is_read(tmp_path):
  bomb = _keras_with_config_bomb(tmp_path)
  line = _refused_in_bounds(bomb, tmp_path)
  assert line.startswith(f"segbeam export: {bomb}: member config.json would be 1.0 GiB ")
  assert "over the cap of 64 MiB" in line


def test_a_keras_member_whose_header_lies_is_read_no_further_than_it_says(tmp_path):
  bomb = _keras_with_config_bomb(tmp_path, lying=True)
  assert _refused_in_bounds(bomb, tmp_path) == (
    f"segbeam export: {bomb} is a damaged .keras archive: member config.json fails its CRC check"
  )


def test_keras_members_beyond_what_a_model_holds_are_refused(tmp_path, capsys):
  plain = tmp_path / "plain.keras"
  _tiny_keras_model().save(str(plain))
  many, bzip2 = tmp_path / "many.keras", tmp_path / "bzip2.keras"
  with zipfile.ZipFile(plain) as src:
    with zipfile.ZipFile(many, "w") as dst:
      for info in src.infolist():
        dst.writestr(info, src.read(info))
      for i in range(1001):
        dst.writestr(f"assets/{i}", b"")
    with zipfile.ZipFile(bzip2, "w") as dst:
      for info in src.infolist():
        dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_BZIP2)
  err = _refused(capsys, [str(many), "--preprocess", "unit"], str(tmp_path / "export"))
  assert err == f"segbeam export: {many} holds 1004 members, over the cap of 1000\n"
  err = _refused(capsys, [str(bzip2), "--preprocess", "unit"], str(tmp_path / "export"))
  assert err.startswith(f"segbeam export: {bzip2}: member ") and "compressed with bzip2" in err


def _h5_with_dataset_bomb(tmp_path) -> str:
  """A Keras .h5 whose first weight is a gzip-compressed dataset of 1.25 GiB of zeros (never
  written: its chunks are the fill value), a few KB on disk."""
  import h5py

  path = tmp_path / "bomb.h5"
  _tiny_keras_model().save(str(path))
  with h5py.File(path, "r+") as f:
    names = []
    f["model_weights"].visititems(
      lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    group = f["model_weights"]
    del group[names[0]]
    group.create_dataset(
      names[0], shape=(5 << 26,), dtype="float32", chunks=(1 << 20,), compression="gzip"
    )
  assert path.stat().st_size < 1 << 20
  return str(path)


def test_an_h5_dataset_bomb_is_refused_before_it_is_read(tmp_path):
  bomb = _h5_with_dataset_bomb(tmp_path)
  line = _refused_in_bounds(bomb, tmp_path)
  assert line.startswith(f"segbeam export: {bomb}: dataset model_weights/"), line
  assert "would be 1.2 GiB (1342177280 bytes) in memory, over the cap of 1.0 GiB" in line
