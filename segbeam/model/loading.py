"""The one door every load of a SavedModel goes through: `loadable` checks the directory first.

A model file is code (`model_safety`). TensorFlow's loaders take the graph from
`saved_model.pb`, or where it is missing from `saved_model.pbtxt`; `model_safety` reads
`saved_model.pb` alone. So whatever loads an export (`export.LoadedExport`, the TF1 session
`pipeline.sessions` loads for tfx-bsl, tfx-bsl's handler itself, `segbeam export`'s SavedModel
sources) takes the directory it hands its loader from `loadable`, which refuses an export
whose only graph is a file the check never read, and one that holds such a file beside it.

Kept free of Keras and Beam: `segbeam run` loads its early session before importing either.
"""

from __future__ import annotations

import os

from segbeam.model import model_safety

# The other files TensorFlow's loaders take a SavedModel's graph from: saved_model.pbtxt where
# saved_model.pb is missing (loader_impl.parse_saved_model), and the chunked saved_model.cpb
# that newer readers know. `model_safety` checks saved_model.pb alone.
OTHER_GRAPH_FILES = ("saved_model.pbtxt", "saved_model.cpb")


def loadable(saved_model_dir: str, *, trust_model: bool = False) -> str:
  """`saved_model_dir`, checked to be loaded: the one function every load of a SavedModel
  (TF2, TF1 or tfx-bsl's loader) takes its directory from.

  Raises `model_safety.DamagedExportError` when `saved_model.pb` is missing, trusted or not:
  TensorFlow would read a saved_model.pbtxt instead, which nothing checked. Unless
  `trust_model`, raises `model_safety.UnsafeModelError` when another graph file lies beside
  it (which a loader could prefer) or its graph reaches outside the model
  (`model_safety.check_saved_model`).
  """
  pb = os.path.join(saved_model_dir, model_safety.SAVED_MODEL_FILE)
  others = [n for n in OTHER_GRAPH_FILES if os.path.lexists(os.path.join(saved_model_dir, n))]
  if not os.path.isfile(pb):
    note = (
      f" (segbeam reads only {model_safety.SAVED_MODEL_FILE}, never the {' or '.join(others)} "
      "there)"
      if others
      else ""
    )
    raise model_safety.DamagedExportError(f"model damaged: {pb} is missing{note}")
  if not trust_model and others:
    raise model_safety.UnsafeModelError(
      f"model refused: {saved_model_dir} holds {' and '.join(others)} beside "
      f"{model_safety.SAVED_MODEL_FILE}; segbeam checks only {model_safety.SAVED_MODEL_FILE}, "
      "so no loader may be given another graph file: remove it, or pass --trust-model if you "
      "trust it"
    )
  model_safety.check_saved_model(saved_model_dir, trust=trust_model)
  return saved_model_dir
