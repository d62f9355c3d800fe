"""Importing TensorFlow without its C++ start-up chatter, and with it when the import fails."""

import subprocess
import sys

# In a fresh interpreter: the import of TensorFlow stopped part way, by Ctrl-C or by an error,
# once its native library has loaded (and printed its INFO lines to the captured stderr).
_STOPPED_IMPORT = """
import importlib.abc, sys
class StopPartWay(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name == "tensorflow.python.framework.ops":
      raise {stop}
sys.meta_path.insert(0, StopPartWay())
from segbeam import quiet
try:
  quiet.import_tensorflow()
except BaseException as stopped:
  print(type(stopped).__name__)
"""


def _stopped_import(stop: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", _STOPPED_IMPORT.format(stop=stop)],
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )


def test_a_failed_import_shows_what_tensorflow_printed():
  failed = _stopped_import("ImportError('no ops today')")
  assert failed.stdout == "ImportError\n"
  assert "oneDNN" in failed.stderr or "cuda" in failed.stderr.lower(), failed.stderr


def test_ctrl_c_during_the_import_prints_nothing_of_it():
  interrupted = _stopped_import("KeyboardInterrupt")
  assert interrupted.stdout == "KeyboardInterrupt\n"
  assert interrupted.stderr == ""


def test_a_successful_import_prints_nothing():
  code = "from segbeam import quiet; quiet.import_tensorflow(); import tensorflow; print('ok')"
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
  )
  assert done.stdout == "ok\n" and done.stderr == ""
