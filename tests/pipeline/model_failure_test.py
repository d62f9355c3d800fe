"""A model or device that fails on every image stops the run; one that fails on some images
does not.

The exports (`tests.unsafe_exports`) decode every image and then fail in the forward pass, as a
GPU whose cuDNN cannot start or that runs out of memory does: on every batch (the probe at load
catches it), on every real photo but not the small probe (the breaker catches it), or on three
particular images (error rows, and the run completes).
"""

from __future__ import annotations

import glob
import json
import os
import re

import pyarrow.parquet as pq
import pytest

from segbeam import constants
from segbeam.commands import run as run_command
from segbeam.pipeline import layout
from tests import accounting
from tests import synthetic
from tests import unsafe_exports

PHOTOS = 300
BATCH = 16
ODD_WIDTH = 77  # the three images the "particular" model fails on


def _always(heights, widths):
  import tensorflow as tf  # noqa: PLC0415

  return tf.ones_like(heights, tf.bool)


def _over_probe_size(heights, widths):
  return heights > 40  # the probe image is 32x32; every photo here is taller


def _odd_width(heights, widths):
  return widths == ODD_WIDTH


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  root = tmp_path_factory.mktemp("failing_exports")
  return {
    name: unsafe_exports.write_export(str(root / name), fails_when=fails_when)
    for name, fails_when in (
      ("always", _always),
      ("photos", _over_probe_size),
      ("particular", _odd_width),
    )
  }


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """PHOTOS small JPEGs, three of them ODD_WIDTH wide, and two damaged ones."""
  root = str(tmp_path_factory.mktemp("photos"))
  sizes = [(ODD_WIDTH if i in (5, 150, 290) else 64, 48) for i in range(PHOTOS)]
  images, _, _ = synthetic.write_dataset(root, sizes)
  with open(os.path.join(images, "pet_000.jpg"), "rb") as f:
    whole = f.read()
  for name in ("damaged_a.jpg", "damaged_b.jpg"):
    with open(os.path.join(images, name), "wb") as f:
      f.write(whole[: len(whole) // 2])  # header whole, pixels cut: fails at decode
  return images


def _run(photos, export, output, *beam_args, capsys):
  argv = [
    "--input",
    os.path.join(photos, "*.jpg"),
    "--output",
    output,
    "--model",
    export,
    "--batch-size",
    str(BATCH),
    "--quiet",
    *beam_args,
  ]
  code = run_command.main(argv)
  return code, capsys.readouterr().err.strip().splitlines()


TWO_PROCESSES = (
  "--runner=DirectRunner",
  "--direct_running_mode=multi_processing",
  "--direct_num_workers=2",
)


@pytest.mark.parametrize("beam_args", [(), TWO_PROCESSES], ids=["one process", "two processes"])
def test_a_model_failing_on_every_image_fails_at_load(photos, exports, tmp_path, capsys, beam_args):
  output = str(tmp_path / "out")
  code, lines = _run(photos, exports["always"], output, *beam_args, capsys=capsys)
  assert code == 1
  assert not os.path.exists(os.path.join(output, layout.MANIFEST_FILE))
  assert "no manifest was written" in lines[-1]
  assert "fails on a built-in probe image at load" in lines[-1]
  assert "InvalidArgumentError" in lines[-1] and "Tensor had Inf values" in lines[-1]


@pytest.mark.parametrize("beam_args", [(), TWO_PROCESSES], ids=["one process", "two processes"])
def test_a_model_failing_on_every_photo_stops_the_run_early(
  photos, exports, tmp_path, capsys, beam_args
):
  output = str(tmp_path / "out")
  code, lines = _run(photos, exports["photos"], output, *beam_args, capsys=capsys)
  assert code == 1
  assert not os.path.exists(os.path.join(output, layout.MANIFEST_FILE))
  last = lines[-1]
  assert "no manifest was written" in last and "--breaker-batches 3" in last, last
  match = re.search(r"(\d+) images failed so, as this one: InvalidArgumentError: .*Inf", last)
  assert match, last
  # Each process stops after three batches' worth of images (passed by at most the call that
  # passes it): far from the whole input.
  assert 0 < int(match.group(1)) < (constants.DEFAULT_BREAKER_BATCHES + 1) * BATCH


@pytest.mark.parametrize(
  "extra, said",
  [
    # Batches of one (or a runner's bundles of one) fail image by image: they count in images.
    (("--batch-size", "1"), ("24 images in a row failed", "(--breaker-batches 3: 24 images)")),
    (
      ("--breaker-batches", "0", "--breaker-first-images", "40"),
      ("of the first 40 images failed in the model", "--breaker-share 0.5"),
    ),
  ],
  ids=["batches of one", "the share of the first images"],
)
def test_each_limit_stops_the_run(photos, exports, tmp_path, capsys, extra, said):
  code, lines = _run(photos, exports["photos"], str(tmp_path / "out"), *extra, capsys=capsys)
  assert code == 1
  assert all(words in lines[-1] for words in said), lines[-1]


def test_with_the_breaker_off_every_image_is_an_infer_row(photos, exports, tmp_path, capsys):
  output = str(tmp_path / "out")
  breaker_off = ("--breaker-batches", "0", "--breaker-share", "1")
  code, lines = _run(photos, exports["photos"], output, *breaker_off, capsys=capsys)
  assert code == 0, lines
  manifest = accounting.assert_accounted_for(output, inputs_seen=PHOTOS + 2)
  assert manifest["counts"]["failed"] == PHOTOS + 2
  stages = _errors_by_stage(output)
  assert stages == {"infer": PHOTOS, "decode": 2}


def _errors_by_stage(output: str) -> dict[str, int]:
  table = pq.read_table(glob.glob(os.path.join(output, "errors", "*.parquet")))
  counts: dict[str, int] = {}
  for stage in table.column("stage").to_pylist():
    counts[stage] = counts.get(stage, 0) + 1
  return counts


def test_a_model_failing_on_three_images_completes_with_three_infer_rows(
  photos, exports, tmp_path, capsys
):
  output = str(tmp_path / "out")
  code, lines = _run(photos, exports["particular"], output, capsys=capsys)
  assert code == 0, lines
  manifest = accounting.assert_accounted_for(output, inputs_seen=PHOTOS + 2)
  assert (manifest["counts"]["segmented"], manifest["counts"]["failed"]) == (PHOTOS - 3, 5)
  errors = pq.read_table(glob.glob(os.path.join(output, "errors", "*.parquet"))).to_pylist()
  infer = sorted(row["image_id"] for row in errors if row["stage"] == "infer")
  assert infer == ["pet_005.jpg", "pet_150.jpg", "pet_290.jpg"]
  assert {row["error_type"] for row in errors if row["stage"] == "infer"} == {
    "InvalidArgumentError"
  }
  assert sorted(row["image_id"] for row in errors if row["stage"] == "decode") == [
    "damaged_a.jpg",
    "damaged_b.jpg",
  ]
  with open(os.path.join(output, layout.MANIFEST_FILE)) as f:
    assert json.load(f)["counts"]["failed"] == 5
