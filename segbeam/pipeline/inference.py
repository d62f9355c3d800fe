"""Model handlers for Beam's RunInference over the export contract (`segbeam.model.contract`).

Both handlers take encoded image bytes; `create_handler` keys them (Beam's KeyedModelHandler,
so elements are (key, bytes) -> (key, inference)):
- `TfxBslHandler` (the default): tfx-bsl's CreateModelHandler on the SavedModel; inference is
  a PredictionLog proto. It takes the session `sessions.load_early` loaded, if any.
- `SavedModelHandler`: Beam's base.ModelHandler calling the signature directly; inference is a
  dict of numpy arrays, with no proto round trip (the two compare in BENCHMARKS.md).
Both load the model when Beam asks, on the worker, and read an export on a remote file system
(gs://) from a local copy made through Beam's FileSystems (`model_files`): TensorFlow's own
file systems know neither Beam's settings nor a storage emulator.
Both run a small built-in probe image through the model as they load it: a model or a device
that fails on every image (a GPU whose CUDA or cuDNN cannot start, say) fails the load with its
real error, before any image is read for nothing.
`IsolatingModelHandler` wraps the keyed handler so a batch that fails is retried one element at
a time: a bad image fails alone, with its error, and never takes its batch down; while its
breaker (`options_lib.BreakerLimits`) stops the run where images fail in the model, each alone
too, batch after batch: a failure every image shares is not an image's failure. It can also cut
each batch into slices inferred at the same time: one TensorFlow call leaves cores idle between
and inside its ops, and concurrent calls fill them. With `overlap` it returns at once, each
inference a `PendingInference`, so the bundle thread reads and validates the next batch while
TensorFlow infers this one; `rows.MakeRows` resolves them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import operator
import os
import re
import threading
import uuid
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference import base
from tfx_bsl.public.beam import run_inference
from tfx_bsl.public.proto import model_spec_pb2

from segbeam import constants
from segbeam import messages
from segbeam import options as options_lib
from segbeam.model import contract
from segbeam.model import export as export_lib
from segbeam.model import loading
from segbeam.model import preprocessing
from segbeam.pipeline import devices
from segbeam.pipeline import elements
from segbeam.pipeline import model_files
from segbeam.pipeline import sessions

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


def _prepare_load(model_dir: str, *, trust_model: bool = False) -> str:
  """Before a handler loads: GPU memory on demand (several processes may share a GPU), and the
  local directory to load `model_dir` from, checked again (`loading.loadable`): a worker may
  load an export the submitting machine never saw (a dry run's, or one replaced since). A
  damaged one is refused here too: TensorFlow's own load would read a saved_model.pbtxt where
  saved_model.pb is missing, unchecked."""
  devices.enable_memory_growth()
  return loading.loadable(model_files.local_model_dir(model_dir), trust_model=trust_model)


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

  def __init__(
    self,
    model_dir: str,
    *,
    min_batch_size: Optional[int] = None,
    max_batch_size: int = 32,
    trust_model: bool = False,
    require_gpu: bool = False,
  ):
    super().__init__()
    self._model_dir = model_dir
    self._batch = _batch_kwargs(min_batch_size, max_batch_size)
    self._trust_model = trust_model
    self._require_gpu = require_gpu

  def _prepare_load(self) -> str:
    return _prepare_load(self._model_dir, trust_model=self._trust_model)

  def load_model(self):
    """Loads the model; first the devices logged once, and a GPU required when the job
    attached one; then runs the probe image through it (`probe`)."""
    devices.describe_once()
    if self._require_gpu:
      devices.require_gpu()
    model = self._load()
    probe(self, model)
    return model

  def _load(self):
    raise NotImplementedError

  def get_num_bytes(self, batch: Sequence[bytes]) -> int:
    return sum(len(data) for data in batch)

  def probe_element(self) -> Any:
    """What `probe` runs through the model as it loads: an element every image's model takes."""
    return probe_image()

  def batch_elements_kwargs(self) -> Mapping[str, Any]:
    return self._batch

  def get_metrics_namespace(self) -> str:
    return constants.METRICS_NAMESPACE


class SavedModelHandler(
  _ExportHandler, base.ModelHandler[bytes, Mapping[str, np.ndarray], export_lib.LoadedExport]
):
  """Runs the export's serving signature on a batch of encoded images."""

  def _load(self) -> export_lib.LoadedExport:
    local_dir = self._prepare_load()
    model = export_lib.LoadedExport(local_dir, trust_model=self._trust_model)
    _log_load(self._model_dir, local_dir)
    return model

  def run_inference(
    self,
    batch: Sequence[bytes],
    model: export_lib.LoadedExport,
    inference_args: Optional[dict[str, Any]] = None,
  ):
    outputs = model.predict(batch)
    return [{name: value[i] for name, value in outputs.items()} for i in range(len(batch))]


class TileHandler(
  _ExportHandler, base.ModelHandler[np.ndarray, np.ndarray, export_lib.LoadedExport]
):
  """Runs the export's `predict_pixels` signature on a batch of tiles (uint8 [tile, tile,
  channels], `segbeam.pipeline.tiled`); each inference is the tile's probabilities [tile,
  tile, classes].

  Args:
    tile: the tiles' side, checked against the signature as the model loads.
    channels: the model's input channels.
  """

  def __init__(self, model_dir: str, *, tile: int, channels: int, **kwargs):
    super().__init__(model_dir, **kwargs)
    self._tile = tile
    self._channels = channels

  def _load(self) -> export_lib.LoadedExport:
    local_dir = self._prepare_load()
    model = export_lib.LoadedExport(local_dir, trust_model=self._trust_model)
    _, height, width, _ = model.pixels_shape()
    if height not in (None, self._tile) or width not in (None, self._tile):
      # The metadata said otherwise when the pipeline was built: the export was replaced.
      raise elements.ModelFailureError(
        f"the model's {contract.PIXELS_SIGNATURE_NAME} signature takes {height}x{width} "
        f"pixels, not tiles of {self._tile}x{self._tile}"
      )
    _log_load(self._model_dir, local_dir)
    return model

  def probe_element(self) -> np.ndarray:
    return np.full((self._tile, self._tile, self._channels), 128, np.uint8)

  def run_inference(
    self,
    batch: Sequence[np.ndarray],
    model: export_lib.LoadedExport,
    inference_args: Optional[dict[str, Any]] = None,
  ):
    return list(model.predict_pixels(np.stack(batch).astype(np.float32)))

  def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
    return sum(tile.nbytes for tile in batch)


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

  def _load(self) -> TfxBslModel:
    local_dir = self._prepare_load()
    handler = run_inference.CreateModelHandler(
      model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(
          model_path=local_dir, signature_name=[contract.SIGNATURE_NAME]
        )
      )
    )
    # The session tfx-bsl's handler runs in, loaded as its load_model loads it but with
    # segbeam's session options (tfx-bsl's public API takes none), or loaded early by
    # `segbeam run` while Beam was imported (`sessions`).
    session = sessions.take_early(local_dir)
    if session is None:
      session, _ = sessions.load_session(local_dir, trust_model=self._trust_model)
    model = TfxBslModel(handler, session)
    _log_load(self._model_dir, local_dir)
    return model

  def run_inference(
    self,
    batch: Sequence[bytes],
    model: TfxBslModel,
    inference_args: Optional[dict[str, Any]] = None,
  ):
    return model.handler.run_inference(batch, model.session, inference_args)


PROBE_SIZE = 32


def probe_image() -> bytes:
  """A small PNG every model must segment: a colour gradient, PROBE_SIZE pixels a side."""
  ramp = np.linspace(0, 255, PROBE_SIZE, dtype=np.uint8)
  pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=-1)
  return tf.io.encode_png(pixels.astype(np.uint8)).numpy()


def probe(handler: _ExportHandler, model: Any) -> None:
  """Runs the handler's `probe_element` through `model`; raises
  `elements.ModelFailureError` with the real error (the driver, CUDA, cuDNN, memory) where it
  fails: then every image would."""
  try:
    outputs = list(handler.run_inference([handler.probe_element()], model))
  except Exception as error:  # any failure on a good image is the model's or the device's
    raise elements.ModelFailureError(
      f"the model fails on a built-in probe image at load, so it would fail on every image: "
      f"{type(error).__name__}: {shown(messages.one_line(error))}"
    ) from error
  if len(outputs) != 1:
    raise elements.ModelFailureError(
      f"the model gave {len(outputs)} outputs for the 1 probe image it was given at load"
    )


def _export_handler(
  name: str,
  model_dir: str,
  *,
  max_batch_size: int = 32,
  trust_model: bool = False,
  require_gpu: bool = False,
) -> _ExportHandler:
  options = dict(max_batch_size=max_batch_size, trust_model=trust_model, require_gpu=require_gpu)
  if name == constants.HANDLER_TFX_BSL:
    return TfxBslHandler(model_dir, **options)
  if name == constants.HANDLER_SAVED_MODEL:
    return SavedModelHandler(model_dir, **options)
  raise ValueError(f"unknown inference handler {name!r}; known: {', '.join(constants.HANDLERS)}")


def create_handler(
  name: str,
  model_dir: str,
  *,
  max_batch_size: int,
  slices: int = 1,
  overlap: bool = False,
  trust_model: bool = False,
  require_gpu: bool = False,
  breaker: Optional[options_lib.BreakerLimits] = None,
  tile: Optional[tuple[int, int]] = None,
) -> base.ModelHandler:
  """The keyed, isolating handler `name` over the export in `model_dir` (see
  `IsolatingModelHandler` for `slices`, `overlap` and `breaker`; `trust_model`: load it
  whatever ops its graph holds; `require_gpu`: fail the load where TensorFlow sees no GPU);
  with `tile` (side, channels), a `TileHandler` whatever `name` says, over keys whose `image`
  says the image of their tile (the breaker counts images, not tiles)."""
  options = dict(max_batch_size=max_batch_size, trust_model=trust_model, require_gpu=require_gpu)
  if tile is None:
    handler, image_of = _export_handler(name, model_dir, **options), None
  else:
    handler = TileHandler(model_dir, tile=tile[0], channels=tile[1], **options)
    image_of = operator.attrgetter("image")
  return IsolatingModelHandler(
    base.KeyedModelHandler(handler),
    slices=slices,
    overlap=overlap,
    breaker=breaker,
    image_of=image_of,
  )


def outputs_as_arrays(inference: Any) -> dict[str, np.ndarray]:
  """Either handler's inference as {output name: array without the batch dimension}."""
  if isinstance(inference, Mapping):
    return dict(inference)
  # A PredictionLog from tfx-bsl: its tensors are protos.
  outputs = inference.predict_log.response.outputs
  return {name: tf.make_ndarray(proto)[0] for name, proto in outputs.items()}


# TensorFlow's names of the failing graph node ("[[{{node map/while/.../DecodeJpeg}}]]"), the
# function and device of an eager op ("{{function_node __wrapped__DecodeImage_device_/job:...}}")
# and the op ("[Op:DecodeImage]"): noise in an error row, and different on every worker.
_GRAPH_NODE = re.compile(r"\s*(\[\[.*?\]\]|\{\{function_node [^}]*\}\}|\[Op:\w+\])")
# Errors of the device or its resources, never of an image's bytes.
_DEVICE_ERRORS = frozenset(
  {"MemoryError", "ResourceExhaustedError", "InternalError", "UnavailableError", "AbortedError"}
)


def shown(message: str) -> str:
  """A TensorFlow error's message as an error row shows it: without its graph node, function,
  device or op names (`_GRAPH_NODE`), which say nothing about the image."""
  return _GRAPH_NODE.sub("", message).strip() or message


def _decodes(data: Any) -> bool:
  """Whether `data` decodes as an image in every way the serving graph may decode it: a JPEG
  at each DCT scale (`preprocessing.decode_for_size` picks one by the model's input size, and
  a damaged JPEG can fail at some only), anything else whole."""
  if not isinstance(data, bytes):
    return False
  encoded = tf.constant(data)
  try:
    if tf.io.is_jpeg(encoded):
      for ratio in preprocessing.JPEG_SCALES:
        tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
    else:
      preprocessing.decode_image(encoded, channels=3)
    return True
  except Exception:  # noqa: BLE001  # whatever the decoder raises, it does not decode
    return False


def _failure_for(error: BaseException, data: Any) -> InferenceFailure:
  """The failure of one image, `data` its encoded bytes: `decode` where they do not decode
  (the serving graph decodes first), `infer` where they do and the model fails on them. Only
  the bytes say which: a model's own checks raise InvalidArgumentError as a decode op does, and
  its error messages and node names are the model's to choose."""
  error_type = type(error).__name__
  message = messages.one_line(error)
  # A tile (an array) was decoded before it was cut.
  is_decode = error_type not in _DEVICE_ERRORS and isinstance(data, bytes) and not _decodes(data)
  return InferenceFailure(
    elements.STAGE_DECODE if is_decode else elements.STAGE_INFER, error_type, shown(message)
  )


# A batch smaller than this counts as this many images towards --breaker-batches: a few images
# failing in a row are weak evidence against the model, whatever the batch size.
MIN_BREAKER_BATCH = 8


class _Breaker:
  """One process's count of a handler's images failing in the model (`options_lib.BreakerLimits`);
  shared by the process's threads."""

  # Images of tiles already counted as failed, most recent last (`record`'s `image_of`).
  FAILED_IMAGES_KEPT = 4096

  def __init__(self, limits: options_lib.BreakerLimits, batch_size: int):
    self._limits = limits
    self._in_a_row_limit = limits.batches * max(batch_size, MIN_BREAKER_BATCH)
    self._lock = threading.Lock()
    self._failed_images: collections.OrderedDict = collections.OrderedDict()
    self._inferred = 0
    self._failed_in_first = 0
    self._in_a_row = 0
    self._failed = 0
    self._tripped: Optional[str] = None

  def record(
    self, results: Sequence[tuple[Any, Any]], image_of: Optional[Callable[[Any], Any]] = None
  ) -> None:
    """Counts one isolated call's (key, inference or InferenceFailure) results; raises
    ModelFailureError once the limits are passed (and at every call after).

    Args:
      image_of: for keys that are tiles, the image a key's tile belongs to: then each image
        counts once, failed where a tile of it failed, and an image already counted as failed
        is not counted again (its tiles span calls): one image's many tiles are not many
        images' evidence against the model.
    """
    limits = self._limits
    with self._lock:
      if image_of is not None:
        results = self._per_image(results, image_of)
      failures = [r for _, r in results if isinstance(r, InferenceFailure)]
      in_model = [f for f in failures if f.stage == elements.STAGE_INFER]
      if self._tripped is None and results:
        self._failed_in_first += max(0, min(len(in_model), limits.first_images - self._inferred))
        self._inferred += len(results)
        self._failed += len(in_model)
        if len(failures) < len(results):  # an image was inferred: not every image fails
          self._in_a_row = 0
        else:
          self._in_a_row += len(in_model)
        if limits.batches and self._in_a_row >= self._in_a_row_limit:
          self._tripped = (
            f"{self._in_a_row} images in a row failed in the model, each alone too "
            f"(--breaker-batches {limits.batches}: {self._in_a_row_limit} images)"
          )
        elif self._failed_in_first > limits.share * limits.first_images:
          self._tripped = (
            f"{self._failed_in_first} of the first {limits.first_images} images failed in the "
            f"model, each alone too (--breaker-share {limits.share:g})"
          )
        if self._tripped is not None:
          self._tripped = (
            f"{self._tripped}; {self._failed} images failed so, as this one: "
            f"{_most_common(in_model)}. A failure every image shares is the model's or the "
            "device's (driver, CUDA, cuDNN, memory), not the images'"
          )
      if self._tripped is not None:
        raise elements.ModelFailureError(self._tripped)

  def _per_image(self, results, image_of) -> list[tuple[Any, Any]]:
    """One result per image among tiles' `results`: its first failure, else its first result;
    images counted as failed before left out. Called under the lock."""
    by_image: dict[Any, tuple[Any, Any]] = {}
    for key, result in results:
      image = image_of(key)
      if image not in by_image or (
        isinstance(result, InferenceFailure)
        and not isinstance(by_image[image][1], InferenceFailure)
      ):
        by_image[image] = (key, result)
    kept = []
    for image, (key, result) in by_image.items():
      if image in self._failed_images:
        continue
      if isinstance(result, InferenceFailure):
        self._failed_images[image] = None
        if len(self._failed_images) > self.FAILED_IMAGES_KEPT:
          self._failed_images.popitem(last=False)
      kept.append((key, result))
    return kept


def _most_common(failures: Sequence[InferenceFailure]) -> str:
  """'ErrorType: message' of the most common error type among `failures`."""
  most_common = collections.Counter(f.error_type for f in failures).most_common(1)[0][0]
  failure = next(f for f in failures if f.error_type == most_common)
  return f"{failure.error_type}: {failure.message}"


_breakers_lock = threading.Lock()
_breakers: dict[str, _Breaker] = {}


def _breaker(token: str, limits: options_lib.BreakerLimits, batch_size: int) -> _Breaker:
  with _breakers_lock:
    if token not in _breakers:
      _breakers[token] = _Breaker(limits, batch_size)
    return _breakers[token]


class PendingInference:
  """The inference of one element whose slice is still being inferred on a slice thread.

  `result()` waits for it: the element's inference, or its `InferenceFailure`. Whoever
  consumes these bounds how many are pending (`MakeRows` keeps at most two batches), since
  each holds its slice's inputs and outputs. Pickled (should a runner ever encode one), it waits
  and is written as its result.
  """

  __slots__ = ("_slice", "_index")

  def __init__(self, slice_results: concurrent.futures.Future, index: int):
    self._slice = slice_results
    self._index = index

  def result(self) -> Any:
    _, inference = self._slice.result()[self._index]
    return inference

  def __reduce__(self):
    return _unchanged, (self.result(),)


def _unchanged(value: Any) -> Any:
  return value


def resolve(inference_result: Any) -> Any:
  """An inference as the handler produced it, waiting for it if it is still pending."""
  if isinstance(inference_result, PendingInference):
    return inference_result.result()
  return inference_result


_slice_pools = threading.local()


def _slice_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
  """The calling thread's own pool of `workers` slice threads: a worker process runs several
  harness threads (12 on Dataflow), and a pool shared by all of them would queue their slices
  behind each other."""
  if not hasattr(_slice_pools, "by_count"):
    _slice_pools.by_count = {}
  if workers not in _slice_pools.by_count:
    _slice_pools.by_count[workers] = concurrent.futures.ThreadPoolExecutor(
      workers, thread_name_prefix="segbeam-slice"
    )
  return _slice_pools.by_count[workers]


def slice_bounds(size: int, slices: int) -> list[tuple[int, int]]:
  """[start, end) of at most `slices` contiguous, non-empty slices of a batch, as even as can be."""
  slices = max(1, min(slices, size))
  edges = [size * i // slices for i in range(slices + 1)]
  return list(zip(edges[:-1], edges[1:]))


class IsolatingModelHandler(base.ModelHandler):
  """Delegates to `handler`; when a batch raises, runs its elements one by one and returns an
  `InferenceFailure` as the inference of each element that still fails.

  With `slices` > 1 a batch is cut into that many slices inferred at the same time on the
  calling thread's slice threads, each isolated on its own; results keep the batch's order.
  With `overlap` the call returns as soon as the slices are handed over, each result's
  inference a `PendingInference`: the caller prepares the next batch while this one is
  inferred (the slice threads take batches in the order they came).
  The breaker counts each slice's call in this process (`options_lib.BreakerLimits`, its defaults
  where `breaker` is None) and raises `elements.ModelFailureError` once they are passed; with
  `image_of` (key -> the image of its tile), it counts images, not tiles (`_Breaker.record`).
  """

  def __init__(
    self,
    handler: base.ModelHandler,
    *,
    slices: int = 1,
    overlap: bool = False,
    breaker: Optional[options_lib.BreakerLimits] = None,
    image_of: Optional[Callable[[Any], Any]] = None,
  ):
    super().__init__()
    if slices < 1:
      raise ValueError(f"slices must be at least 1, got {slices}")
    self._handler = handler
    self._slices = slices
    self._overlap = overlap
    self._breaker_limits = breaker or options_lib.BreakerLimits()
    self._image_of = image_of
    self._batch_size = handler.batch_elements_kwargs().get("max_batch_size", 1)
    # Names this handler's breaker in each process it is unpickled in: one count per run.
    self._breaker_token = uuid.uuid4().hex

  def load_model(self):
    return self._handler.load_model()

  def run_inference(
    self,
    batch: Sequence[tuple[Any, bytes]],
    model: Any,
    inference_args: Optional[dict[str, Any]] = None,
  ) -> Iterable:
    bounds = slice_bounds(len(batch), self._slices)
    if len(bounds) == 1 and not self._overlap:
      return self._run_isolated(batch, model, inference_args)
    pending = self._submit(batch, bounds, model, inference_args)
    if self._overlap:
      return pending
    return [(key, pending_inference.result()) for key, pending_inference in pending]

  def _submit(
    self,
    batch: Sequence[tuple[Any, bytes]],
    bounds: Sequence[tuple[int, int]],
    model: Any,
    inference_args: Optional[dict[str, Any]],
  ) -> list:
    pool = _slice_pool(self._slices)
    pending = []
    for start, end in bounds:
      slice_results = pool.submit(self._run_isolated, batch[start:end], model, inference_args)
      pending.extend(
        (batch[i][0], PendingInference(slice_results, i - start)) for i in range(start, end)
      )
    return pending

  def _run_isolated(
    self, batch: Sequence[tuple[Any, bytes]], model: Any, inference_args: Optional[dict[str, Any]]
  ) -> list:
    breaker = _breaker(self._breaker_token, self._breaker_limits, self._batch_size)
    try:
      results = list(self._handler.run_inference(batch, model, inference_args))
    except Exception as batch_error:  # isolate, then report
      if len(batch) == 1:
        results = [(batch[0][0], _failure_for(batch_error, batch[0][1]))]
      else:
        _LOG.warning(
          "a batch of %d failed (%s); retrying its images one by one",
          len(batch),
          type(batch_error).__name__,
        )
        results = []
        for element in batch:
          try:
            results.extend(self._handler.run_inference([element], model, inference_args))
          except Exception as error:  # this image alone is bad
            results.append((element[0], _failure_for(error, element[1])))
    breaker.record(results, self._image_of)
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
