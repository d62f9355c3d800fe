"""Trains a U-Net on image + mask pairs, keeps the best checkpoint, exports and evaluates it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from segbeam.model import config as config_lib
from segbeam.model import contract
from segbeam.model import data as data_lib
from segbeam.model import evaluation
from segbeam.model import export as export_lib
from segbeam.model import labels as labels_lib
from segbeam.model import layers
from segbeam.model import metrics as metrics_lib
from segbeam.model import unet

CHECKPOINT_FILE = "best.keras"
HISTORY_FILE = "history.csv"
EXPORT_DIR = "export"
MONITOR = "val_mean_iou"


@dataclasses.dataclass(frozen=True)
class TrainingResult:
  checkpoint: str
  export_dir: str
  metadata: contract.ModelMetadata
  skipped: tuple[data_lib.SkippedPair, ...]


def compile_model(
  model: keras.Model, num_classes: int, learning_rate: float, decay_steps: int
) -> None:
  schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.01)
  model.compile(
    optimizer=keras.optimizers.Adam(schedule),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    # Weighted, so pixels the label map ignores count in neither loss nor metrics.
    weighted_metrics=[
      keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
      keras.metrics.MeanIoU(num_classes, sparse_y_pred=False, name="mean_iou", dtype="float32"),
    ],
  )


class _EpochProgress(keras.callbacks.Callback):
  """One line per epoch, flushed at once (Keras' own line is buffered when piped)."""

  def __init__(self, epochs: int):
    super().__init__()
    self._epochs = epochs
    self._start = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    items = " ".join(
      f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if isinstance(v, float)
    )
    elapsed = time.monotonic() - self._start
    print(f"epoch {epoch + 1}/{self._epochs} {items} elapsed={elapsed:.0f}s", flush=True)


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
  """Sets the moving-statistics momentum of every BatchNorm, nested models included."""
  stack = [model]
  while stack:
    layer = stack.pop()
    stack.extend(getattr(layer, "layers", []))
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = momentum


def evaluate_crops(
  model: keras.Model, dataset: tf.data.Dataset, class_names: Sequence[str]
) -> tuple[metrics_lib.SegmentationMetrics, int]:
  """The model's metrics over a dataset of (images, masks, pixel weights) batches, as
  `data.make_crop_dataset` gives them, and how many crops they cover. Pixels of weight 0
  (ignored by the label map, or padding) are left out, as in training."""
  result = metrics_lib.SegmentationMetrics.empty(class_names)
  crops = 0
  for images, masks, weights in dataset:
    predicted = np.argmax(model.predict_on_batch(images), axis=-1)
    truth = np.where(weights.numpy() > 0, masks.numpy(), labels_lib.IGNORE_INDEX)
    result = result.add(truth, predicted)
    crops += int(images.shape[0])
  return result, crops


def train(
  model_config: config_lib.UNetConfig,
  label_map: labels_lib.LabelMap,
  train_pairs: Sequence[data_lib.ImageMaskPair],
  val_pairs: Sequence[data_lib.ImageMaskPair],
  output_dir: str,
  *,
  training_config: config_lib.TrainingConfig = config_lib.TrainingConfig(),
  name: str = "segbeam-unet",
  provenance: Optional[dict[str, Any]] = None,
) -> TrainingResult:
  """Trains, keeps the checkpoint with the best validation mean IoU, exports it to
  `output_dir/export` and records its validation metrics there: at original resolution, or
  with `training_config.crop`, on the validation crops (`data.make_crop_dataset`)."""
  if label_map.num_classes != model_config.num_classes:
    raise ValueError(
      f"label map has {label_map.num_classes} classes, model config {model_config.num_classes}"
    )
  if label_map.uncovered_class_names:
    # Evaluation accepts partial ground truth; training would learn never to predict a class
    # that no pixel is labelled with.
    raise ValueError(
      f"training needs every class in the label map: no raw value maps to "
      f"{', '.join(label_map.uncovered_class_names)} (classes "
      f"{list(label_map.class_names)}); map them, or leave them out of --class-names"
    )
  crop = training_config.crop
  if crop is not None and crop != model_config.input_size:
    raise ValueError(
      f"training on {crop}x{crop} crops needs a model of input size {crop}, "
      f"not {model_config.input_size}"
    )
  keras.utils.set_random_seed(training_config.seed)
  tf.io.gfile.makedirs(output_dir)
  loader_options = dict(
    channels=model_config.channels,
    input_size=model_config.input_size,
    label_map=label_map,
    full_resolution=crop is not None,
  )
  train_loader = data_lib.PairLoader(train_pairs, **loader_options)
  val_loader = data_lib.PairLoader(val_pairs, **loader_options)
  if crop is None:
    common = dict(
      input_size=model_config.input_size,
      channels=model_config.channels,
      batch_size=training_config.batch_size,
      seed=training_config.seed,
    )
    train_data = data_lib.make_dataset(train_loader, training=training_config.augment, **common)
    val_data = data_lib.make_dataset(val_loader, training=False, **common)
  else:
    common = dict(
      crop=crop,
      scale=training_config.scale,
      channels=model_config.channels,
      batch_size=training_config.batch_size,
      seed=training_config.seed,
    )
    # Random crops even without augmentation: one fixed window per image would leave the rest
    # of it unseen.
    train_data = data_lib.make_crop_dataset(
      train_loader, training=True, augment=training_config.augment, **common
    )
    val_data = data_lib.make_crop_dataset(val_loader, training=False, **common)

  model = unet.build_unet(model_config)
  if training_config.batchnorm_momentum is not None:
    set_batchnorm_momentum(model, training_config.batchnorm_momentum)
  # The datasets know their length in batches (usable pairs only), so Keras runs exactly those
  # steps and the learning rate decays over them.
  steps = training_config.epochs * int(train_data.cardinality())
  compile_model(model, model_config.num_classes, training_config.learning_rate, steps)
  checkpoint = os.path.join(output_dir, CHECKPOINT_FILE)
  model.fit(
    train_data,
    validation_data=val_data,
    epochs=training_config.epochs,
    verbose=0,
    shuffle=False,  # The dataset shuffles itself.
    callbacks=[
      keras.callbacks.ModelCheckpoint(checkpoint, monitor=MONITOR, mode="max", save_best_only=True),
      keras.callbacks.CSVLogger(os.path.join(output_dir, HISTORY_FILE)),
      _EpochProgress(training_config.epochs),
    ],
  )
  skipped = (*train_loader.skipped.values(), *val_loader.skipped.values())

  best = layers.load_keras_model(checkpoint)
  export_dir = os.path.join(output_dir, EXPORT_DIR)
  training_record = {
    **(provenance or {}),
    "train_images": len(train_pairs) - len(train_loader.skipped),
    "val_images": len(val_pairs) - len(val_loader.skipped),
    "skipped": [dataclasses.asdict(s) for s in skipped],
    **dataclasses.asdict(training_config),
  }
  metadata = export_lib.export_model(
    best, model_config, export_dir, label_map=label_map, name=name, training=training_record
  )
  if crop is None:
    result = evaluation.evaluate_export(export_lib.LoadedExport(export_dir), val_pairs)
    validation = {
      **result.metrics.to_dict(),
      "images": result.images,
      "resolution": "original image size",
    }
  else:
    # Whole images resized to the input would be another scale than the one the model learnt
    # and is to be run at (tiled): the validation crops say how it does at that scale.
    crop_metrics, crops = evaluate_crops(best, val_data, label_map.class_names)
    validation = {
      **crop_metrics.to_dict(),
      "images": len(val_pairs) - len(val_loader.skipped),
      "crops": crops,
      "resolution": f"{crop}x{crop} crops at scale {training_config.scale}",
    }
  metadata = dataclasses.replace(metadata, validation=validation)
  export_lib.write_metadata(export_dir, metadata)
  print(
    json.dumps({"export": export_dir, "validation": metadata.validation}, indent=2),
    file=sys.stdout,
    flush=True,
  )
  logging.info("exported %s (%s)", export_dir, metadata.version)
  return TrainingResult(checkpoint, export_dir, metadata, tuple(skipped))
