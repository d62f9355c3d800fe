"""The TensorFlow session tfx-bsl's handler runs in, and loading it before Beam is imported.

This is segbeam's one model preload: nothing here imports Beam, so `segbeam run` starts
loading the export's session on a background thread (`load_early_for`) right after parsing its
options, and the load overlaps importing Beam and building the pipeline; tfx-bsl's handler
then takes that session (`take_early`) instead of loading its own. The saved-model handler
loads on the first batch.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os
import threading
from typing import Any, Optional

import tensorflow as tf
from PIL import Image
from tensorflow.python.util import deprecation

from segbeam import constants
from segbeam.model import contract
from segbeam.model import defaults
from segbeam.model import loading
from segbeam.pipeline import devices

_LOG = logging.getLogger(__name__)


def session_config(*, on_gpu: bool):
  """The options of the session tfx-bsl's handler runs in.

  On a CPU, without Grappler's graph rewrites: they ran at every load, once for the variables'
  restore and once for the first inference, and the rewritten graph was no faster on the tutorial
  U-Net (BENCHMARKS.md, Measured design choices). oneDNN's own graph rewrite is not
  Grappler's and stays. On a GPU, TensorFlow's defaults (its layout and fusion rewrites are
  for GPUs; not measured here).
  """
  config = tf.compat.v1.ConfigProto()
  if not on_gpu:
    config.graph_options.rewrite_options.disable_meta_optimizer = True
  return config


def load_session(local_dir: str, *, trust_model: bool = False):
  """The export in `local_dir` loaded as tfx-bsl's handler loads it (the TF1 SavedModel loader,
  the serving tag), in a session with `session_config`, once `loading.loadable` has checked it
  (unless `trust_model`, its graph too). Returns (session, meta graph)."""
  local_dir = loading.loadable(local_dir, trust_model=trust_model)
  on_gpu = bool(tf.config.list_physical_devices("GPU"))
  session = tf.compat.v1.Session(graph=tf.compat.v1.Graph(), config=session_config(on_gpu=on_gpu))
  # The TF1 loader is tfx-bsl's, on purpose; its deprecation notice (three lines before
  # anything else `segbeam run` prints) tells a user nothing they can act on.
  with deprecation.silence():
    meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], local_dir)
  return session, meta_graph


def warm_up_image(size: int) -> bytes:
  """A small JPEG: the first call of a signature prepares its graph (a fraction of a second)."""
  buffer = io.BytesIO()
  Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="JPEG")
  return buffer.getvalue()


def warm_up(session, meta_graph, signature_name: str, image: bytes) -> None:
  """Runs the signature once on `image`, so that the first real batch finds its graph ready."""
  signature = meta_graph.signature_def[signature_name]
  (image_input,) = signature.inputs.values()
  session.run(
    {name: output.name for name, output in signature.outputs.items()}, {image_input.name: [image]}
  )


_early: dict[str, concurrent.futures.Future] = {}
_early_lock = threading.Lock()


def _key(local_dir: str) -> str:
  return os.path.realpath(local_dir)


def load_early(
  local_dir: str, *, signature_name: str, warm_up_size: int, trust_model: bool = False
) -> None:
  """Starts loading and warming up the session of the local export `local_dir` on a
  background thread, for `take_early`. An export `loading.loadable` refuses (its graph unless
  `trust_model`) is never loaded: the run refuses it before it would take the session."""
  future: concurrent.futures.Future = concurrent.futures.Future()
  with _early_lock:
    _early[_key(local_dir)] = future

  def load() -> None:
    try:
      devices.enable_memory_growth()  # before anything touches a GPU, as every load does
      session, meta_graph = load_session(local_dir, trust_model=trust_model)
      warm_up(session, meta_graph, signature_name, warm_up_image(warm_up_size))
      future.set_result(session)
    except BaseException as error:  # the handler loads again
      future.set_exception(error)

  threading.Thread(target=load, name="segbeam-early-session", daemon=True).start()


def take_early(local_dir: str) -> Optional[Any]:
  """The session loaded early for `local_dir` (waiting for its load), once; None if there is
  none or its load failed (the caller then loads, and reports any error, itself)."""
  with _early_lock:
    future = _early.pop(_key(local_dir), None)
  if future is None:
    return None
  try:
    return future.result()
  except Exception:
    _LOG.warning("loading the model's session early failed; loading it again", exc_info=True)
    return None


def drop_early() -> None:
  """Forgets the sessions loaded early (a run whose workers are other processes): one that is
  still loading is dropped when its load ends."""
  with _early_lock:
    _early.clear()


def load_early_for(options: Any) -> bool:
  """Starts `load_early` for a run with these options (`segbeam.options.RunOptions`, or
  anything with its `model_dir`, `handler` and `trust_model`) when they name the tfx-bsl handler and
  a local export (the embedded default model when no --model); returns whether it did. A
  session the run does not take (its runner's workers are other processes) is dropped."""
  model_dir = options.model_dir or defaults.DEFAULT_MODEL_DIR
  if options.handler != constants.HANDLER_TFX_BSL or "://" in model_dir:
    return False
  try:
    input_size = contract.read_metadata(model_dir).input_size
  except (OSError, ValueError, KeyError, TypeError):
    return False  # not an export, or unreadable: the run's own checks say so
  load_early(
    model_dir,
    signature_name=contract.SIGNATURE_NAME,
    warm_up_size=input_size,
    trust_model=options.trust_model,
  )
  return True
