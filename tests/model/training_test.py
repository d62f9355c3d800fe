"""A tiny end-to-end training run: checkpoint, export with metadata, validation metrics."""

import logging
import os
import warnings

import keras
import numpy as np
import pytest

from segbeam.model import config as config_lib
from segbeam.model import contract
from segbeam.model import data
from segbeam.model import export
from segbeam.model import labels
from segbeam.model import training


def test_train_exports_the_best_checkpoint_with_metrics(pet_folder, tmp_path, caplog):
  images, masks, names = pet_folder
  pairs = data.match_pairs(images, masks)
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image at all")
  train_pairs = [*pairs[:4], data.ImageMaskPair("broken", str(broken), pairs[0].mask_path)]
  output = str(tmp_path / "run")
  config = config_lib.preset("mobilenetv2", input_size=32)
  with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
    warnings.simplefilter("always")  # every warning, not only the first from each place
    result = training.train(
      config,
      labels.OXFORD_PET_TRIMAP,
      train_pairs,
      pairs[4:],
      output,
      training_config=config_lib.TrainingConfig(epochs=2, batch_size=2),
      provenance={"command": "test"},
    )
  # Keras warns "Your input ran out of data; interrupting training" (warnings.warn in its
  # EpochIterator) when a dataset ends before the steps it expected, and after every first
  # pass over a dataset of unknown length (a generator's). The datasets know their length in
  # usable pairs (4 of the 5 given, the broken one skipped): Keras reads each whole, no more.
  assert not [w for w in caught if "ran out of data" in str(w.message)], [
    str(w.message) for w in caught
  ]
  assert "ran out of data" not in caplog.text
  assert [s.name for s in result.skipped] == ["broken"]
  assert os.path.exists(result.checkpoint)
  assert sorted(os.listdir(output)) == ["best.keras", "export", "history.csv"]
  metadata = contract.read_metadata(result.export_dir)
  assert metadata == result.metadata
  assert metadata.training["train_images"] == 4 and metadata.training["val_images"] == 2
  assert metadata.training["command"] == "test"
  assert set(metadata.validation) >= {"pixel_accuracy", "mean_iou", "per_class_iou"}
  assert 0.0 <= metadata.validation["pixel_accuracy"] <= 1.0
  # The export carries the checkpoint's weights.
  best = keras.models.load_model(result.checkpoint)
  assert metadata.version == export.content_version(best.weights, config.to_dict())
  with open(os.path.join(output, "history.csv")) as f:
    assert len(f.read().strip().splitlines()) == 3  # header + two epochs


def test_batchnorm_momentum_reaches_nested_layers():
  model = keras.Sequential(
    [
      keras.Input((4,)),
      keras.Sequential([keras.layers.BatchNormalization()]),
      keras.layers.BatchNormalization(),
    ]
  )
  training.set_batchnorm_momentum(model, 0.5)
  momenta = []
  stack = [model]
  while stack:
    layer = stack.pop()
    stack.extend(getattr(layer, "layers", []))
    if isinstance(layer, keras.layers.BatchNormalization):
      momenta.append(layer.momentum)
  assert momenta == [0.5, 0.5]
  assert np.isfinite(model(np.ones((2, 4), "float32"))).all()


def test_training_refuses_a_label_map_that_leaves_a_class_unlabelled(pet_folder, tmp_path):
  """Evaluation accepts binary ground truth for a 3-class model; training on it would teach
  the model never to predict the border, so it stops before anything is built or written."""
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  output = tmp_path / "run"
  partial = labels.parse_label_map("1:0,2:1", ("pet", "background", "border"))
  with pytest.raises(ValueError, match="no raw value maps to border"):
    training.train(
      config_lib.preset("mobilenetv2", input_size=32), partial, pairs[:4], pairs[4:], str(output)
    )
  assert not output.exists()


def test_segbeam_train_with_a_partial_label_map_is_a_bad_invocation(pet_folder, tmp_path, capsys):
  from segbeam import cli

  images, masks, _ = pet_folder
  output = tmp_path / "run"
  assert (
    cli.main(
      [
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--input-size",
        "32",
        "--label-map",
        "1:0,2:1",
        "--class-names",
        "pet,background,border",
        "--output",
        str(output),
      ]
    )
    == 2
  )
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("segbeam train:")
  assert "no raw value maps to border" in err
  assert not output.exists()


def _train_args(images, masks, output, *extra):
  return ["train", "--images", images, "--masks", masks, "--output", str(output), *extra]


def test_segbeam_train_on_crops_exports_a_model_of_the_crop_size(tmp_path, capsys):
  from segbeam import cli
  from tests import synthetic

  images, masks, names = synthetic.write_dataset(str(tmp_path / "data"), [(160, 160)] * 4)
  (tmp_path / "train.txt").write_text("\n".join(names[:2]))
  (tmp_path / "val.txt").write_text("\n".join(names[2:]))
  output = tmp_path / "run"
  extra = ["--crop", "64", "--scale", "0.5", "--epochs", "1", "--batch-size", "2"]
  extra += ["--names", str(tmp_path / "train.txt"), "--val-names", str(tmp_path / "val.txt")]
  assert cli.main(_train_args(images, masks, output, *extra)) == 0
  capsys.readouterr()
  metadata = contract.read_metadata(str(output / "export"))
  assert metadata.config["input_size"] == 64
  assert metadata.serving["input_height"] == metadata.serving["input_width"] == 64
  assert metadata.training["crop"] == 64 and metadata.training["scale"] == 0.5
  validation = metadata.validation
  # 160 x 160 at scale 0.5 is 80 x 80: one 64 x 64 crop per validation image.
  assert validation["resolution"] == "64x64 crops at scale 0.5"
  assert validation["images"] == 2 and validation["crops"] == 2
  assert validation["pixels"] == 2 * 64 * 64
  assert 0.0 <= validation["pixel_accuracy"] <= 1.0
  assert set(validation["per_class_iou"]) == {"pet", "background", "border"}


@pytest.mark.parametrize(
  "flags,message",
  [
    (["--crop", "100"], "--crop must be a positive multiple of 32"),
    (["--crop", "0"], "--crop must be a positive multiple of 32"),
    (["--crop", "64", "--scale", "0"], "--scale must be more than 0 and at most 1"),
    (["--crop", "64", "--scale", "1.5"], "--scale must be more than 0 and at most 1"),
    (["--scale", "0.5"], "give --crop SIZE too"),
    (["--crop", "64", "--input-size", "128"], "--input-size 128 conflicts with --crop 64"),
  ],
)
def test_segbeam_train_refuses_bad_crop_options(pet_folder, tmp_path, capsys, flags, message):
  from segbeam import cli

  images, masks, _ = pet_folder
  output = tmp_path / "run"
  assert cli.main(_train_args(images, masks, output, *flags)) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("segbeam train:")
  assert message in err
  assert not output.exists()


@pytest.mark.parametrize(
  "changes,message",
  [
    (dict(crop=48), "--crop must be a positive multiple of 32"),
    (dict(crop=64, scale=1.5), "--scale must be more than 0 and at most 1"),
    (dict(scale=0.5), "give --crop SIZE too"),
  ],
)
def test_training_config_checks_crop_and_scale(changes, message):
  with pytest.raises(ValueError, match=message):
    config_lib.TrainingConfig(**changes)


def test_training_on_crops_needs_a_model_of_the_crop_size(pet_folder, tmp_path):
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  with pytest.raises(ValueError, match="needs a model of input size 64, not 32"):
    training.train(
      config_lib.preset("mobilenetv2", input_size=32),
      labels.OXFORD_PET_TRIMAP,
      pairs[:4],
      pairs[4:],
      str(tmp_path / "run"),
      training_config=config_lib.TrainingConfig(crop=64),
    )
  assert not (tmp_path / "run").exists()
