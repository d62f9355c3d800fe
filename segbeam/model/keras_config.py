"""What a Keras file's config may name, checked before Keras deserializes any of it.

A `.keras` or `.h5` model is rebuilt from its JSON config: every object in it names a module
and a class (or function) that Keras imports and calls with the config's arguments. Keras' safe
mode refuses Python lambdas, but not every callable a config can reach: an operation node of
`keras.src.ops` called with a `keras.layers` class as a "function" ran `TFSMLayer(path)`, a
SavedModel load no check saw. So, unless the user allows custom code, `check_config` walks the
whole config and allows only Keras' built-in image-model building blocks (`LAYERS`, the
initializers, regularizers and constraints below, activations by name, the model classes,
dtype policies, and the plain values Keras writes as tensors, arrays and slices); anything
else is refused, naming it and where it is. Layers that read files (`StringLookup` and the
like take a vocabulary path), load other models (`TFSMLayer`) or carry code (`Lambda`,
`JaxLayer`, `TorchModuleWrapper`) are not in the list.

Light: imports nothing but the standard library.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional


class KerasConfigError(ValueError):
  """A Keras config naming what segbeam does not load from a model file."""


def _names(text: str) -> frozenset[str]:
  return frozenset(text.split())


LAYERS = _names(
  """
  Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D
  AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add
  AdditiveAttention AlphaDropout Attention Average AveragePooling1D AveragePooling2D
  AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization CenterCrop Concatenate
  Conv1D Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose Convolution1D
  Convolution1DTranspose Convolution2D Convolution2DTranspose Convolution3D
  Convolution3DTranspose Cropping1D Cropping2D Cropping3D Dense DepthwiseConv1D DepthwiseConv2D
  Dot Dropout ELU EinsumDense Flatten GaussianDropout GaussianNoise GlobalAveragePooling1D
  GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
  GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D
  GlobalMaxPooling3D GroupNormalization GroupQueryAttention Identity InputLayer
  LayerNormalization LeakyReLU Masking MaxPool1D MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D
  MaxPooling3D Maximum Minimum MultiHeadAttention Multiply Normalization PReLU Permute
  RMSNormalization RandomBrightness RandomContrast RandomCrop RandomFlip RandomRotation
  RandomTranslation RandomZoom ReLU RepeatVector Rescaling Reshape Resizing SeparableConv1D
  SeparableConv2D SeparableConvolution1D SeparableConvolution2D Softmax SpatialDropout1D
  SpatialDropout2D SpatialDropout3D SpectralNormalization Subtract TimeDistributed
  UnitNormalization UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D
  ZeroPadding3D
  """
)
INITIALIZERS = _names(
  """
  Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer
  LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal RandomUniform
  TruncatedNormal VarianceScaling Zeros
  """
)
REGULARIZERS = _names("L1 L1L2 L2 OrthogonalRegularizer")
CONSTRAINTS = _names("MaxNorm MinMaxNorm NonNeg UnitNorm")
MODELS = _names("Functional Sequential Model")
DTYPE_POLICIES = _names("DTypePolicy FloatDTypePolicy")
ACTIVATIONS = _names(
  """
  celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh
  leaky_relu linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink
  softmax softplus softsign sparse_plus sparse_sigmoid sparsemax squareplus swish tanh
  tanh_shrink threshold
  """
)
# The classes a config may name under each module Keras writes (None: a Keras 2 .h5, which
# names classes without modules).
ALLOWED: dict[Optional[str], frozenset[str]] = {
  "keras.layers": LAYERS,
  "keras.initializers": INITIALIZERS,
  "keras.regularizers": REGULARIZERS,
  "keras.constraints": CONSTRAINTS,
  "keras": MODELS | DTYPE_POLICIES,
  "keras.models": MODELS,
  "keras.src.models.functional": _names("Functional"),
  "keras.src.models.sequential": _names("Sequential"),
  "keras.dtype_policies": DTYPE_POLICIES,
  None: LAYERS | INITIALIZERS | REGULARIZERS | CONSTRAINTS | MODELS,
}
# Keras' own encodings of plain values (serialization_lib): data, not code.
VALUES = _names("__keras_tensor__ __tensor__ __numpy__ __bytes__ __ellipsis__ __slice__")
# Functions are named by modules that hold only activations here.
FUNCTION_MODULES = frozenset({"builtins", "keras.activations"})
# Never deserialized with compile=False, as `conversion.load_keras` loads.
_SKIPPED_KEYS = frozenset({"compile_config"})


def _objects(config: Any, where: str = "") -> Iterator[tuple[str, dict]]:
  """(where, object) for every dict in `config` that names a class."""
  if isinstance(config, dict):
    if "class_name" in config:
      yield where or "/", config
    for key, value in config.items():
      if key not in _SKIPPED_KEYS:
        yield from _objects(value, f"{where}/{key}")
  elif isinstance(config, list):
    for index, value in enumerate(config):
      yield from _objects(value, f"{where}/{index}")


def _refusal(obj: dict) -> Optional[str]:
  """Why `obj` may not be deserialized, or None."""
  class_name, module = obj.get("class_name"), obj.get("module")
  registered = obj.get("registered_name")
  if not isinstance(class_name, str) or not (module is None or isinstance(module, str)):
    return "a class name or module that is not a string"
  if class_name in VALUES:
    return None if module is None else f"a value ({class_name}) given a module"
  if class_name == "function":
    name = obj.get("config")
    if module in FUNCTION_MODULES and name in ACTIVATIONS and registered in (None, "function"):
      return None
    return f"the function '{module}.{name}'"
  qualified = f"'{module}.{class_name}'" if module else f"'{class_name}'"
  if class_name not in ALLOWED.get(module, frozenset()):
    return qualified
  if registered not in (None, class_name):  # a custom object registered under another name
    return f"{qualified} registered as {registered!r}"
  return None


def check_config(config: Any, path: str) -> None:
  """Raises KerasConfigError, one line naming the first object of `config` (the model file
  `path`'s JSON config, parsed) that is not Keras' own building block, and where it is."""
  for where, obj in _objects(config):
    why = _refusal(obj)
    if why:
      raise KerasConfigError(
        f"{path}: its config names {why} (at {where}), which segbeam does not load from a model "
        "file: only Keras' built-in layers, initializers, regularizers, constraints and "
        "activations; if you trust the file, pass --allow-custom-code (with --custom-objects "
        "MODULE naming the module that defines its custom layers)"
      )
