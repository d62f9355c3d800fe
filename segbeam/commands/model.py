"""The model-side subcommands: `model list`, `model summary`, `train`, `evaluate`, `export`.

`add_parser` registers them on the CLI's subparsers (`segbeam.cli.COMMANDS`), each bound to the
function that runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import warnings
from typing import Optional

from segbeam.model import config as config_lib
from segbeam.model import defaults
from segbeam.model import labels as labels_lib


def _encoder_trainable(value: str) -> config_lib.EncoderTrainable:
  return int(value) if value.isdigit() else value


def _weights(value: str) -> Optional[str]:
  return None if value.lower() in ("none", "random") else value


def _add_architecture_options(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("architecture")
  group.add_argument(
    "--architecture",
    default="mobilenetv2",
    choices=sorted(config_lib.PRESETS),
    help="registered U-Net preset (default: %(default)s)",
  )
  group.add_argument("--input-size", type=int, default=128, help="model input side, multiple of 32")
  group.add_argument("--channels", type=int, default=3, choices=(1, 3))
  group.add_argument(
    "--num-classes",
    type=int,
    default=None,
    help="output classes (default: the label map's, else 3)",
  )
  group.add_argument(
    "--encoder-weights",
    type=_weights,
    default=None,
    help="'none' (random, default), 'imagenet' (Keras download) or a weights file",
  )
  group.add_argument(
    "--encoder-trainable",
    type=_encoder_trainable,
    default="auto",
    help="'auto' (frozen if pretrained), 'frozen', 'all' or N top layers",
  )
  group.add_argument(
    "--decoder-upsample",
    choices=(config_lib.UPSAMPLE_TRANSPOSE, config_lib.UPSAMPLE_UPSAMPLING),
    default=None,
    help="decoder block type (default: the preset's)",
  )
  group.add_argument(
    "--decoder-dropout",
    type=float,
    default=None,
    help="dropout rate in decoder blocks (default: the preset's)",
  )


def _config_from_args(args: argparse.Namespace, num_classes: int) -> config_lib.UNetConfig:
  changes = dict(
    input_size=args.input_size,
    channels=args.channels,
    num_classes=num_classes,
    encoder_weights=args.encoder_weights,
    encoder_trainable=args.encoder_trainable,
  )
  if args.decoder_upsample is not None:
    changes["decoder_upsample"] = args.decoder_upsample
  if args.decoder_dropout is not None:
    changes["decoder_dropout_rate"] = args.decoder_dropout
  return config_lib.preset(args.architecture, **changes)


def _label_map(args: argparse.Namespace) -> labels_lib.LabelMap:
  names = tuple(args.class_names.split(",")) if args.class_names else None
  return labels_lib.parse_label_map(args.label_map, names)


# --- model list / model summary ---------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
  for name, preset in sorted(config_lib.PRESETS.items()):
    d = preset.decoder
    print(
      f"{name:12s} encoder={preset.encoder.name} decoder filters={list(d.filters)} "
      f"upsample={d.upsample} convs/block={d.convs_per_block}"
    )
  return 0


def run_summary(args: argparse.Namespace) -> int:
  # TensorFlow loads only for the commands that need it.
  from segbeam.model import summary  # noqa: PLC0415

  if args.model:
    report = summary.summarize_export(args.model)
  else:
    config = _config_from_args(args, args.num_classes or 3)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      report = summary.summarize_config(config)
    for warning in caught:
      report.notes.append(str(warning.message))
  print(report.to_json() if args.json else report.format_table())
  return 0


def add_model_parser(subparsers) -> None:
  model = subparsers.add_parser("model", help="inspect architectures and exported models")
  model_commands = model.add_subparsers(dest="model_command", required=True)
  listing = model_commands.add_parser("list", help="registered architectures")
  listing.set_defaults(func=run_list)
  summary = model_commands.add_parser(
    "summary", help="per part: output shape, shape change, trainable and frozen parameters"
  )
  _add_architecture_options(summary)
  summary.add_argument("--model", help="an export directory instead of --architecture")
  summary.add_argument("--json", action="store_true", help="machine-readable output")
  summary.set_defaults(func=run_summary)


# --- train ------------------------------------------------------------------------------------


def _split(pairs, val_fraction: float):
  """A stable split: a pair goes to validation by a hash of its name, not by chance."""

  def bucket(name: str) -> float:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

  val = [p for p in pairs if bucket(p.name) < val_fraction]
  return [p for p in pairs if bucket(p.name) >= val_fraction], val


def run_train(args: argparse.Namespace) -> int:
  from segbeam.model import data as data_lib  # noqa: PLC0415
  from segbeam.model import training  # noqa: PLC0415

  # Checked before anything is read.
  training_config = config_lib.TrainingConfig(
    epochs=args.epochs,
    batch_size=args.batch_size,
    learning_rate=args.learning_rate,
    augment=not args.no_augment,
    seed=args.seed,
    crop=args.crop,
    scale=1.0 if args.scale is None else args.scale,
  )
  # A crop-trained model's input is its crop. A different --input-size is refused rather than
  # overridden: whoever gave it expects a model of that size, and would get another silently.
  if args.crop is not None and args.input_size not in (None, args.crop):
    raise ValueError(
      f"--input-size {args.input_size} conflicts with --crop {args.crop}: a model trained on "
      "crops takes its crop size as input; leave --input-size out"
    )
  if args.crop is not None:
    args.input_size = args.crop
  elif args.input_size is None:
    args.input_size = config_lib.UNetConfig.input_size
  label_map = _label_map(args)
  config = _config_from_args(args, label_map.num_classes)
  names = data_lib.read_names(args.names) if args.names else None
  pairs = data_lib.match_pairs(args.images, args.masks, names)
  if args.val_names:
    val_pairs = data_lib.match_pairs(
      args.val_images or args.images,
      args.val_masks or args.masks,
      data_lib.read_names(args.val_names),
    )
    train_pairs = pairs
  else:
    train_pairs, val_pairs = _split(pairs, args.val_fraction)
  print(
    f"training {config.architecture} on {len(train_pairs)} pairs, validating on {len(val_pairs)}",
    flush=True,
  )
  provenance = {
    "command": "segbeam " + shlex.join(sys.argv[1:]),
    "images": args.images,
    "masks": args.masks,
    "names": args.names,
    "val_names": args.val_names,
    "label_map": label_map.to_dict(),
  }
  training.train(
    config,
    label_map,
    train_pairs,
    val_pairs,
    args.output,
    training_config=training_config,
    name=args.name,
    provenance=provenance,
  )
  return 0


def _add_label_options(parser: argparse.ArgumentParser, default: Optional[str]) -> None:
  parser.add_argument(
    "--label-map",
    default=default,
    help="preset (" + ", ".join(labels_lib.PRESETS) + ") or 'raw:class,...' "
    "such as '1:0,2:1,3:2'; unmapped values are ignored"
    + (" (default: %(default)s)" if default else " (default: the model's own)"),
  )
  parser.add_argument("--class-names", default=None, help="comma-separated, in class order")


def add_train_parser(subparsers) -> None:
  training_defaults = config_lib.TrainingConfig()
  parser = subparsers.add_parser("train", help="train a U-Net on images + masks and export it")
  parser.add_argument("--images", required=True, help="folder of images")
  parser.add_argument("--masks", required=True, help="folder of masks, matched by file stem")
  parser.add_argument("--names", help="list file of the names to train on (e.g. train.txt)")
  parser.add_argument("--val-names", help="list file of validation names")
  parser.add_argument("--val-images", help="validation images folder (default: --images)")
  parser.add_argument("--val-masks", help="validation masks folder (default: --masks)")
  parser.add_argument(
    "--val-fraction",
    type=float,
    default=0.1,
    help="without --val-names: share of pairs held out, chosen by name hash",
  )
  _add_label_options(parser, default="oxford-pet-trimap")
  _add_architecture_options(parser)
  parser.add_argument("--epochs", type=int, default=training_defaults.epochs)
  parser.add_argument("--batch-size", type=int, default=training_defaults.batch_size)
  parser.add_argument("--learning-rate", type=float, default=training_defaults.learning_rate)
  parser.add_argument("--no-augment", action="store_true")
  parser.add_argument("--seed", type=int, default=training_defaults.seed)
  parser.add_argument(
    "--crop",
    type=int,
    default=None,
    metavar="SIZE",
    help="train on random SIZE x SIZE crops at native resolution instead of whole images "
    "resized, for `segbeam run --tile`; SIZE (a multiple of 32) is the model's input size",
  )
  parser.add_argument(
    "--scale",
    type=float,
    default=None,
    metavar="F",
    help="with --crop: resize images by F (0 < F <= 1) before cropping, the scale the model "
    "is to be run at (default: 1, native resolution)",
  )
  # None tells a given --input-size from the default, which --crop replaces (run_train).
  parser.set_defaults(input_size=None)
  parser.add_argument("--name", default="segbeam-unet", help="model name recorded in outputs")
  parser.add_argument(
    "--output", required=True, help="folder for best.keras, history.csv and export/"
  )
  parser.set_defaults(func=run_train)


# --- evaluate / export ------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
  from segbeam.model import data as data_lib  # noqa: PLC0415
  from segbeam.model import evaluation  # noqa: PLC0415
  from segbeam.model import export as export_lib  # noqa: PLC0415

  # Checked before it is loaded (`loading.loadable`), as `segbeam run` checks it.
  export = export_lib.LoadedExport(
    args.model or defaults.default_model_dir(), trust_model=args.trust_model
  )
  label_map = None
  if args.label_map:
    label_map = labels_lib.parse_label_map(args.label_map, export.metadata.class_names)
  names = data_lib.read_names(args.names) if args.names else None
  pairs = data_lib.match_pairs(args.images, args.masks, names)
  result = evaluation.evaluate_export(
    export, pairs, label_map=label_map, batch_size=args.batch_size
  )
  if args.json:
    print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return 0
  m = result.metrics
  print(
    f"model {export.metadata.name} {export.metadata.version} on {result.images} images "
    f"({len(result.skipped)} skipped), at original resolution"
  )
  print(f"pixel accuracy {m.pixel_accuracy:.4f}   mean IoU {m.mean_iou:.4f}")
  print(labels_lib.coverage_line(m.class_names, m.ground_truth_classes))
  for name, iou in m.per_class_iou.items():
    print(f"  IoU {name:20s} " + ("-  (no ground truth)" if iou is None else f"{iou:.4f}"))
  for skipped in result.skipped:
    print(f"  skipped {skipped.name}: {skipped.reason}")
  return 0


def add_evaluate_parser(subparsers) -> None:
  parser = subparsers.add_parser("evaluate", help="pixel accuracy and IoU of an export")
  parser.add_argument("--model", help="export directory (default: the embedded model)")
  parser.add_argument("--images", required=True)
  parser.add_argument("--masks", required=True)
  parser.add_argument("--names", help="list file of names to evaluate (e.g. val.txt)")
  parser.add_argument(
    "--label-map", default=None, help="how mask values map to classes (default: the model's own)"
  )
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--json", action="store_true")
  parser.add_argument(
    "--trust-model",
    action="store_true",
    help="load a model whose graph holds ops outside segbeam's allowlist, or links out of "
    "its folder (as segbeam run's --trust-model)",
  )
  parser.set_defaults(func=run_evaluate)


def run_export(args: argparse.Namespace) -> int:
  from segbeam.model import conversion  # noqa: PLC0415  # TensorFlow and Keras, for this only

  conversion.check_new_output(args.output)
  source = conversion.load_source(
    args.source,
    allow_custom_code=args.allow_custom_code,
    custom_objects_module=args.custom_objects,
    signature=args.signature,
    trust_model=args.trust_model,
  )
  serving = conversion.serving_config_for(
    source,
    preprocess=args.preprocess,
    resize=args.resize,
    output=args.scores,
    threshold=args.threshold,
    input_size=conversion.parse_size(args.input_size) if args.input_size else None,
  )
  class_names = args.class_names.split(",") if args.class_names else None
  label_map = conversion.label_map_for(serving, class_names, args.label_map)
  name = args.name or os.path.splitext(os.path.basename(os.path.normpath(args.source)))[0]
  metadata = conversion.export_source(
    source,
    args.output,
    serving,
    label_map=label_map,
    name=name,
    trust_model=args.trust_model,
    provenance={"command": "segbeam " + shlex.join(sys.argv[1:])},
  )
  print(
    f"exported {args.source} ({source.format}"
    + (f", signature {source.signature}" if source.signature else "")
    + f") to {args.output}: {metadata.name} {metadata.version}"
  )
  print(
    f"  input {serving.input_height}x{serving.input_width}x{serving.channels}, "
    f"{serving.description}, classes {', '.join(metadata.class_names)}"
  )
  print(
    f"run it: segbeam run --model {shlex.quote(args.output)} --input 'IMAGES/*.jpg' --output OUT"
  )
  return 0


def add_export_parser(subparsers) -> None:
  parser = subparsers.add_parser(
    "export",
    help="make a segbeam export of your own model (.keras, Keras 2 .h5, SavedModel)",
    description="Converts a trained segmentation model into a segbeam export: decoding, "
    "resizing and normalisation in the graph, class probabilities out. What the model file "
    "says (input size, channels, classes, last activation) is read from it; how its "
    "pipeline prepared pixels must be said here.",
  )
  parser.add_argument(
    "source", help="a .keras file, a Keras 2 / tf.keras .h5 file, or a SavedModel folder"
  )
  parser.add_argument(
    "--output", required=True, help="the export folder to create (must not exist)"
  )
  parser.add_argument(
    "--preprocess",
    required=True,
    choices=config_lib.PREPROCESS_CONVENTIONS,
    help="how the model's training pipeline normalised 0..255 RGB pixels: "
    "unit (x/255, the TensorFlow tutorial), symmetric (x/127.5-1, MobileNet), "
    "caffe (BGR minus the ImageNet mean: Keras VGG16, ResNet50), torch "
    "(x/255, ImageNet mean and std), none (0..255)",
  )
  parser.add_argument(
    "--resize",
    choices=config_lib.RESIZE_METHODS,
    default=config_lib.RESIZE_BILINEAR,
    help="how it resized images to its input, as tf.image.resize does: "
    "bilinear (its default and OpenCV's: no antialiasing), antialias "
    "(bilinear, antialias=True), area, nearest; or dct-antialias (segbeam "
    "train's: JPEGs decoded at a reduced scale) (default: %(default)s)",
  )
  parser.add_argument(
    "--scores",
    choices=config_lib.OUTPUT_KINDS,
    default=config_lib.OUTPUT_AUTO,
    help="what the model outputs: softmax, logits or sigmoid; auto reads its "
    "last activation (default: %(default)s)",
  )
  parser.add_argument(
    "--threshold",
    type=float,
    default=0.5,
    help="foreground threshold of a model with one sigmoid channel (default: %(default)s)",
  )
  parser.add_argument(
    "--input-size",
    default=None,
    help="N or HEIGHTxWIDTH, for a model that takes any size (default: the model's own)",
  )
  parser.add_argument(
    "--class-names",
    default=None,
    help="comma-separated, in class order (default: class_0, class_1, ...; "
    "background, foreground for one sigmoid channel)",
  )
  parser.add_argument(
    "--label-map",
    default=None,
    help="how ground-truth mask values map to classes, for evaluate and "
    "--ground-truth (default: value i is class i)",
  )
  parser.add_argument(
    "--name", default=None, help="model name recorded in outputs (default: the source's name)"
  )
  parser.add_argument(
    "--signature",
    default=None,
    help="the SavedModel signature to serve (default: the one that maps an "
    "image batch to per-pixel scores)",
  )
  parser.add_argument(
    "--allow-custom-code",
    action="store_true",
    help="load a .keras/.h5 with Lambda layers or custom objects (runs code from the file)",
  )
  parser.add_argument(
    "--custom-objects",
    default=None,
    metavar="MODULE",
    help="with --allow-custom-code: the Python module (a name importable "
    "from here, or a .py file) that defines the model's custom layers",
  )
  parser.add_argument(
    "--trust-model",
    action="store_true",
    help="export a model whose graph holds ops outside segbeam's allowlist, or links out of "
    "its folder (recorded in the export)",
  )
  parser.set_defaults(func=run_export)


def add_parser(subparsers) -> None:
  """Registers `segbeam model`, `train`, `evaluate` and `export`."""
  add_model_parser(subparsers)
  add_train_parser(subparsers)
  add_evaluate_parser(subparsers)
  add_export_parser(subparsers)
