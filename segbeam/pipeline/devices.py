"""GPU settings for worker processes."""

from __future__ import annotations

import ctypes
import logging

import tensorflow as tf

_LOGGER = logging.getLogger(__name__)


def enable_memory_growth() -> int:
  """Lets TensorFlow take GPU memory as it needs it instead of all of it at start.

  By default TensorFlow reserves nearly all memory of every GPU it sees in the first process
  that touches it, so a second process on the same GPU (several SDK processes on one Dataflow
  worker, NVIDIA MPS) fails to allocate. Call it before the model is loaded; every load may.

  Returns:
    The number of GPUs that grow memory as needed: 0 on a machine without one. A GPU whose
    runtime was initialised without it keeps its setting (TensorFlow refuses the change then)
    and is not counted; calling again is harmless.
  """
  configured = 0
  for gpu in tf.config.list_physical_devices("GPU"):
    if tf.config.experimental.get_memory_growth(gpu):  # set by an earlier call
      configured += 1
      continue
    try:
      tf.config.experimental.set_memory_growth(gpu, True)
      configured += 1
    except RuntimeError as error:  # "Physical devices cannot be modified after being initialized"
      _LOGGER.warning("memory growth not set on %s: %s", gpu.name, error)
  return configured


class NoGpuError(RuntimeError):
  """A job submitted with a GPU whose worker's TensorFlow sees none."""


_described = False


def describe_once() -> None:
  """Logs TensorFlow's build (CUDA, cuDNN) and the devices it sees, once per process: the first
  thing to read in a worker's log when a GPU job is slow."""
  global _described
  if _described:
    return
  _described = True
  build = tf.sysconfig.get_build_info()
  _LOGGER.info(
    "TensorFlow %s, CUDA build %s (CUDA %s, cuDNN %s); devices: %s",
    tf.__version__,
    build.get("is_cuda_build"),
    build.get("cuda_version"),
    build.get("cudnn_version"),
    ", ".join(d.name for d in tf.config.list_physical_devices()) or "none",
  )


def _loads(library: str) -> bool:
  try:
    ctypes.CDLL(library)
    return True
  except OSError:
    return False


def missing_gpu_reason() -> str:
  """Why TensorFlow sees no GPU, as far as this process can tell: the driver, a CUDA library
  of TensorFlow's build, or the device itself."""
  build = tf.sysconfig.get_build_info()
  if not build.get("is_cuda_build"):
    return f"this TensorFlow {tf.__version__} is not built with CUDA"
  if not _loads("libcuda.so.1"):
    return (
      "the NVIDIA driver is missing (libcuda.so.1 not found): the job needs the "
      "'install-nvidia-driver' accelerator service option, and the image "
      "LD_LIBRARY_PATH=/usr/local/nvidia/lib64"
    )
  cuda_major = str(build.get("cuda_version", "")).split(".")[0]
  cudnn_major = str(build.get("cudnn_version", "")).split(".")[0]
  for library in (f"libcudart.so.{cuda_major}", f"libcudnn.so.{cudnn_major}"):
    if cuda_major and cudnn_major and not _loads(library):
      return (
        f"{library} of CUDA {build.get('cuda_version')} / cuDNN "
        f"{build.get('cudnn_version')} cannot be loaded: install "
        "tensorflow[and-cuda] in the image"
      )
  return "the driver and CUDA libraries load, but no GPU device is visible to this process"


def require_gpu() -> None:
  """Raises NoGpuError, naming what is missing, when TensorFlow sees no GPU: a GPU job must
  not run on the CPU while its GPUs are billed."""
  if not tf.config.list_physical_devices("GPU"):
    raise NoGpuError(
      f"the job was submitted with a GPU but TensorFlow sees none: {missing_gpu_reason()}"
    )
