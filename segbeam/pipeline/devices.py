"""GPU settings for worker processes."""

from __future__ import annotations

import logging

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
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # only workers need it
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
