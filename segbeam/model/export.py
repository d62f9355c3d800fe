"""Writing and loading exports: the SavedModel and metadata of the contract (`contract`).

`segbeam train` writes one (`export_model`), and so does `segbeam export` from a user's own
model (`conversion`), both through `write_archive`: Keras 3's `ExportArchive`, which tfx-bsl's
loader reads (it cannot read a `tf.saved_model.save` of a `tf.Module` wrapping a Keras 3 model).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

import segbeam
from segbeam.model import config as config_lib
from segbeam.model import contract
from segbeam.model import labels as labels_lib
from segbeam.model import loading
from segbeam.model import preprocessing


def content_version(weights: Sequence[Any], config: Mapping[str, Any]) -> str:
  """'sha256:' + 16 hex digits over the config and every weight value."""
  digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
  for weight in weights:
    digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
  return "sha256:" + digest.hexdigest()[:16]


ProbabilitiesFn = Callable[[tf.Tensor], tf.Tensor]


def serving_function(probabilities: ProbabilitiesFn, serving: config_lib.ServingConfig):
  """The serving signature: encoded image bytes in, probabilities and original sizes out.

  Args:
    probabilities: float32 [B, height, width, channels] pixels in 0..255 -> float32 class
      probabilities [B, height, width, classes].
    serving: the input size, channels and resize method.
  """

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.INPUT_KEY)])
  def serve(images):
    pixels, heights, widths = preprocessing.decode_and_resize_batch(
      images, (serving.input_height, serving.input_width), serving.channels, serving.resize
    )
    return {
      contract.OUTPUT_PROBABILITIES: probabilities(pixels),
      contract.OUTPUT_HEIGHT: heights,
      contract.OUTPUT_WIDTH: widths,
    }

  return serve


def pixels_function(probabilities: ProbabilitiesFn, serving: config_lib.ServingConfig):
  """The forward pass alone: decoded, resized pixels in 0..255 in, probabilities out; pixels
  of any height and width where `serving.tile_multiple` says the model takes them."""
  height, width = (
    (None, None) if serving.tile_multiple else (serving.input_height, serving.input_width)
  )

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, height, width, serving.channels], tf.float32, name="pixels")
    ]
  )
  def predict_pixels(pixels):
    return {contract.OUTPUT_PROBABILITIES: probabilities(pixels)}

  return predict_pixels


def write_archive(
  export_dir: str,
  probabilities: ProbabilitiesFn,
  serving: config_lib.ServingConfig,
  track: Sequence[Any] = (),
) -> None:
  """Writes the SavedModel with segbeam's two signatures over `probabilities`.

  Args:
    track: resources the functions use that are not Keras variables (a reloaded SavedModel's
      layer); Keras models' variables are tracked by the endpoints themselves.
  """
  archive = keras.export.ExportArchive()
  # No archive.track(model): the endpoints track the variables they use, and Keras 3.15 would
  # save tracked variables a second time (as KerasVariables beside the captured tf.Variables),
  # doubling the export to 52 MB for the tutorial model.
  for resource in track:
    archive.track(resource)
  archive.add_endpoint(contract.SIGNATURE_NAME, serving_function(probabilities, serving))
  archive.add_endpoint(contract.PIXELS_SIGNATURE_NAME, pixels_function(probabilities, serving))
  archive.write_out(export_dir, verbose=False)


def export_model(
  model: keras.Model,
  config: config_lib.UNetConfig,
  export_dir: str,
  *,
  label_map: labels_lib.LabelMap,
  name: str = "segbeam-unet",
  training: Optional[Mapping[str, Any]] = None,
  validation: Optional[Mapping[str, Any]] = None,
) -> contract.ModelMetadata:
  """Writes the SavedModel and its metadata to `export_dir` (local or gs://)."""
  if label_map.num_classes != config.num_classes:
    raise ValueError(f"label map has {label_map.num_classes} classes, model {config.num_classes}")

  def probabilities(pixels):
    return tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1)

  # segbeam's U-Nets are fully convolutional (each encoder's stride is 32): their pixels
  # signature takes tiles of any multiple of it (`segbeam run --tile`).
  serving = dataclasses.replace(
    contract.unet_serving_config(config), tile_multiple=config_lib.BOTTLENECK_STRIDE
  )
  write_archive(export_dir, probabilities, serving)
  metadata = contract.ModelMetadata(
    name=name,
    version=content_version(model.weights, config.to_dict()),
    config=contract.as_json(config.to_dict()),
    label_map=contract.as_json(label_map.to_dict()),
    training=contract.as_json(training or {}),
    validation=contract.as_json(validation or {}),
    created=utc_now(),
    software=software_versions(),
    serving=contract.as_json(serving.to_dict()),
  )
  write_metadata(export_dir, metadata)
  return metadata


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
  return {"segbeam": segbeam.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


def stored_parameters(export_dir: str) -> int:
  """Number of parameter values in the export's variables checkpoint."""
  return int(
    sum(
      np.prod(shape)
      for name, shape in tf.train.list_variables(os.path.join(export_dir, "variables", "variables"))
      if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )
  )


def write_metadata(export_dir: str, metadata: contract.ModelMetadata) -> None:
  with tf.io.gfile.GFile(os.path.join(export_dir, contract.METADATA_FILE), "w") as f:
    f.write(metadata.to_json())


def read_metadata(export_dir: str) -> contract.ModelMetadata:
  """`contract.read_metadata` on any file system TensorFlow reads (gs://, ...)."""
  return contract.read_metadata(export_dir, exists=tf.io.gfile.exists, open_file=tf.io.gfile.GFile)


def load_saved_model(saved_model_dir: str, *, trust_model: bool = False):
  """`tf.saved_model.load` of the SavedModel, once `loading.loadable` has checked it."""
  return tf.saved_model.load(loading.loadable(saved_model_dir, trust_model=trust_model))


class LoadedExport:
  """An export loaded for inference: `predict(encoded_images)` -> dict of numpy arrays.

  Args:
    export_dir: a local export.
    trust_model: load it whatever ops its graph holds (`loading.loadable`).
  """

  def __init__(self, export_dir: str, *, trust_model: bool = False):
    self.export_dir = export_dir
    self.metadata = read_metadata(export_dir)
    # Keep the loaded object: its signature functions only hold weak references to variables.
    self._saved_model = load_saved_model(export_dir, trust_model=trust_model)
    self._serve = self._saved_model.signatures[contract.SIGNATURE_NAME]

  @property
  def saved_model(self):
    return self._saved_model

  def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
    """float32 [B, height, width, channels] pixels in 0..255 -> probabilities [B, height,
    width, classes]: the export's `predict_pixels` signature."""
    forward = self._saved_model.signatures[contract.PIXELS_SIGNATURE_NAME]
    return forward(pixels=tf.constant(pixels, tf.float32))[contract.OUTPUT_PROBABILITIES].numpy()

  def pixels_shape(self) -> list:
    """[batch, height, width, channels] the `predict_pixels` signature takes, None where any."""
    forward = self._saved_model.signatures[contract.PIXELS_SIGNATURE_NAME]
    ((_, spec),) = forward.structured_input_signature[1].items()
    return spec.shape.as_list()

  def predict(self, encoded_images: Sequence[bytes]) -> dict[str, np.ndarray]:
    outputs = self._serve(
      **{contract.INPUT_KEY: tf.constant(list(encoded_images), dtype=tf.string)}
    )
    return {key: value.numpy() for key, value in outputs.items()}
