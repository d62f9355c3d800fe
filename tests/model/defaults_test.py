"""The embedded default model: present, small enough, and its recorded metrics are true."""

import os

import pytest

from segbeam.model import contract
from segbeam.model import data
from segbeam.model import defaults
from segbeam.model import evaluation
from segbeam.model import export

MAX_BYTES = 30 * 1024 * 1024


def test_default_model_is_embedded_and_small():
  model_dir = defaults.default_model_dir()
  size = sum(
    os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(model_dir) for f in files
  )
  assert size <= MAX_BYTES, f"{size / 2**20:.1f} MiB"


def test_default_model_metadata():
  metadata = contract.read_metadata(defaults.default_model_dir())
  assert metadata.architecture == "mobilenetv2"
  assert metadata.input_size == 128 and metadata.channels == 3
  assert metadata.class_names == ("pet", "background", "border")
  assert metadata.training["train_images"] == 300 and metadata.validation["images"] == 150
  assert metadata.training["command"].startswith("segbeam train")


def test_recorded_validation_metrics_reproduce(shared_data):
  """Re-evaluates the export on the val split: the numbers in its metadata (and docs/model.md)
  come out again."""
  loaded = export.LoadedExport(defaults.default_model_dir())
  pairs = data.match_pairs(
    os.path.join(shared_data, "images"),
    os.path.join(shared_data, "trimaps"),
    data.read_names(os.path.join(shared_data, "val.txt")),
  )
  result = evaluation.evaluate_export(loaded, pairs, batch_size=32)
  recorded = loaded.metadata.validation
  assert result.images == 150 and not result.skipped
  assert result.metrics.pixel_accuracy == pytest.approx(recorded["pixel_accuracy"], abs=1e-4)
  assert result.metrics.mean_iou == pytest.approx(recorded["mean_iou"], abs=1e-4)
