"""Imports TensorFlow without its C++ start-up chatter on stderr.

TensorFlow's native libraries print several INFO lines (oneDNN, CUDA stubs) before its own
logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot silence them. The import runs with
stderr captured; if it fails, what was captured is printed with the error (not when Ctrl-C
ends it). On a machine with no NVIDIA driver the device probe, whose failed cuInit prints an
error line, runs captured too.
"""

import os
import sys
import tempfile


def import_tensorflow() -> None:
  if "tensorflow" in sys.modules:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  no_gpu_driver = not os.path.exists("/proc/driver/nvidia")
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: PLC0415

      if no_gpu_driver:  # the device probe's failed cuInit is the expected answer here
        tensorflow.config.list_physical_devices()
    except Exception:  # a failed import, not Ctrl-C: what TensorFlow printed may say why
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
