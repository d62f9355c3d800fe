"""Shared fixtures: one tiny export per test session, generated data folders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tests import accounting
from tests import synthetic

SHARED_DATA = os.path.abspath(
  os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "oxford-pets-sample")
)
TINY_INPUT_SIZE = 32


def pytest_configure(config):
  """Every TestPipeline that names no runner runs on the one `segbeam run` uses by default.

  Beam's own default, the DirectRunner, first tries the Prism runner: offline it fails to
  download Prism's binary, falls back and leaves an empty /tmp/beam-temp* folder per pipeline;
  online it would download the binary and run the tests on Prism, an engine segbeam never runs.
  The runner is named here rather than read from `segbeam.run.beam_options`, whose
  import (Beam's) would add seconds to every pytest start;
  beam_options_test.test_test_pipelines_run_on_segbeams_default_runner ties the two.
  """
  from apache_beam.testing.test_pipeline import TestPipeline

  TestPipeline.pytest_test_pipeline_options = "--runner=FnApiRunner"


@pytest.fixture(scope="session")
def tiny_config():
  from segbeam.model import config

  return config.preset("mobilenetv2", input_size=TINY_INPUT_SIZE, num_classes=3)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  import keras

  from segbeam.model import unet

  keras.utils.set_random_seed(1)
  return unet.build_unet(tiny_config)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model, tiny_config):
  """An untrained 32x32 mobilenetv2 U-Net exported once per session: (export_dir, metadata)."""
  from segbeam.model import export
  from segbeam.model import labels

  export_dir = str(tmp_path_factory.mktemp("tiny_export") / "export")
  metadata = export.export_model(
    tiny_model, tiny_config, export_dir, label_map=labels.OXFORD_PET_TRIMAP, name="tiny"
  )
  return export_dir, metadata


@pytest.fixture(scope="session")
def pet_folder(tmp_path_factory):
  """Six generated image/trimap pairs of different sizes: (images_dir, masks_dir, names)."""
  root = str(tmp_path_factory.mktemp("pets"))
  return synthetic.write_dataset(root, [(48, 40), (64, 64), (33, 57), (80, 60), (40, 40), (50, 70)])


@pytest.fixture(scope="session")
def shared_data():
  if not os.path.isdir(SHARED_DATA):
    pytest.skip(f"{SHARED_DATA} is not beside the checkout")
  return SHARED_DATA


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, tiny_export, pet_folder):
  """A real completed run of the tiny export over the generated pets plus one text file:
  the output folder."""
  import shutil

  from apache_beam.testing.test_pipeline import TestPipeline

  from segbeam import options as options_lib
  from segbeam.run import job

  images, _, _ = pet_folder
  inputs = tmp_path_factory.mktemp("run_inputs")
  for name in os.listdir(images):
    shutil.copy(os.path.join(images, name), inputs / name)
  (inputs / "notes.jpg").write_bytes(b"not an image")
  output = str(tmp_path_factory.mktemp("run") / "out")
  pipeline = TestPipeline()
  job.add_to(
    pipeline,
    options_lib.parse_args(
      ["--input", str(inputs / "*"), "--output", output, "--model", tiny_export[0]]
    )[0],
  )
  pipeline.run().wait_until_finish()
  accounting.assert_accounted_for(output, inputs_seen=7)
  return output


@pytest.fixture(scope="session")
def gcs_emulator():
  """A running GCS emulator (bucket 'segbeam-test'); STORAGE_EMULATOR_HOST points at it."""
  from tests import gcs_emulator as emulator

  with emulator.running_emulator() as url:
    yield url
