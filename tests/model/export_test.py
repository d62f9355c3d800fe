"""The export contract: raw encoded bytes in, probabilities and original sizes out."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbeam.model import contract
from segbeam.model import export
from segbeam.model import labels
from segbeam.model import preprocessing
from tests import synthetic


def _scenes():
  """Images of different sizes and encodings in one batch."""
  jpeg = synthetic.encode(synthetic.pet_scene(50, 40, 0)[0], "JPEG")
  png_rgba = synthetic.encode(synthetic.pet_scene(31, 64, 1)[0], "PNG", mode="RGBA")
  gray = synthetic.encode(synthetic.pet_scene(70, 20, 2)[0], "PNG", mode="L")
  gif = synthetic.encode(synthetic.pet_scene(33, 33, 3)[0], "GIF")
  bmp = synthetic.encode(synthetic.pet_scene(16, 24, 4)[0], "BMP")
  return [jpeg, png_rgba, gray, gif, bmp], [(40, 50), (64, 31), (20, 70), (33, 33), (24, 16)]


def test_reloaded_export_matches_the_in_memory_model(tiny_export, tiny_model, tiny_config):
  export_dir, _ = tiny_export
  encoded, sizes = _scenes()
  loaded = tf.saved_model.load(export_dir)
  signature = loaded.signatures[contract.SIGNATURE_NAME]
  outputs = signature(**{contract.INPUT_KEY: tf.constant(encoded)})
  assert sorted(outputs) == sorted(
    [contract.OUTPUT_PROBABILITIES, contract.OUTPUT_HEIGHT, contract.OUTPUT_WIDTH]
  )
  heights, widths = outputs[contract.OUTPUT_HEIGHT].numpy(), outputs[contract.OUTPUT_WIDTH].numpy()
  assert list(zip(heights, widths)) == sizes
  # The same preprocessing done eagerly, then the Keras model in memory.
  pixels = tf.stack(
    [
      preprocessing.resize_image(preprocessing.decode_image(e, 3), tiny_config.input_size)
      for e in encoded
    ]
  )
  expected = tf.nn.softmax(tiny_model(pixels, training=False), axis=-1).numpy()
  probabilities = outputs[contract.OUTPUT_PROBABILITIES].numpy()
  assert probabilities.shape == (5, 32, 32, 3)
  np.testing.assert_allclose(probabilities, expected, atol=1e-5)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
  forward = loaded.signatures[contract.PIXELS_SIGNATURE_NAME](pixels=pixels)
  np.testing.assert_allclose(forward[contract.OUTPUT_PROBABILITIES].numpy(), expected, atol=1e-5)


def test_signature_is_one_string_vector_of_any_batch_size(tiny_export):
  export_dir, _ = tiny_export
  signature = tf.saved_model.load(export_dir).signatures[contract.SIGNATURE_NAME]
  ((name, spec),) = signature.structured_input_signature[1].items()
  assert name == contract.INPUT_KEY
  assert spec.dtype == tf.string and spec.shape.as_list() == [None]
  encoded, _ = _scenes()
  for batch in (1, 3):
    assert signature(images=tf.constant(encoded[:batch]))["height"].shape == (batch,)


def test_metadata_is_written_beside_the_saved_model(tiny_export, tiny_config):
  export_dir, metadata = tiny_export
  assert os.path.exists(os.path.join(export_dir, "saved_model.pb"))
  read = contract.read_metadata(export_dir)
  assert read == metadata
  assert read.class_names == ("pet", "background", "border")
  assert read.unet_config == tiny_config
  assert read.labels == labels.OXFORD_PET_TRIMAP
  assert read.version.startswith("sha256:")
  assert read.software["tensorflow"] == tf.__version__


def test_version_depends_on_weights_only(tmp_path, tiny_model, tiny_config, tiny_export):
  _, first = tiny_export
  again = export.export_model(
    tiny_model,
    tiny_config,
    str(tmp_path / "again"),
    label_map=labels.OXFORD_PET_TRIMAP,
    name="other name",
  )
  assert again.version == first.version
  changed = keras.models.clone_model(tiny_model)
  changed.set_weights([w * 0.5 for w in tiny_model.get_weights()])
  assert export.content_version(changed.weights, tiny_config.to_dict()) != first.version


def test_label_map_must_match_the_classes(tmp_path, tiny_model, tiny_config):
  with pytest.raises(ValueError, match="classes"):
    export.export_model(tiny_model, tiny_config, str(tmp_path / "x"), label_map=labels.BINARY_0_255)


def test_not_an_export_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a segbeam export"):
    contract.read_metadata(str(tmp_path))


def test_tfx_bsl_model_handler_runs_the_export_on_raw_bytes(tiny_export):
  """The pipeline's loader: tfx-bsl's CreateModelHandler feeds raw bytes to the signature."""
  from tfx_bsl.public.beam import run_inference
  from tfx_bsl.public.proto import model_spec_pb2

  export_dir, _ = tiny_export
  handler = run_inference.CreateModelHandler(
    model_spec_pb2.InferenceSpecType(
      saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=export_dir, signature_name=[contract.SIGNATURE_NAME]
      )
    )
  )
  model = handler.load_model()
  encoded, sizes = _scenes()
  logs = list(handler.run_inference(encoded, model))
  assert len(logs) == len(encoded)
  for log, (height, width) in zip(logs, sizes):
    outputs = log.predict_log.response.outputs
    assert tf.make_ndarray(outputs[contract.OUTPUT_HEIGHT]).tolist() == [height]
    assert tf.make_ndarray(outputs[contract.OUTPUT_WIDTH]).tolist() == [width]
    assert tf.make_ndarray(outputs[contract.OUTPUT_PROBABILITIES]).shape == (1, 32, 32, 3)


def test_loaded_export_predicts(tiny_export):
  export_dir, metadata = tiny_export
  loaded = export.LoadedExport(export_dir)
  assert loaded.metadata == metadata
  encoded, sizes = _scenes()
  outputs = loaded.predict(encoded)
  assert list(zip(outputs["height"], outputs["width"])) == sizes


def test_metadata_json_round_trip():
  metadata = contract.ModelMetadata(
    name="m",
    version="sha256:0",
    config={"input_size": 32, "channels": 3, "architecture": "x"},
    label_map=labels.OXFORD_PET_TRIMAP.to_dict(),
  )
  assert contract.ModelMetadata.from_json(metadata.to_json()) == metadata
  assert dataclasses.replace(metadata, name="n") != metadata


def test_pixels_signature_takes_tiles_of_any_multiple_of_32(tiny_export, tiny_model):
  """segbeam's U-Nets are fully convolutional: their pixels signature takes any multiple of the
  encoder's stride (`segbeam run --tile`), and gives what the Keras model gives at that size."""
  export_dir, metadata = tiny_export
  serving = metadata.serving_config
  assert serving.tile_multiple == 32
  assert serving.takes_tile(64) and serving.takes_tile(96) and not serving.takes_tile(48)
  forward = tf.saved_model.load(export_dir).signatures[contract.PIXELS_SIGNATURE_NAME]
  pixels = tf.random.uniform([2, 64, 96, 3], 0, 255, seed=1)
  # Keras checks an eager call's shape against the model's input; a traced one of unknown
  # size passes, as the export's does.
  flexible = tf.function(
    lambda p: tiny_model(p, training=False), input_signature=[tf.TensorSpec([None] * 4)]
  )
  expected = tf.nn.softmax(flexible(pixels), axis=-1).numpy()
  got = forward(pixels=pixels)[contract.OUTPUT_PROBABILITIES].numpy()
  assert got.shape == (2, 64, 96, 3)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_model_without_tile_multiple_takes_only_its_input_size(tiny_config):
  """Exports written before tiles (and the embedded default) are served at their input size
  only: their metadata's serving config, or the one `unet_serving_config` gives them."""
  serving = contract.unet_serving_config(dataclasses.replace(tiny_config, input_size=128))
  assert serving.tile_multiple == 0
  assert serving.takes_tile(128) and not serving.takes_tile(64) and not serving.takes_tile(256)
