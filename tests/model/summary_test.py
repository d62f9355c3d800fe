"""The model summary: parts, shapes, and totals equal to Keras' own."""

import json
import warnings

import keras
import numpy as np
import pytest

from segbeam.model import config as config_lib
from segbeam.model import summary


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_totals_equal_keras_and_every_part_is_listed(name):
  config = config_lib.preset(name, input_size=64)
  report = summary.summarize_config(config)
  assert report.total == report.keras_total
  assert report.trainable == report.keras_trainable
  roles = [row.role for row in report.rows]
  assert roles.count("encoder") == 1 and roles[-1] == "head"
  assert roles.count("decoder") == len(config.decoder.filters)
  # Each decoder block doubles the resolution, and says how.
  for row in (r for r in report.rows if r.role == "decoder"):
    side_in = int(row.input_shape.split("x")[0])
    assert row.output_shape.startswith(f"{2 * side_in}x{2 * side_in}x")
    assert f"{side_in}x{side_in} -> {2 * side_in}x{2 * side_in}" in row.resample


def test_what_trains_in_the_tutorial_unet():
  """The question users keep asking: with a frozen encoder the whole decoder trains."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    report = summary.summarize_config(config_lib.preset("mobilenetv2", encoder_trainable="frozen"))
  by_name = {row.name: row for row in report.rows}
  assert by_name["encoder"].trainable == 0
  assert by_name["encoder"].frozen == 1_841_984
  decoder_and_head = [r for r in report.rows if r.role in ("decoder", "head")]
  assert sum(r.trainable for r in decoder_and_head) == 4_660_323
  assert all(r.trainable > 0 for r in decoder_and_head)
  assert by_name["decoder_block_1"].resample == "Conv2DTranspose k3 s2 same: 4x4 -> 8x8"
  table = report.format_table()
  assert "4,660,323" in table and "6,504,227 parameters" in table
  assert json.loads(report.to_json())["trainable"] == 4_660_323


@pytest.mark.parametrize(
  "side,kernel,stride,padding,expected",
  [
    (7, 3, 2, "same", 14),
    (7, 2, 1, "valid", 8),
    (4, 3, 2, "valid", 9),
    (7, 2, 2, "valid", 14),
    (5, 1, 3, "valid", 15),
  ],
)
def test_transpose_rule_matches_keras(side, kernel, stride, padding, expected):
  layer = keras.layers.Conv2DTranspose(1, kernel, strides=stride, padding=padding)
  keras_side = layer(np.zeros((1, side, side, 1), "float32")).shape[1]
  assert summary.transpose_output_side(side, kernel, stride, padding) == keras_side == expected


def test_summary_of_an_export_matches_its_variables(tiny_export):
  export_dir, metadata = tiny_export
  report = summary.summarize_export(export_dir)
  assert metadata.version in report.title
  assert any("matches the rebuilt architecture" in note for note in report.notes)
  assert report.total == report.keras_total


def test_summary_of_an_export_without_a_mean_iou(tiny_export, tmp_path, capsys):
  """A validation set where no class occurred has no mean IoU: recorded as null, shown as -,
  and `--json` stays JSON (no NaN)."""
  import dataclasses
  import shutil

  from segbeam import cli
  from segbeam.model import export

  export_dir = str(tmp_path / "export")
  shutil.copytree(tiny_export[0], export_dir)
  validation = {"pixel_accuracy": 0.5, "mean_iou": None, "per_class_iou": {"pet": None}}
  export.write_metadata(export_dir, dataclasses.replace(tiny_export[1], validation=validation))
  report = summary.summarize_export(export_dir)
  assert "Validation: pixel accuracy 0.5000, mean IoU -." in report.notes

  def refuse(token):
    raise ValueError(f"{token} is not JSON")

  assert cli.main(["model", "summary", "--model", export_dir, "--json"]) == 0
  notes = json.loads(capsys.readouterr().out, parse_constant=refuse)["notes"]
  assert "Validation: pixel accuracy 0.5000, mean IoU -." in notes


def test_summary_of_a_pretrained_config_needs_no_download():
  """ImageNet weights cannot be fetched here; counting parameters does not need them."""
  report = summary.summarize_config(config_lib.preset("mobilenetv2", encoder_weights="imagenet"))
  assert report.keras_trainable == 4_660_323
  assert "encoder weights imagenet, encoder trainable frozen" in report.title
