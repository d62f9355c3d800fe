"""GPU memory growth: harmless where there is no GPU (this machine), set on every GPU there is."""

import subprocess
import sys

import pytest

from segbeam.pipeline import devices


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
      [sys.executable, "-c", "import tensorflow as tf\n"
       "from segbeam.pipeline import devices\n"
       "first = devices.enable_memory_growth()\n"
       "tf.constant(1.0) + 1.0  # the GPU runtime is initialised from here on\n"
       "print(first, devices.enable_memory_growth(), all(tf.config.experimental."
       "get_memory_growth(g) for g in tf.config.list_physical_devices('GPU')))"],
      check=True, capture_output=True, text=True).stdout.split()
  assert out == [str(len(gpus)), str(len(gpus)), "True"]
