"""Exports written the way segbeam writes them (Keras' ExportArchive, the serving contract of
`segbeam.model.export`), whose serving function may also write a file when called (what
`segbeam.model.model_safety` must refuse), or fail inside the model for some images or all (as a
model with a bug, or a GPU whose libraries cannot start, does)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

INPUT_SIZE = 16
WRITTEN = b"written by the model"


def write_export(
  export_dir: str,
  *,
  writes_to: Optional[str] = None,
  fails_when: Optional[Callable[[Any, Any], Any]] = None,
) -> str:
  """A small export with one 1x1 convolution and the default model's classes. Returns
  `export_dir`.

  Args:
    writes_to: its serving_default also writes WRITTEN to this path at every call.
    fails_when: (heights, widths) of a batch's decoded images -> a boolean tensor per image;
      the forward pass then fails (InvalidArgumentError from CheckNumerics, after the decode)
      for any batch holding an image where it is true.
  """
  # TensorFlow and Keras only where tests need them
  import keras
  import tensorflow as tf

  from segbeam.model import contract
  from segbeam.model import defaults
  from segbeam.model import export as export_lib

  size = INPUT_SIZE
  keras.utils.set_random_seed(3)
  layer = keras.layers.Conv2D(3, 1)
  layer.build((None, size, size, 3))

  def decode(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tf.shape(image)
    return tf.image.resize(tf.cast(image, tf.float32), (size, size)), shape[0], shape[1]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.INPUT_KEY)])
  def serve(images):
    pixels, heights, widths = tf.map_fn(
      decode,
      images,
      fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32), tf.int32, tf.int32),
    )
    probabilities = tf.nn.softmax(layer(pixels / 255.0), axis=-1)
    if fails_when is not None:
      poison = tf.where(fails_when(heights, widths), float("inf"), 0.0)
      checked = tf.debugging.check_numerics(poison, "the model's forward pass failed")
      probabilities = probabilities + tf.reduce_sum(checked) * 0.0
    if writes_to is not None:
      with tf.control_dependencies([tf.io.write_file(writes_to, WRITTEN)]):
        probabilities = tf.identity(probabilities)
    return {
      contract.OUTPUT_PROBABILITIES: probabilities,
      contract.OUTPUT_HEIGHT: heights,
      contract.OUTPUT_WIDTH: widths,
    }

  archive = keras.export.ExportArchive()
  archive.add_endpoint(contract.SIGNATURE_NAME, serve)
  archive.write_out(export_dir, verbose=False)
  base = contract.read_metadata(defaults.default_model_dir())
  export_lib.write_metadata(
    export_dir,
    dataclasses.replace(
      base,
      name="writes-files" if writes_to else "fails" if fails_when else "harmless",
      config={**base.config, "input_size": size},
    ),
  )
  return export_dir
