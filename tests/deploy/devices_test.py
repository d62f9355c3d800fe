"""GPU memory growth: harmless where there is no GPU (this machine), set on every GPU there is."""

import subprocess
import sys

import pytest

from segbeam import constants
from segbeam.commands import run as run_command
from segbeam.model import defaults
from segbeam.pipeline import devices
from segbeam.pipeline import inference


def _gpus():
  import tensorflow as tf

  return tf.config.list_physical_devices("GPU")


def test_without_a_gpu_nothing_is_configured():
  if _gpus():
    pytest.skip("this machine has a GPU")
  assert devices.enable_memory_growth() == 0
  assert devices.enable_memory_growth() == 0  # again in the same process: still no error


def test_every_gpu_grows_in_a_fresh_process():
  """In a process whose GPU runtime is not yet initialised, as a worker's before its model."""
  gpus = _gpus()
  if not gpus:
    pytest.skip("no GPU on this machine")
  out = subprocess.run(
    [
      sys.executable,
      "-c",
      "import tensorflow as tf\n"
      "from segbeam.pipeline import devices\n"
      "first = devices.enable_memory_growth()\n"
      "tf.constant(1.0) + 1.0  # the GPU runtime is initialised from here on\n"
      "print(first, devices.enable_memory_growth(), all(tf.config.experimental."
      "get_memory_growth(g) for g in tf.config.list_physical_devices('GPU')))",
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stdout.split()
  assert out == [str(len(gpus)), str(len(gpus)), "True"]


def test_a_gpu_job_without_a_gpu_fails_naming_what_is_missing(caplog):
  """Simulated on this CPU machine: a handler told that its job attached a GPU refuses to load
  the model, saying what is missing, instead of running on the CPU."""
  if _gpus():
    pytest.skip("this machine has a GPU")
  with pytest.raises(
    devices.NoGpuError,
    match=r"submitted with a GPU but TensorFlow sees none: "
    r"(the NVIDIA driver is missing|this TensorFlow .* is not built with CUDA)",
  ):
    devices.require_gpu()
  handler = inference.create_handler(
    constants.HANDLER_TFX_BSL, defaults.default_model_dir(), max_batch_size=4, require_gpu=True
  )
  with pytest.raises(devices.NoGpuError):
    handler.load_model()
  # Without the requirement the same handler loads on the CPU, as a local run does.
  assert (
    inference.create_handler(
      constants.HANDLER_TFX_BSL, defaults.default_model_dir(), max_batch_size=4
    ).load_model()
    is not None
  )


def test_the_devices_are_logged_once_per_process():
  out = subprocess.run(
    [
      sys.executable,
      "-c",
      "import logging\n"
      "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
      "from segbeam.pipeline import devices\n"
      "devices.describe_once(); devices.describe_once()",
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stderr
  lines = [line for line in out.splitlines() if line.startswith("segbeam.pipeline.devices:")]
  assert len(lines) == 1 and "CUDA build" in lines[0] and "/physical_device:CPU:0" in lines[0]


def test_a_run_that_requires_a_gpu_fails_without_one_and_writes_no_manifest(tmp_path, capsys):
  if _gpus():
    pytest.skip("this machine has a GPU")
  from PIL import Image

  Image.new("RGB", (40, 30), (90, 120, 30)).save(tmp_path / "a.png")
  output = tmp_path / "out"
  assert (
    run_command.main(["--input", str(tmp_path / "*.png"), "--output", str(output), "--require-gpu"])
    == 1
  )
  err = capsys.readouterr().err
  assert "submitted with a GPU but TensorFlow sees none" in err.splitlines()[-1]
  assert not (output / "manifest.json").exists()
