"""`segbeam export`: a user's own segmentation model becomes a segbeam export.

A source is a Keras 3 `.keras` file, a Keras 2 / tf.keras HDF5 `.h5`, or a SavedModel
directory. What it says of itself (input size and channels, classes, its last activation) is
read from it; what it cannot say (how its pixels were normalised and resized) the caller says
in a `config.ServingConfig`. The export is written with the same contract as `segbeam train`'s
(`export.write_archive`), so everything downstream runs it unchanged.

A model file is code. Keras files load in Keras' safe mode (a Lambda layer or an unknown
custom object is refused) unless custom code is allowed; a SavedModel's graph is checked for
ops that reach outside the model (`model_safety`) before it is loaded, and so is the export
written from any source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Callable, Mapping, Optional, Sequence

import keras
import tensorflow as tf

from segbeam import messages
from segbeam.model import config as config_lib
from segbeam.model import contract
from segbeam.model import export as export_lib
from segbeam.model import keras_config
from segbeam.model import labels as labels_lib
from segbeam.model import loading
from segbeam.model import model_safety
from segbeam.model import preprocessing

FORMAT_KERAS = "keras"
FORMAT_H5 = "h5"
FORMAT_SAVED_MODEL = "saved_model"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class ConversionError(ValueError):
  """A source that cannot become an export, with the one-line reason."""


@dataclasses.dataclass
class Source:
  """A loaded model, as the export needs it.

  Attributes:
    path: where it was read.
    format: FORMAT_KERAS, FORMAT_H5 or FORMAT_SAVED_MODEL.
    forward: float32 [B, H, W, C] model input -> the model's output tensor [B, h, w, K].
    input_shape: (H, W, C), None where the model leaves a side open.
    output_channels: K.
    activation: what the model's last operation is: softmax, sigmoid, logits, or None when it
      cannot be read.
    weights: the variables, for the content version.
    track: resources the export must track itself (a reloaded SavedModel).
    signature: the SavedModel signature used, if any.
  """

  path: str
  format: str
  forward: Callable[[tf.Tensor], tf.Tensor]
  input_shape: tuple[Optional[int], Optional[int], Optional[int]]
  output_channels: int
  activation: Optional[str]
  weights: Sequence[Any]
  track: Sequence[Any] = ()
  signature: Optional[str] = None


def source_format(path: str) -> str:
  """The format of `path` from what it is (a folder, the first bytes), not only its name."""
  if "://" in path:
    raise ConversionError(
      f"{path}: segbeam export reads a local model; copy it here first "
      "(gcloud storage cp -r SOURCE .)"
    )
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, contract.METADATA_FILE)):
      raise ConversionError(f"{path} is already a segbeam export: run it with --model")
    if not any(
      os.path.exists(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
    ):
      raise ConversionError(f"{path} is a folder without saved_model.pb: not a SavedModel")
    return FORMAT_SAVED_MODEL
  if not os.path.exists(path):
    raise ConversionError(f"{path}: no such file or folder")
  with open(path, "rb") as f:
    head = f.read(8)
  if head == _HDF5_MAGIC:
    return FORMAT_H5
  if head.startswith(b"PK"):
    return FORMAT_KERAS
  raise ConversionError(
    f"{path} is not a model: neither a .keras archive, an HDF5 .h5 file nor a SavedModel folder"
  )


def _custom_objects(module_name: Optional[str]) -> dict[str, Any]:
  """The classes and functions of the module that defines a model's custom layers, by name and
  by registered name."""
  if not module_name:
    return {}
  try:
    if module_name.endswith(".py"):  # a file, wherever it is
      spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(module_name))[0], module_name
      )
      if spec is None or not os.path.isfile(module_name):
        raise ImportError(f"no such file {module_name}")
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
    else:  # a module name, found from the current folder too (a console script's path lacks it)
      sys.path.insert(0, os.getcwd())
      try:
        module = importlib.import_module(module_name)
      finally:
        sys.path.remove(os.getcwd())
  except Exception as error:  # any failure of the user's code
    raise ConversionError(
      f"cannot import --custom-objects {module_name!r}: {messages.brief(error)}"
    ) from error
  objects = {}
  for name, value in vars(module).items():
    if inspect.isclass(value) or inspect.isfunction(value):
      objects[name] = value
      # A registered class is looked up by its registered name ('package>Name').
      objects[keras.saving.get_registered_name(value)] = value
  return objects


# What a model file may make `segbeam export` read, checked before Keras reads anything (a
# 1 MB .keras whose config.json inflated to 1 GiB took 2 GB; Keras' own guard starts at 4 GiB).
# Real models stay far below: config.json is at most a few MB, and a VGG16 U-Net's weights are
# ~100 MB with its largest tensor ~10 MB (a VGG16 classifier's largest, 25088x4096, is 400 MB).
MAX_KERAS_MEMBER_BYTES = 64 << 20  # config.json, metadata.json, assets: any member but weights
MAX_WEIGHTS_BYTES = 4 << 30  # the weights member of a .keras; all of an HDF5 file's datasets
MAX_H5_DATASET_BYTES = 1 << 30  # one weight tensor, as Keras reads it into memory
MAX_KERAS_MEMBERS = 1000  # config, metadata, weights, and a model's few assets
# Only these are read: each bounded by what it declares. bzip2 or LZMA data can inflate to GBs
# in one decompression call, and Keras writes neither.
_READ_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_WEIGHTS_SUFFIXES = (".h5", ".npz")
_KERAS_CONFIG = "config.json"
_READ_CHUNK = 1 << 20


def _size(n: int) -> str:
  if n >= 1 << 30:
    return f"{n / (1 << 30):.1f} GiB"
  return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def _over(what: str, size: int, cap: int) -> str:
  return f"{what} would be {_size(size)} ({size} bytes), over the cap of {_size(cap)}"


def _check_keras_archive(path: str) -> bytes:
  """Refuses a .keras archive that is damaged, not a model, or holds more than a model does
  (the caps above): from what its members declare first, then by reading each one, bounded,
  so a member whose header lies cannot make more either. Weights members (HDF5, .npz) are
  checked inside too (`_check_h5_file`, `_check_npz`). Returns its config.json, as read."""
  try:
    with zipfile.ZipFile(path) as archive:
      infos = archive.infolist()
      if len(infos) > MAX_KERAS_MEMBERS:
        raise ConversionError(
          f"{path} holds {len(infos)} members, over the cap of {MAX_KERAS_MEMBERS}"
        )
      total = 0
      for info in infos:
        cap = _member_cap(info.filename)
        if info.compress_type not in _READ_COMPRESSIONS:
          raise ConversionError(
            f"{path}: member {info.filename} is compressed with "
            f"{_compression_name(info.compress_type)}; segbeam reads only stored or deflated "
            "members (as Keras writes them)"
          )
        if info.file_size > cap:
          raise ConversionError(f"{path}: " + _over(f"member {info.filename}", info.file_size, cap))
        total += info.file_size
      if total > MAX_WEIGHTS_BYTES + MAX_KERAS_MEMBER_BYTES:
        cap = MAX_WEIGHTS_BYTES + MAX_KERAS_MEMBER_BYTES
        raise ConversionError(f"{path}: " + _over("its members together", total, cap))
      read = {info.filename: _read_member(path, archive, info) for info in infos}
  except (zipfile.BadZipFile, OSError, EOFError) as error:
    raise ConversionError(f"{path} is a damaged .keras archive: {messages.brief(error)}") from error
  if read.get(_KERAS_CONFIG) is None:
    raise ConversionError(f"{path} is not a .keras model: the archive has no config.json")
  return read[_KERAS_CONFIG]


def _member_cap(name: str) -> int:
  return MAX_WEIGHTS_BYTES if name.endswith(_WEIGHTS_SUFFIXES) else MAX_KERAS_MEMBER_BYTES


def _compression_name(method: int) -> str:
  names = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}
  return names.get(method, f"method {method}")


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Optional[bytes]:
  """Reads one member in chunks, never past its declared size or its cap (zipfile itself
  stops at the declared size and checks the CRC there); a weights member goes to a temporary
  file whose contents are checked in turn. Returns config.json's bytes, None for the rest."""
  cap = min(info.file_size, _member_cap(info.filename))
  weights = info.filename.endswith(_WEIGHTS_SUFFIXES)
  kept = [] if info.filename == _KERAS_CONFIG else None
  with archive.open(info) as member, tempfile.TemporaryFile() as copy:
    read = 0
    try:
      while chunk := member.read(_READ_CHUNK):
        read += len(chunk)
        if read > cap:
          raise ConversionError(
            f"{path}: member {info.filename} inflates past the {info.file_size} bytes it declares"
          )
        if weights:
          copy.write(chunk)
        elif kept is not None:
          kept.append(chunk)
    except zipfile.BadZipFile as error:
      if "CRC" in str(error):
        raise ConversionError(
          f"{path} is a damaged .keras archive: member {info.filename} fails its CRC check"
        ) from error
      raise
    if weights:
      copy.flush()
      copy.seek(0)
      where = f"{path}: {info.filename}"
      (_check_h5_file if info.filename.endswith(".h5") else _check_npz)(copy, where)
  return None if kept is None else b"".join(kept)


def _check_npz(fileobj, where: str) -> None:
  """A .npz of weights is itself a zip: its arrays are capped as an HDF5 file's datasets."""
  with zipfile.ZipFile(fileobj) as npz:
    infos = npz.infolist()
    if len(infos) > MAX_KERAS_MEMBERS * 100:
      raise ConversionError(f"{where} holds {len(infos)} arrays")
    total = 0
    for info in infos:
      if info.compress_type not in _READ_COMPRESSIONS:
        raise ConversionError(
          f"{where}: array {info.filename} is compressed with "
          f"{_compression_name(info.compress_type)}"
        )
      if info.file_size > MAX_H5_DATASET_BYTES:
        raise ConversionError(
          f"{where}: " + _over(f"array {info.filename}", info.file_size, MAX_H5_DATASET_BYTES)
        )
      total += info.file_size
    if total > MAX_WEIGHTS_BYTES:
      raise ConversionError(f"{where}: " + _over("its arrays together", total, MAX_WEIGHTS_BYTES))


def _check_h5_file(file, where: str) -> None:
  """Refuses an HDF5 file (a path or a file object) whose attributes or datasets would take
  more memory to read than the caps allow; read from their shapes and types, not their data
  (a compressed, or never-written, dataset is tiny on disk whatever its size)."""
  import h5py  # noqa: PLC0415  # Keras' own dependency

  total = 0
  with h5py.File(file, "r") as f:
    objects = [("", f)]
    f.visititems(lambda name, obj: objects.append((name, obj)))
    for name, obj in objects:
      for attribute in obj.attrs:
        _check_h5_attribute(where, f"{name}/{attribute}".lstrip("/"), obj.attrs.get_id(attribute))
      if isinstance(obj, h5py.Dataset):
        nbytes = int(obj.size or 0) * obj.dtype.itemsize
        if nbytes > MAX_H5_DATASET_BYTES:
          raise ConversionError(
            f"{where}: "
            + _over(f"dataset {name}", nbytes, MAX_H5_DATASET_BYTES).replace(
              ", over", " in memory, over"
            )
          )
        total += nbytes
  if total > MAX_WEIGHTS_BYTES:
    raise ConversionError(f"{where}: " + _over("its datasets together", total, MAX_WEIGHTS_BYTES))


def _check_h5_attribute(where: str, name: str, attribute) -> None:
  """An attribute (model_config, layer_names, ...) is read whole: its stored size is capped,
  and a variable-length one must be a single value (one vlen string can be no larger than
  the file, since attribute data is never compressed; many could each name the same one)."""
  import h5py  # noqa: PLC0415

  try:
    size = attribute.get_storage_size()
  except RuntimeError:  # HDF5 reports an empty attribute's 0 bytes as an error
    size = 0
  if size > MAX_KERAS_MEMBER_BYTES:
    raise ConversionError(f"{where}: " + _over(f"attribute {name}", size, MAX_KERAS_MEMBER_BYTES))
  vlen = h5py.check_vlen_dtype(attribute.dtype) is not None
  if vlen and attribute.get_space().get_simple_extent_npoints() > 1 and size > 16 << 10:
    raise ConversionError(f"{where}: attribute {name} holds {size // 16} variable-length values")


def _check_h5(path: str) -> Any:
  """Refuses an HDF5 file that is damaged, holds weights only, or more than the caps allow
  (`_check_h5_file`). Returns its model_config, read once the caps held."""
  import h5py  # noqa: PLC0415  # Keras' own dependency

  try:
    with h5py.File(path, "r") as f:
      if "model_config" not in f.attrs:
        raise ConversionError(
          f"{path} holds weights only (no model_config): save the whole model with "
          "model.save('model.h5'), or build the model in Python and save it as .keras"
        )
    _check_h5_file(path, path)
    with h5py.File(path, "r") as f:
      return f.attrs["model_config"]
  except (OSError, KeyError) as error:
    raise ConversionError(f"{path} is a damaged HDF5 file: {messages.brief(error)}") from error


def _parsed_config(text: Any, path: str) -> Any:
  """A model file's config (config.json, or an .h5's model_config), parsed."""
  try:
    return json.loads(text)
  except ValueError as error:
    raise ConversionError(
      f"{path}: its model config is not readable JSON: {messages.brief(error)}"
    ) from error


_UNKNOWN_OBJECT = re.compile(r"(?:Could not locate (?:class|function) |Unknown layer: )'?([\w.]+)")


def _custom_code_refusal(path: str, message: str) -> Optional[str]:
  """What custom code Keras' safe mode refused in `message`, or None for another failure."""
  if "Lambda" in message and ("safe_mode" in message or "unsafe" in message):
    what = "a Lambda layer (Python code stored in the file)"
  else:
    unknown = _UNKNOWN_OBJECT.search(message)
    if unknown is None:
      return None
    what = f"an unknown custom object {unknown.group(1)!r}"
  return (
    f"{path} holds {what}: refused, a model file is code. If you trust it, pass "
    "--allow-custom-code (with --custom-objects MODULE naming the module that defines "
    "its custom layers)"
  )


def load_keras(
  path: str,
  fmt: str,
  *,
  allow_custom_code: bool = False,
  custom_objects_module: Optional[str] = None,
) -> keras.Model:
  """A `.keras` or `.h5` model, in Keras' safe mode unless `allow_custom_code`."""
  if custom_objects_module and not allow_custom_code:
    raise ConversionError("--custom-objects runs the module's code: pass --allow-custom-code too")
  config = (_check_keras_archive if fmt == FORMAT_KERAS else _check_h5)(path)
  if not allow_custom_code:  # safe mode alone lets a config call more than layers
    try:
      keras_config.check_config(_parsed_config(config, path), path)
    except keras_config.KerasConfigError as error:
      raise ConversionError(str(error)) from error
  custom_objects = _custom_objects(custom_objects_module)
  try:
    return keras.saving.load_model(
      path, custom_objects=custom_objects or None, compile=False, safe_mode=not allow_custom_code
    )
  except Exception as error:  # Keras raises many kinds
    message = messages.one_line(error, 2000, "...", named=True)
    refusal = _custom_code_refusal(path, message)
    if refusal:
      raise ConversionError(refusal) from error
    raise ConversionError(f"{path} could not be loaded: {messages.brief(error)}") from error


def _keras_activation(model: keras.Model) -> Optional[str]:
  """The activation of the layer that produces the model's output, if it says."""
  try:
    layer = model.outputs[0]._keras_history.operation
  except (AttributeError, IndexError, TypeError):
    layer = model.layers[-1] if getattr(model, "layers", None) else None
  if isinstance(layer, keras.layers.Softmax):
    return config_lib.OUTPUT_SOFTMAX
  activation = getattr(layer, "activation", None)
  name = getattr(activation, "__name__", None)
  if name in ("softmax", "sigmoid"):
    return name
  if name == "linear":
    return config_lib.OUTPUT_LOGITS
  return None


def keras_source(path: str, fmt: str, **load_options: Any) -> Source:
  model = load_keras(path, fmt, **load_options)
  if len(model.inputs) != 1 or len(model.outputs) != 1:
    raise ConversionError(
      f"{path} has {len(model.inputs)} inputs and {len(model.outputs)} "
      "outputs; segbeam serves a model with one image input and one output"
    )
  input_shape = tuple(model.inputs[0].shape)
  output_shape = tuple(model.outputs[0].shape)
  _check_ranks(path, input_shape, output_shape)

  def forward(pixels):
    return model(pixels, training=False)

  return Source(
    path=path,
    format=fmt,
    forward=forward,
    input_shape=input_shape[1:],
    output_channels=int(output_shape[-1]),
    activation=_keras_activation(model),
    weights=model.weights,
  )


def _check_ranks(path: str, input_shape: Sequence, output_shape: Sequence) -> None:
  if len(input_shape) != 4:
    raise ConversionError(
      f"{path}: the model's input has shape {input_shape}; segbeam serves "
      "image batches [batch, height, width, channels]"
    )
  if len(output_shape) != 4 or output_shape[-1] is None:
    raise ConversionError(
      f"{path}: the model's output has shape {output_shape}; segbeam needs "
      "per-pixel scores [batch, height, width, classes]"
    )


def _image_signatures(loaded) -> dict[str, tuple[Any, str]]:
  """The signatures that take one float image batch and give a per-pixel output:
  name -> (input spec, output key)."""
  found = {}
  for name, function in loaded.signatures.items():
    _, inputs = function.structured_input_signature
    outputs = function.structured_outputs
    if len(inputs) != 1:
      continue
    (spec,) = inputs.values()
    if not spec.dtype.is_floating or spec.shape.rank != 4:
      continue
    pixel_outputs = [
      key for key, out in outputs.items() if out.dtype.is_floating and out.shape.rank == 4
    ]
    if len(pixel_outputs) == 1:
      found[name] = (spec, pixel_outputs[0])
  return found


def _graph_activation(function, output_key: str) -> Optional[str]:
  """Softmax, sigmoid or logits from the op that produces the output in the signature's
  graph, followed through Identity ops and function calls; None when it is something else."""
  graph = function.graph
  tensor = graph.get_tensor_by_name(
    function.outputs[list(function.structured_outputs).index(output_key)].name
  )
  for _ in range(64):  # a bounded walk: graphs nest calls a few levels deep
    op = tensor.op
    if op.type == "Softmax":
      return config_lib.OUTPUT_SOFTMAX
    if op.type == "Sigmoid":
      return config_lib.OUTPUT_SIGMOID
    if op.type in ("Identity", "IdentityN") and op.inputs:
      tensor = op.inputs[tensor.value_index if op.type == "IdentityN" else 0]
    elif op.type in ("StatefulPartitionedCall", "PartitionedCall"):
      inner = _called_graph(graph, op)
      if inner is None:
        return None
      graph, tensor = inner, inner.outputs[tensor.value_index]
    elif op.type in (
      "BiasAdd",
      "Conv2D",
      "Conv2DBackpropInput",
      "AddV2",
      "Add",
      "MatMul",
      "ResizeBilinear",
      "ResizeNearestNeighbor",
    ):
      return config_lib.OUTPUT_LOGITS
    else:
      return None
  return None


def _called_graph(graph, op):
  """The graph of the function a call op runs, if the graph knows it."""
  name = op.get_attr("f").name
  while graph is not None:
    function = graph._functions.get(name)
    if function is not None:
      return getattr(function, "graph", None)
    graph = getattr(graph, "outer_graph", None)
  return None


def saved_model_source(
  path: str, *, signature: Optional[str] = None, trust_model: bool = False
) -> Source:
  """A SavedModel directory's image signature, checked before it is loaded."""
  loading.loadable(path, trust_model=trust_model)
  try:
    loaded = tf.saved_model.load(path)
  except Exception as error:  # any unreadable SavedModel
    raise ConversionError(
      f"{path} could not be loaded as a SavedModel: {messages.brief(error)}"
    ) from error
  candidates = _image_signatures(loaded)
  if signature is None and "serving_default" in candidates:
    signature = "serving_default"  # what a SavedModel's users call when they name none
  if signature is None:
    if len(candidates) != 1:
      listing = ", ".join(sorted(loaded.signatures)) or "none"
      which = "none of" if not candidates else "several of"
      raise ConversionError(
        f"{path}: {which} its signatures ({listing}) map one image batch to per-pixel "
        "scores; name the one to serve with --signature"
      )
    (signature,) = candidates
  elif signature not in loaded.signatures:
    raise ConversionError(
      f"{path} has no signature {signature!r}; it has "
      f"{', '.join(sorted(loaded.signatures)) or 'none'}"
    )
  elif signature not in candidates:
    raise ConversionError(
      f"{path}: signature {signature!r} does not map one float image batch "
      "[batch, height, width, channels] to one per-pixel output"
    )
  spec, output_key = candidates[signature]
  function = loaded.signatures[signature]
  output_shape = tuple(function.structured_outputs[output_key].shape)
  input_shape = tuple(spec.shape)
  _check_ranks(path, input_shape, output_shape)
  layer = keras.layers.TFSMLayer(path, call_endpoint=signature)
  input_dtype = spec.dtype

  def forward(pixels):
    outputs = layer(tf.cast(pixels, input_dtype))
    return outputs[output_key] if isinstance(outputs, Mapping) else outputs

  return Source(
    path=path,
    format=FORMAT_SAVED_MODEL,
    forward=forward,
    input_shape=input_shape[1:],
    output_channels=int(output_shape[-1]),
    activation=_graph_activation(function, output_key),
    weights=layer.weights,
    track=(layer,),
    signature=signature,
  )


def load_source(
  path: str,
  *,
  allow_custom_code: bool = False,
  custom_objects_module: Optional[str] = None,
  signature: Optional[str] = None,
  trust_model: bool = False,
) -> Source:
  fmt = source_format(path)
  if fmt == FORMAT_SAVED_MODEL:
    return saved_model_source(path, signature=signature, trust_model=trust_model)
  if signature:
    raise ConversionError("--signature is for SavedModel folders")
  return keras_source(
    path, fmt, allow_custom_code=allow_custom_code, custom_objects_module=custom_objects_module
  )


def parse_size(text: str) -> tuple[int, int]:
  """'256' or '256x320' (height x width) -> (height, width)."""
  parts = text.lower().split("x")
  try:
    sizes = [int(part) for part in parts]
  except ValueError:
    sizes = []
  if len(sizes) == 1:
    sizes *= 2
  if len(sizes) != 2 or min(sizes) <= 0:
    raise ValueError(f"input size must be N or HEIGHTxWIDTH, got {text!r}")
  return sizes[0], sizes[1]


def serving_config_for(
  source: Source,
  *,
  preprocess: str,
  resize: str,
  output: str,
  threshold: float = 0.5,
  input_size: Optional[tuple[int, int]] = None,
) -> config_lib.ServingConfig:
  """What the source says, completed and checked against what the caller says."""
  height, width, channels = source.input_shape
  if input_size is not None:
    for side, given in zip((height, width), input_size):
      if side is not None and side != given:
        raise ConversionError(
          f"--input-size {input_size[0]}x{input_size[1]} differs from the "
          f"model's own input {height}x{width}"
        )
    height, width = input_size
  if height is None or width is None:
    raise ConversionError(
      f"{source.path}: the model takes any input size; say which its "
      "pipeline resized to with --input-size N or HEIGHTxWIDTH"
    )
  if channels not in (1, 3):
    raise ConversionError(
      f"{source.path}: the model's input has {channels} channels; segbeam "
      "decodes images to 1 (grayscale) or 3 (RGB)"
    )
  if output == config_lib.OUTPUT_AUTO:
    if source.activation is None:
      raise ConversionError(
        f"{source.path}: cannot tell what its output is from its last "
        "operation; say it with --scores softmax, logits or sigmoid"
      )
    output = source.activation
  channels_out = source.output_channels
  if channels_out == 1 and output == config_lib.OUTPUT_SOFTMAX:
    raise ConversionError(
      f"{source.path}: a softmax over one channel is always 1; say --scores sigmoid or logits"
    )
  if threshold != 0.5 and channels_out != 1:
    raise ConversionError(
      "--threshold is for a model with one sigmoid channel; this one has "
      f"{channels_out} channels (its mask is the argmax)"
    )
  try:
    return config_lib.ServingConfig(
      input_height=int(height),
      input_width=int(width),
      channels=int(channels),
      num_classes=2 if channels_out == 1 else channels_out,
      preprocess=preprocess,
      resize=resize,
      output=output,
      threshold=threshold,
      model_channels=channels_out,
    )
  except ValueError as error:
    raise ConversionError(str(error)) from error


def probabilities_function(source: Source, serving: config_lib.ServingConfig):
  """0..255 pixels at the input size -> float32 class probabilities at the input size."""

  def probabilities(pixels):
    scores = tf.cast(
      source.forward(preprocessing.normalize(pixels, serving.preprocess)), tf.float32
    )
    # A head at 1/4 or 1/8 of the input (DeepLab-style) is enlarged as the model outputs it.
    if (scores.shape[1], scores.shape[2]) != (serving.input_height, serving.input_width):
      scores = tf.image.resize(
        scores, [serving.input_height, serving.input_width], method="bilinear"
      )
    if serving.output == config_lib.OUTPUT_LOGITS:
      # One logit channel is a binary logit: its sigmoid is the foreground's probability.
      scores = tf.math.sigmoid(scores) if serving.binary_sigmoid else tf.nn.softmax(scores, axis=-1)
    if serving.binary_sigmoid:
      scores = tf.concat([1.0 - scores, scores], axis=-1)
    return scores

  return probabilities


def default_class_names(serving: config_lib.ServingConfig) -> tuple[str, ...]:
  if serving.binary_sigmoid:
    return ("background", "foreground")
  return tuple(f"class_{i}" for i in range(serving.num_classes))


def label_map_for(
  serving: config_lib.ServingConfig, class_names: Optional[Sequence[str]], spec: Optional[str]
) -> labels_lib.LabelMap:
  """The export's label map: `spec` if given, else raw value i -> class i."""
  names = tuple(class_names) if class_names else default_class_names(serving)
  if len(names) != serving.num_classes:
    raise ConversionError(
      f"--class-names gives {len(names)} names for the model's {serving.num_classes} classes"
    )
  if spec:
    return labels_lib.parse_label_map(spec, names)
  return labels_lib.LabelMap(tuple((i, i) for i in range(len(names))), names)


def _source_digest(path: str) -> str:
  """sha256 of the source's bytes (every file of a folder, in name order)."""
  digest = hashlib.sha256()
  files = (
    [path]
    if os.path.isfile(path)
    else sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  )
  for file_path in files:
    digest.update(os.path.relpath(file_path, path).encode() if file_path != path else b"")
    with open(file_path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
  return "sha256:" + digest.hexdigest()


def check_new_output(export_dir: str) -> None:
  """Refuses an --output that exists or is not local, before anything is loaded."""
  if "://" in export_dir:
    raise ConversionError(
      f"{export_dir}: segbeam export writes a local folder; copy it to the "
      "bucket afterwards (gcloud storage cp -r EXPORT gs://...)"
    )
  if os.path.lexists(export_dir):
    raise ConversionError(f"{export_dir} already exists; choose a new --output")


def export_source(
  source: Source,
  export_dir: str,
  serving: config_lib.ServingConfig,
  *,
  label_map: labels_lib.LabelMap,
  name: str,
  trust_model: bool = False,
  provenance: Optional[Mapping[str, Any]] = None,
) -> contract.ModelMetadata:
  """Writes the export of `source` to `export_dir`, which must not exist yet. It appears whole
  or not at all: written beside it under a temporary name, checked, then renamed."""
  check_new_output(export_dir)
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  partial = tempfile.mkdtemp(prefix="." + os.path.basename(export_dir) + ".partial-", dir=parent)
  try:
    export_lib.write_archive(
      partial, probabilities_function(source, serving), serving, track=source.track
    )
    # What the export would run, whatever the source was: a Keras layer can hold ops too.
    model_safety.check_saved_model(partial, trust=trust_model)
    config = {
      "architecture": contract.IMPORTED_ARCHITECTURE,
      "source_format": source.format,
      "input_size": max(serving.input_height, serving.input_width),
      "input_height": serving.input_height,
      "input_width": serving.input_width,
      "channels": serving.channels,
      "num_classes": serving.num_classes,
    }
    metadata = contract.ModelMetadata(
      name=name,
      version=export_lib.content_version(source.weights, {**config, **serving.to_dict()}),
      config=config,
      label_map=contract.as_json(label_map.to_dict()),
      training=contract.as_json(
        {
          "source": os.path.abspath(source.path),
          "source_sha256": _source_digest(source.path),
          "signature": source.signature,
          "trusted": trust_model,
          **(provenance or {}),
        }
      ),
      created=export_lib.utc_now(),
      software=export_lib.software_versions(),
      serving=serving.to_dict(),
    )
    export_lib.write_metadata(partial, metadata)
    os.rename(partial, export_dir)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  return metadata
