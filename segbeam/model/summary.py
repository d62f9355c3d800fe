"""What each part of a U-Net is, what shape it produces and which of its parameters train.

Answers, from the product itself, "what in this U-Net actually trains?" (per part: trainable,
frozen and BatchNorm-statistics parameters, totals equal to Keras' own) and "why does this
Conv2DTranspose give 9x9 and not 14x14?" (each resampling layer with kernel, stride, padding and
the resulting shape change).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Optional

import keras

from segbeam import messages
from segbeam.model import config as config_lib
from segbeam.model import export as export_lib
from segbeam.model import unet

TRANSPOSE_RULE = (
  "Conv2DTranspose output side = input * stride with padding 'same', "
  "(input - 1) * stride + kernel with 'valid': 7 -> 14 (k3 s2 same), "
  "7 -> 8 (k2 s1 valid), 4 -> 9 (k3 s2 valid)."
)


def transpose_output_side(side: int, kernel: int, stride: int, padding: str) -> int:
  """Output side of a Conv2DTranspose without output_padding, as Keras computes it."""
  if padding == "same":
    return side * stride
  if padding == "valid":
    return (side - 1) * stride + max(kernel - stride, 0) + stride
  raise ValueError(f"unknown padding {padding!r}")


@dataclasses.dataclass
class PartRow:
  """One part of the model: preprocessing, the encoder, a decoder block or the head.

  Attributes:
    trainable: parameters the optimiser updates.
    frozen: weights of layers set non-trainable (a frozen encoder).
    statistics: BatchNorm moving means and variances of trainable layers; Keras counts them as
      non-trainable, but they are updated by training all the same.
  """

  name: str
  role: str
  input_shape: str
  output_shape: str
  resample: str
  trainable: int
  frozen: int
  statistics: int

  @property
  def total(self) -> int:
    return self.trainable + self.frozen + self.statistics


@dataclasses.dataclass
class ModelReport:
  title: str
  rows: list[PartRow]
  keras_total: int
  keras_trainable: int
  keras_non_trainable: int
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def total(self) -> int:
    return sum(r.total for r in self.rows)

  @property
  def trainable(self) -> int:
    return sum(r.trainable for r in self.rows)

  def to_json(self) -> str:
    return json.dumps(
      {
        "title": self.title,
        "parts": [dict(dataclasses.asdict(r), total=r.total) for r in self.rows],
        "total": self.total,
        "trainable": self.trainable,
        "keras": {
          "total": self.keras_total,
          "trainable": self.keras_trainable,
          "non_trainable": self.keras_non_trainable,
        },
        "notes": self.notes,
      },
      indent=2,
      allow_nan=False,
    )

  def format_table(self) -> str:
    headers = ("part", "input", "output", "resampling", "trainable", "frozen", "bn stats")
    body = [
      (
        r.name,
        r.input_shape,
        r.output_shape,
        r.resample,
        f"{r.trainable:,}",
        f"{r.frozen:,}",
        f"{r.statistics:,}",
      )
      for r in self.rows
    ]
    body.append(
      (
        "total",
        "",
        "",
        "",
        f"{self.trainable:,}",
        f"{sum(r.frozen for r in self.rows):,}",
        f"{sum(r.statistics for r in self.rows):,}",
      )
    )
    widths = [max(len(row[i]) for row in (headers, *body)) for i in range(len(headers))]
    numeric = {4, 5, 6}

    def line(row):
      return "  ".join(
        cell.rjust(w) if i in numeric else cell.ljust(w)
        for i, (cell, w) in enumerate(zip(row, widths))
      ).rstrip()

    rule = "-" * len(line(headers))
    out = [
      self.title,
      rule,
      line(headers),
      rule,
      *map(line, body[:-1]),
      rule,
      line(body[-1]),
      "",
      f"Keras: {self.keras_total:,} parameters, {self.keras_trainable:,} trainable, "
      f"{self.keras_non_trainable:,} non-trainable (= frozen + bn stats).",
      f"{self.trainable / self.keras_total:.1%} of the parameters train.",
    ]
    out += self.notes
    return "\n".join(out)


def _shape(shape) -> str:
  return "x".join("?" if d is None else str(d) for d in tuple(shape)[1:])


def _leaf_layers(layer: keras.layers.Layer):
  children = getattr(layer, "layers", None)
  if not children:
    yield layer
    return
  for child in children:
    yield from _leaf_layers(child)


def _count(weights) -> int:
  return int(sum(math.prod(w.shape) for w in weights))


def _parameters(layer: keras.layers.Layer) -> tuple[int, int, int]:
  trainable = frozen = statistics = 0
  for leaf in _leaf_layers(layer):
    if leaf.trainable:
      trainable += _count(leaf.trainable_weights)
      statistics += _count(leaf.non_trainable_weights)
    else:
      frozen += _count(leaf.weights)
  return trainable, frozen, statistics


def _resample(layer: keras.layers.Layer) -> str:
  """The first resampling layer inside a decoder block or head, with its shape change."""
  for leaf in _leaf_layers(layer):
    if isinstance(leaf, keras.layers.Conv2DTranspose):
      k, s = leaf.kernel_size[0], leaf.strides[0]
      side_in = leaf.input.shape[1]
      side_out = transpose_output_side(side_in, k, s, leaf.padding)
      return (
        f"Conv2DTranspose k{k} s{s} {leaf.padding}: "
        f"{side_in}x{leaf.input.shape[2]} -> {side_out}x{leaf.output.shape[2]}"
      )
    if isinstance(leaf, keras.layers.UpSampling2D):
      return (
        f"UpSampling2D x{leaf.size[0]}: {leaf.input.shape[1]}x{leaf.input.shape[2]} -> "
        f"{leaf.output.shape[1]}x{leaf.output.shape[2]}"
      )
  return ""


def _role(layer: keras.layers.Layer) -> str:
  if layer.name == unet.ENCODER_LAYER:
    return "encoder"
  if layer.name.startswith("decoder_block_"):
    return "decoder"
  if layer.name == "head":
    return "head"
  return "preprocess"


def summarize_model(model: keras.Model, title: Optional[str] = None) -> ModelReport:
  rows = []
  for layer in model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
    role = _role(layer)
    if role == "encoder":
      output_shape = f"{_shape(outputs[-1].shape)} (bottleneck); skips " + ", ".join(
        _shape(o.shape) for o in outputs[:-1]
      )
    else:
      output_shape = _shape(outputs[0].shape)
    input_shape = " + ".join(_shape(t.shape) for t in inputs)
    trainable, frozen, statistics = _parameters(layer)
    rows.append(
      PartRow(
        layer.name, role, input_shape, output_shape, _resample(layer), trainable, frozen, statistics
      )
    )
  keras_trainable = _count(model.trainable_weights)
  report = ModelReport(
    title=title or model.name,
    rows=rows,
    keras_total=int(model.count_params()),
    keras_trainable=keras_trainable,
    keras_non_trainable=_count(model.non_trainable_weights),
  )
  if report.total != report.keras_total or report.trainable != report.keras_trainable:
    raise AssertionError(
      f"summary totals {report.total}/{report.trainable} differ from Keras "
      f"{report.keras_total}/{report.keras_trainable}"
    )
  report.notes.append(TRANSPOSE_RULE)
  return report


def _title(config: config_lib.UNetConfig) -> str:
  e = config.encoder
  weights = e.weights or "random"
  return (
    f"{config.architecture} U-Net, input {config.input_size}x{config.input_size}x"
    f"{config.channels}, {config.num_classes} classes, encoder weights {weights}, "
    f"encoder trainable {e.effective_trainable}"
  )


def _without_weights(config: config_lib.UNetConfig) -> config_lib.UNetConfig:
  """Same architecture and trainability, but nothing to download or load: counting parameters
  needs no weight values."""
  return config.replace(encoder_weights=None, encoder_trainable=config.encoder.effective_trainable)


def summarize_config(config: config_lib.UNetConfig) -> ModelReport:
  if config.encoder.pretrained:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the frozen encoder is pretrained in `config`
      model = unet.build_unet(_without_weights(config))
  else:
    model = unet.build_unet(config)
  return summarize_model(model, _title(config))


@dataclasses.dataclass
class ImportedReport:
  """What `model summary --model` says of an export made from a user's own model: there is
  no segbeam architecture to rebuild, so it lists how the export serves the model."""

  title: str
  facts: dict[str, object]
  notes: list[str] = dataclasses.field(default_factory=list)

  def to_json(self) -> str:
    return json.dumps(
      {"title": self.title, **self.facts, "notes": self.notes}, indent=2, allow_nan=False
    )

  def format_table(self) -> str:
    width = max(len(key) for key in self.facts)
    lines = [self.title, "-" * len(self.title)]
    lines += [f"{key.ljust(width)}  {value}" for key, value in self.facts.items()]
    return "\n".join([*lines, *self.notes])


def summarize_imported_export(export_dir: str, metadata) -> ImportedReport:
  serving = metadata.serving_config
  source = metadata.training
  facts = {
    "source": f"{source.get('source')} ({metadata.config.get('source_format')}"
    + (f", signature {source['signature']}" if source.get("signature") else "")
    + ")",
    "source sha256": source.get("source_sha256"),
    "input": f"{serving.input_height}x{serving.input_width}x{serving.channels}",
    "classes": ", ".join(metadata.class_names),
    "preprocess": serving.preprocess,
    "resize": serving.resize,
    "scores": serving.output
    + (f" (one channel, foreground above {serving.threshold})" if serving.binary_sigmoid else ""),
    "parameters": f"{export_lib.stored_parameters(export_dir):,}",
    "trusted": "yes (exported with --trust-model)" if source.get("trusted") else "no",
    "created": metadata.created,
  }
  return ImportedReport(f"{metadata.name} {metadata.version}: imported model", facts)


def summarize_export(export_dir: str):
  """Rebuilds the export's recorded architecture (without weights) and checks its parameter
  count against the variables the SavedModel holds; for an export of a user's own model, the
  way it is served (`ImportedReport`)."""
  metadata = export_lib.read_metadata(export_dir)
  if metadata.imported:
    return summarize_imported_export(export_dir, metadata)
  config = metadata.unet_config
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = unet.build_unet(_without_weights(config))
  report = summarize_model(model, f"{metadata.name} {metadata.version}: {_title(config)}")
  stored = export_lib.stored_parameters(export_dir)
  agreement = "matches" if stored == report.keras_total else "DIFFERS from"
  report.notes.append(
    f"The SavedModel holds {stored:,} parameters: {agreement} the rebuilt architecture."
  )
  report.notes.append(f"Served with {metadata.serving_config.description}.")
  if metadata.validation:
    v = metadata.validation
    report.notes.append(
      f"Validation: pixel accuracy {messages.number(v.get('pixel_accuracy'))}, "
      f"mean IoU {messages.number(v.get('mean_iou'))}."
    )
  return report
