"""The export contract between a trained U-Net and the pipeline: names and metadata.

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
in 0..255 and returns the probabilities: the forward pass alone, for callers with arrays, for
benchmarks and for tiles (`segbeam run --tile`); where `ServingConfig.tile_multiple` is set
it takes any height and width that are multiples of it. Beside the SavedModel,
`segbeam_model.json` holds the `ModelMetadata`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import IO, Any, Callable, ContextManager, Mapping, Optional

from segbeam.model import config as config_lib
from segbeam.model import labels as labels_lib

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


def as_json(value: Mapping[str, Any]) -> dict[str, Any]:
  """The value as it reads back from JSON (tuples become lists), so metadata compares equal
  before and after a round trip."""
  return json.loads(json.dumps(value))


def read_metadata(
  export_dir: str,
  *,
  exists: Callable[[str], bool] = os.path.exists,
  open_file: Callable[[str], ContextManager[IO[str]]] = open,
  join: Callable[[str, str], str] = os.path.join,
) -> ModelMetadata:
  """The `ModelMetadata` of the export `export_dir`, local by default; `exists`, `open_file`
  and `join` read another file system (`tf.io.gfile`'s in `export.read_metadata`; Beam's
  FileSystems in `segbeam.pipeline.model_files.read_metadata`)."""
  path = join(export_dir, METADATA_FILE)
  if not exists(path):
    raise FileNotFoundError(f"{export_dir} is not a segbeam export: {METADATA_FILE} is missing")
  with open_file(path) as f:
    return ModelMetadata.from_json(f.read())
