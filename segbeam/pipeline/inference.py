"""Model handlers for Beam's RunInference over the export contract (`segbeam.model.export`).

Both handlers take encoded image bytes; `create_handler` keys them (Beam's KeyedModelHandler,
so elements are (key, bytes) -> (key, inference)):
- `SavedModelHandler` (the default): Beam's base.ModelHandler calling the signature directly;
  inference is a dict of numpy arrays, with no proto round trip. Measured 5-14% faster end to
  end than tfx-bsl's in three benchmark runs (BENCHMARKS.md).
- `TfxBslHandler`: tfx-bsl's CreateModelHandler on the SavedModel; inference is a
  PredictionLog proto.
Both load the model when Beam asks, on the worker, and read an export on a remote file system
(gs://) from a local copy made through Beam's FileSystems (`model_files`): TensorFlow's own
file systems know neither Beam's settings nor a storage emulator.
`IsolatingModelHandler` wraps the keyed handler so a batch that fails is retried one element at
a time: a bad image fails alone, with its error, and never takes its batch down.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from apache_beam.ml.inference import base

from segbeam.model import export as export_lib
from segbeam.pipeline import devices
from segbeam.pipeline import model_files
from segbeam.pipeline import records

HANDLER_TFX_BSL = "tfx-bsl"
HANDLER_SAVED_MODEL = "saved-model"
HANDLERS = (HANDLER_SAVED_MODEL, HANDLER_TFX_BSL)  # the default first
METRICS_NAMESPACE = "segbeam"
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceFailure:
  """Stands in for the inference of an element that failed on its own."""

  stage: str
  error_type: str
  message: str


_loads_lock = threading.Lock()
_loads_in_this_process = 0


def loads_in_this_process() -> int:
  """How many times this process has loaded a model. Beam loads it on the workers, so a process
  that only builds and submits a pipeline stays at 0."""
  return _loads_in_this_process


def _prepare_load(model_dir: str) -> str:
  """Before a handler loads: GPU memory on demand (several processes may share a GPU), and the
  local directory to load `model_dir` from."""
  devices.enable_memory_growth()
  return model_files.local_model_dir(model_dir)


def _log_load(model_dir: str, local_dir: str) -> None:
  global _loads_in_this_process
  with _loads_lock:
    _loads_in_this_process += 1
  copy = "" if local_dir == model_dir else f" (local copy {local_dir})"
  _LOG.info("loaded model %s%s in process %d", model_dir, copy, os.getpid())


def _batch_kwargs(min_batch_size: Optional[int], max_batch_size: int) -> dict[str, int]:
  # Fixed-size batches by default: Beam's adaptive batching starts at 1 and a model is fastest
  # at its full batch. A bundle's last batch may still be smaller.
  return {"min_batch_size": min_batch_size or max_batch_size, "max_batch_size": max_batch_size}


class _ExportHandler(base.ModelHandler):
  """What both handlers share: the export's directory, fixed batches of encoded images, and
  segbeam's metrics namespace."""

  def __init__(self, model_dir: str, *, min_batch_size: Optional[int] = None,
               max_batch_size: int = 32):
    super().__init__()
    self._model_dir = model_dir
    self._batch = _batch_kwargs(min_batch_size, max_batch_size)

  def get_num_bytes(self, batch: Sequence[bytes]) -> int:
    return sum(len(data) for data in batch)

  def batch_elements_kwargs(self) -> Mapping[str, Any]:
    return self._batch

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE


class SavedModelHandler(_ExportHandler, base.ModelHandler[bytes, Mapping[str, np.ndarray],
                                                          export_lib.LoadedExport]):
  """Runs the export's serving signature on a batch of encoded images."""

  def load_model(self) -> export_lib.LoadedExport:
    local_dir = _prepare_load(self._model_dir)
    model = export_lib.LoadedExport(local_dir)
    _log_load(self._model_dir, local_dir)
    return model

  def run_inference(self, batch: Sequence[bytes], model: export_lib.LoadedExport,
                    inference_args: Optional[dict[str, Any]] = None):
    outputs = model.predict(batch)
    return [{name: value[i] for name, value in outputs.items()} for i in range(len(batch))]


@dataclasses.dataclass(frozen=True)
class TfxBslModel:
  """A loaded tfx-bsl handler and its session (a class: Beam shares models by weak reference)."""

  handler: base.ModelHandler
  session: Any


class TfxBslHandler(_ExportHandler, base.ModelHandler[bytes, Any, TfxBslModel]):
  """tfx-bsl's handler for the export's serving_default signature, fed the raw bytes.

  tfx-bsl reads the SavedModel as soon as its handler is created, so it is created in
  `load_model`, on the worker, over the local copy, and Beam shares it between a worker's
  threads with the session it loaded.
  """

  def load_model(self) -> TfxBslModel:
    from tfx_bsl.public.beam import run_inference
    from tfx_bsl.public.proto import model_spec_pb2
    local_dir = _prepare_load(self._model_dir)
    handler = run_inference.CreateModelHandler(model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
            model_path=local_dir, signature_name=[export_lib.SIGNATURE_NAME])))
    model = TfxBslModel(handler, handler.load_model())
    _log_load(self._model_dir, local_dir)
    return model

  def run_inference(self, batch: Sequence[bytes], model: TfxBslModel,
                    inference_args: Optional[dict[str, Any]] = None):
    return model.handler.run_inference(batch, model.session, inference_args)


def create_handler(name: str, model_dir: str, *, max_batch_size: int) -> base.ModelHandler:
  if name == HANDLER_TFX_BSL:
    handler = TfxBslHandler(model_dir, max_batch_size=max_batch_size)
  elif name == HANDLER_SAVED_MODEL:
    handler = SavedModelHandler(model_dir, max_batch_size=max_batch_size)
  else:
    raise ValueError(f"unknown inference handler {name!r}; known: {', '.join(HANDLERS)}")
  return IsolatingModelHandler(base.KeyedModelHandler(handler))


def outputs_as_arrays(inference: Any) -> dict[str, np.ndarray]:
  """Either handler's inference as {output name: array without the batch dimension}."""
  if isinstance(inference, Mapping):
    return dict(inference)
  import tensorflow as tf  # A PredictionLog from tfx-bsl: its tensors are protos.
  outputs = inference.predict_log.response.outputs
  return {name: tf.make_ndarray(proto)[0] for name, proto in outputs.items()}


_GRAPH_NODE = re.compile(r"\s*\[\[.*?\]\]")
_DECODE_WORDS = ("Decode", "decode", "Jpeg", "JPEG", "image file format")


def _failure_for(error: BaseException) -> InferenceFailure:
  message = records.one_line(error)
  # The serving graph decodes before it infers: on an image that passed validation, an invalid
  # argument can only come from its decode ops (which also name themselves in the message); the
  # forward pass on a decoded, resized tensor fails only for resources (memory) or bugs.
  error_type = type(error).__name__
  is_decode = error_type == "InvalidArgumentError" or any(w in message for w in _DECODE_WORDS)
  # TensorFlow appends the failing graph node ("[[{{node map/while/.../DecodeJpeg}}]]"): noise
  # in an error row, which should say what is wrong with the image.
  shown = _GRAPH_NODE.sub("", message).strip() or message
  return InferenceFailure(records.STAGE_DECODE if is_decode else records.STAGE_INFER, error_type,
                          shown)


class IsolatingModelHandler(base.ModelHandler):
  """Delegates to `handler`; when a batch raises, runs its elements one by one and returns an
  `InferenceFailure` as the inference of each element that still fails."""

  def __init__(self, handler: base.ModelHandler):
    super().__init__()
    self._handler = handler

  def load_model(self):
    return self._handler.load_model()

  def run_inference(self, batch: Sequence[tuple[Any, bytes]], model: Any,
                    inference_args: Optional[dict[str, Any]] = None) -> Iterable:
    try:
      return list(self._handler.run_inference(batch, model, inference_args))
    except Exception as batch_error:  # pylint: disable=broad-except  # isolate, then report
      if len(batch) == 1:
        return [(batch[0][0], _failure_for(batch_error))]
      _LOG.warning("a batch of %d failed (%s); retrying its images one by one", len(batch),
                      type(batch_error).__name__)
    results = []
    for element in batch:
      try:
        results.extend(self._handler.run_inference([element], model, inference_args))
      except Exception as error:  # pylint: disable=broad-except  # this image alone is bad
        results.append((element[0], _failure_for(error)))
    return results

  def get_num_bytes(self, batch) -> int:
    return self._handler.get_num_bytes(batch)

  def batch_elements_kwargs(self) -> Mapping[str, Any]:
    return self._handler.batch_elements_kwargs()

  def get_metrics_namespace(self) -> str:
    return self._handler.get_metrics_namespace()

  def get_resource_hints(self):
    return self._handler.get_resource_hints()

  def validate_inference_args(self, inference_args):
    return self._handler.validate_inference_args(inference_args)

  def share_model_across_processes(self) -> bool:
    return self._handler.share_model_across_processes()

  def model_copies(self) -> int:
    return self._handler.model_copies()
