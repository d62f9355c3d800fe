"""`keras_config`: a Keras file's config may name only Keras' own building blocks."""

import copy

import keras
import pytest

from segbeam.model import keras_config


def _config(*layers):
  inputs = keras.Input((8, 8, 3))
  x = inputs
  for layer in layers:
    x = layer(x)
  return keras.saving.serialize_keras_object(keras.Model(inputs, x))


def test_an_image_model_with_the_usual_blocks_passes():
  config = _config(
    keras.layers.Rescaling(1 / 255.0),
    keras.layers.Conv2D(
      4,
      3,
      padding="same",
      activation="gelu",
      kernel_regularizer=keras.regularizers.L2(0.1),
      kernel_constraint=keras.constraints.NonNeg(),
      kernel_initializer=keras.initializers.HeNormal(),
      dtype="mixed_float16",
    ),
    keras.layers.BatchNormalization(),
    keras.layers.Activation(keras.activations.relu6),
    keras.layers.SeparableConv2D(4, 3, padding="same"),
    keras.layers.Dropout(0.1),
    keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same"),
    keras.layers.UpSampling2D(interpolation="bilinear"),
  )
  config["compile_config"] = {"optimizer": {"module": "keras.optimizers", "class_name": "Adam"}}
  keras_config.check_config(config, "model.keras")


def _switch_calling(target: dict) -> dict:
  """An operation node whose argument is a 'function' the config names: safe mode let
  `{"module": "keras.layers", "class_name": "function", "config": "TFSMLayer"}` through, and
  Switch called it with a path (red-teamed)."""
  return {
    "module": "keras.src.ops.core",
    "class_name": "Switch",
    "config": {"name": "sw"},
    "registered_name": None,
    "name": "sw",
    "inbound_nodes": [{"args": [0, [target], "/some/saved_model"], "kwargs": {}}],
  }


TFSM_FUNCTION = {"module": "keras.layers", "class_name": "function", "config": "TFSMLayer"}


@pytest.mark.parametrize(
  "planted, named",
  [
    (_switch_calling(TFSM_FUNCTION), "keras.src.ops.core.Switch"),
    (TFSM_FUNCTION, "the function 'keras.layers.TFSMLayer'"),
    ({"module": "keras.layers", "class_name": "TFSMLayer", "config": {}}, "TFSMLayer"),
    ({"module": "keras.layers", "class_name": "Lambda", "config": {}}, "keras.layers.Lambda"),
    (
      {"module": "keras.layers", "class_name": "StringLookup", "config": {"vocabulary": "/x"}},
      "keras.layers.StringLookup",
    ),
    ({"class_name": "__lambda__", "config": {"value": "..."}}, "__lambda__"),
    ({"module": "builtins", "class_name": "function", "config": "eval"}, "builtins.eval"),
    ({"module": "os", "class_name": "system", "config": {}}, "os.system"),
    (
      {"module": "keras.layers", "class_name": "Dense", "registered_name": "pkg>Mine"},
      "registered as 'pkg>Mine'",
    ),
    ({"class_name": "TFOpLambda", "config": {}}, "TFOpLambda"),  # a Keras 2 .h5's
  ],
)
def test_anything_else_is_refused_naming_it_and_where(planted, named):
  config = _config(keras.layers.Conv2D(3, 1))
  config["config"]["layers"].insert(1, copy.deepcopy(planted))
  with pytest.raises(keras_config.KerasConfigError) as refused:
    keras_config.check_config(config, "m.keras")
  message = str(refused.value)
  assert message.startswith("m.keras: its config names ") and named in message
  assert "(at /config/layers/1" in message and len(message.splitlines()) == 1


def test_every_allowed_name_is_one_keras_has():
  for module, names in [
    (keras.layers, keras_config.LAYERS),
    (keras.initializers, keras_config.INITIALIZERS),
    (keras.regularizers, keras_config.REGULARIZERS),
    (keras.constraints, keras_config.CONSTRAINTS),
    (keras.activations, keras_config.ACTIVATIONS),
  ]:
    assert sorted(n for n in names if not hasattr(module, n)) == [], module.__name__
  assert {"TFSMLayer", "Lambda", "StringLookup", "TextVectorization"}.isdisjoint(
    keras_config.LAYERS
  )
