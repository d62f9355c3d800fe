"""The export contract between a trained U-Net and the pipeline.

An export is a TensorFlow SavedModel directory written with Keras 3's `ExportArchive` (tfx-bsl's
loader reads it; it cannot read a `tf.saved_model.save` of a `tf.Module` wrapping a Keras 3
model). `segbeam train` writes one (`export_model`), and so does `segbeam export` from a user's
own model (`conversion`). Its `serving_default` signature takes ONE input:

  images: 1-D tf.string, any batch size, each element the encoded bytes of one image
          (JPEG, PNG, GIF first frame, BMP; format read from the bytes)

and does decoding, resizing to the model's input size and normalisation in the graph, as its
`ServingConfig` says. Outputs, each with the batch as first dimension:

  probabilities: float32 [B, height, width, num_classes], class probabilities at the model's
                 input size
  height, width: int32 [B], the decoded image's original size

The pipeline resizes the probabilities to (height, width) and takes the argmax, or a single
sigmoid's threshold (`segbeam.model.postprocess.class_mask`). A second signature,
`predict_pixels`, takes already decoded and resized float32 pixels [B, height, width, channels]
in 0..255 and returns the probabilities: the forward pass alone, for callers with arrays and for
benchmarks. Beside the SavedModel, `segbeam_model.json` holds the `ModelMetadata`.
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
from segbeam.model import labels as labels_lib
from segbeam.model import preprocessing

METADATA_FILE = "segbeam_model.json"
SIGNATURE_NAME = "serving_default"
PIXELS_SIGNATURE_NAME = "predict_pixels"
INPUT_KEY = "images"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_HEIGHT = "height"
OUTPUT_WIDTH = "width"
METADATA_FORMAT = 1
# `config["architecture"]` of an export `segbeam export` made from a user's own model.
IMPORTED_ARCHITECTURE = "imported"


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
  """What the pipeline and the reports need to know about an export.

  Attributes:
    name: model name, written into every output row.
    version: content version, 'sha256:' + 16 hex digits over the architecture config and every
      weight value: the same weights give the same version, whenever exported.
    config: the `UNetConfig` as a dict (architecture, encoder, decoder, sizes, classes).
    label_map: the `LabelMap` as a dict: raw mask values -> classes, and the class names.
    training: how it was trained (data, split sizes, epochs, command), free-form.
    validation: metrics on held-out data at original resolution, free-form.
    created: UTC time of the export, ISO 8601.
    software: versions of segbeam, TensorFlow and Keras that wrote it.
    serving: the `ServingConfig` as a dict: input size, preprocessing, resize and output of the
      serving graph. Empty in exports written before it was recorded (segbeam's own U-Nets,
      served as `unet_serving_config` gives).
  """

  name: str
  version: str
  config: Mapping[str, Any]
  label_map: Mapping[str, Any]
  training: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  validation: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  created: str = ""
  software: Mapping[str, str] = dataclasses.field(default_factory=dict)
  serving: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  format: int = METADATA_FORMAT

  @property
  def imported(self) -> bool:
    """Made by `segbeam export` from a user's model, not trained by segbeam."""
    return self.architecture == IMPORTED_ARCHITECTURE

  @property
  def unet_config(self) -> config_lib.UNetConfig:
    if self.imported:
      raise ValueError(
        f"{self.name} was imported from {self.config.get('source_format')}: it "
        "has no segbeam U-Net configuration"
      )
    return config_lib.UNetConfig.from_dict(self.config)

  @property
  def serving_config(self) -> config_lib.ServingConfig:
    if self.serving:
      return config_lib.ServingConfig.from_dict(self.serving)
    return unet_serving_config(self.unet_config)

  @property
  def mask_threshold(self) -> Optional[float]:
    """The foreground threshold of a single-sigmoid model's mask, when not the argmax's."""
    return self.serving_config.mask_threshold if self.serving else None

  @property
  def labels(self) -> labels_lib.LabelMap:
    return labels_lib.LabelMap.from_dict(self.label_map)

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.label_map["class_names"])

  @property
  def input_size(self) -> int:
    return int(self.config["input_size"])

  @property
  def channels(self) -> int:
    return int(self.config["channels"])

  @property
  def architecture(self) -> str:
    return str(self.config["architecture"])

  def to_json(self) -> str:
    data = dataclasses.asdict(self)
    data.update(
      class_names=list(self.class_names),
      input_size=self.input_size,
      channels=self.channels,
      architecture=self.architecture,
      signature=dict(
        name=SIGNATURE_NAME,
        input=INPUT_KEY,
        outputs=[OUTPUT_PROBABILITIES, OUTPUT_HEIGHT, OUTPUT_WIDTH],
      ),
    )
    return json.dumps(data, indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "ModelMetadata":
    data = json.loads(text)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in fields})


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

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
  def serve(images):
    pixels, heights, widths = preprocessing.decode_and_resize_batch(
      images, (serving.input_height, serving.input_width), serving.channels, serving.resize
    )
    return {
      OUTPUT_PROBABILITIES: probabilities(pixels),
      OUTPUT_HEIGHT: heights,
      OUTPUT_WIDTH: widths,
    }

  return serve


def pixels_function(probabilities: ProbabilitiesFn, serving: config_lib.ServingConfig):
  """The forward pass alone: decoded, resized pixels in 0..255 in, probabilities out."""

  @tf.function(
    input_signature=[
      tf.TensorSpec(
        [None, serving.input_height, serving.input_width, serving.channels],
        tf.float32,
        name="pixels",
      )
    ]
  )
  def predict_pixels(pixels):
    return {OUTPUT_PROBABILITIES: probabilities(pixels)}

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
  archive.add_endpoint(SIGNATURE_NAME, serving_function(probabilities, serving))
  archive.add_endpoint(PIXELS_SIGNATURE_NAME, pixels_function(probabilities, serving))
  archive.write_out(export_dir, verbose=False)


def unet_serving_config(config: config_lib.UNetConfig) -> config_lib.ServingConfig:
  """What segbeam's own U-Nets are served with: 0..255 pixels (the model normalises them),
  the DCT-scaled decode and antialiased resize they were trained with, logits."""
  return config_lib.ServingConfig(
    input_height=config.input_size,
    input_width=config.input_size,
    channels=config.channels,
    num_classes=config.num_classes,
    preprocess=config_lib.PREPROCESS_NONE,
    resize=config_lib.RESIZE_DCT_ANTIALIAS,
    output=config_lib.OUTPUT_LOGITS,
    model_channels=config.num_classes,
  )


def export_model(
  model: keras.Model,
  config: config_lib.UNetConfig,
  export_dir: str,
  *,
  label_map: labels_lib.LabelMap,
  name: str = "segbeam-unet",
  training: Optional[Mapping[str, Any]] = None,
  validation: Optional[Mapping[str, Any]] = None,
) -> ModelMetadata:
  """Writes the SavedModel and its metadata to `export_dir` (local or gs://)."""
  if label_map.num_classes != config.num_classes:
    raise ValueError(f"label map has {label_map.num_classes} classes, model {config.num_classes}")

  def probabilities(pixels):
    return tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1)

  serving = unet_serving_config(config)
  write_archive(export_dir, probabilities, serving)
  metadata = ModelMetadata(
    name=name,
    version=content_version(model.weights, config.to_dict()),
    config=as_json(config.to_dict()),
    label_map=as_json(label_map.to_dict()),
    training=as_json(training or {}),
    validation=as_json(validation or {}),
    created=utc_now(),
    software=software_versions(),
    serving=as_json(serving.to_dict()),
  )
  write_metadata(export_dir, metadata)
  return metadata


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
  return {"segbeam": segbeam.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


def as_json(value: Mapping[str, Any]) -> dict[str, Any]:
  """The value as it reads back from JSON (tuples become lists), so metadata compares equal
  before and after a round trip."""
  return json.loads(json.dumps(value))


def stored_parameters(export_dir: str) -> int:
  """Number of parameter values in the export's variables checkpoint."""
  return int(
    sum(
      np.prod(shape)
      for name, shape in tf.train.list_variables(os.path.join(export_dir, "variables", "variables"))
      if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )
  )


def write_metadata(export_dir: str, metadata: ModelMetadata) -> None:
  with tf.io.gfile.GFile(os.path.join(export_dir, METADATA_FILE), "w") as f:
    f.write(metadata.to_json())


def read_metadata(export_dir: str) -> ModelMetadata:
  path = os.path.join(export_dir, METADATA_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{export_dir} is not a segbeam export: {METADATA_FILE} is missing")
  with tf.io.gfile.GFile(path) as f:
    return ModelMetadata.from_json(f.read())


class LoadedExport:
  """An export loaded for inference: `predict(encoded_images)` -> dict of numpy arrays."""

  def __init__(self, export_dir: str):
    self.export_dir = export_dir
    self.metadata = read_metadata(export_dir)
    # Keep the loaded object: its signature functions only hold weak references to variables.
    self._saved_model = tf.saved_model.load(export_dir)
    self._serve = self._saved_model.signatures[SIGNATURE_NAME]

  @property
  def saved_model(self):
    return self._saved_model

  def predict(self, encoded_images: Sequence[bytes]) -> dict[str, np.ndarray]:
    outputs = self._serve(**{INPUT_KEY: tf.constant(list(encoded_images), dtype=tf.string)})
    return {key: value.numpy() for key, value in outputs.items()}
