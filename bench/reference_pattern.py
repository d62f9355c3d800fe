"""Beam's reference image-segmentation pattern, as its examples write it, for comparison.

PIL decode + resize per element, TFModelHandlerTensor on a .keras file, numpy argmax and a PNG
per element (resized back to the original size with nearest neighbour), WriteToParquet. The
.keras model has the export's architecture; its weights do not matter for timing.

Batching: `--batching beam-default` leaves it to RunInference, as Beam's examples do
(apache_beam/examples/inference/tensorflow_imagenet_segmentation.py passes no batch sizes, so
BatchElements grows batches adaptively); `--batching fixed` pins every batch to --batch-size,
a tuning the examples do not show.

  python bench/reference_pattern.py --model EXPORT --input 'DIR/*' --output DIR
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.ml.inference.base import KeyedModelHandler
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

SCHEMA = pa.schema(
  [
    ("image_id", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("mask_png", pa.binary()),
  ]
)


def read_and_resize(readable, size: int):
  import tensorflow as tf

  image = Image.open(io.BytesIO(readable.read())).convert("RGB")
  resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)
  return (readable.metadata.path, image.width, image.height), tf.convert_to_tensor(resized)


def to_row(element):
  (path, width, height), result = element
  mask = np.argmax(np.asarray(result.inference), axis=-1).astype(np.uint8)
  mask_image = Image.fromarray(mask, "L").resize((width, height), Image.Resampling.NEAREST)
  buffer = io.BytesIO()
  mask_image.save(buffer, format="PNG")
  return {
    "image_id": os.path.basename(path),
    "width": width,
    "height": height,
    "mask_png": buffer.getvalue(),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", required=True)
  parser.add_argument(
    "--keras", default=None, help="a .keras network to run (default: the export's architecture)"
  )
  parser.add_argument("--input", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--batching", choices=("beam-default", "fixed"), default="beam-default")
  parser.add_argument("--batch-size", type=int, default=32, help="with --batching fixed")
  args, beam_args = parser.parse_known_args(argv)
  import keras

  from segbeam.model import contract  # layers: registers the custom layers
  from segbeam.model import layers  # layers: registers the custom layers
  from segbeam.model import unet  # layers: registers the custom layers

  del layers
  metadata = contract.read_metadata(args.model)
  keras_path = args.keras
  if keras_path is None:
    keras_path = os.path.join(tempfile.mkdtemp(), "model.keras")
    unet.build_unet(metadata.unet_config).save(keras_path)
  if args.batching == "fixed":
    batch_sizes = {"min_batch_size": args.batch_size, "max_batch_size": args.batch_size}
  else:
    batch_sizes = {}
  handler = KeyedModelHandler(TFModelHandlerTensor(keras_path, **batch_sizes))
  options = PipelineOptions([*beam_args, "--runner=FnApiRunner"])
  with beam.Pipeline(options=options) as p:
    _ = (
      p
      | fileio.MatchFiles(args.input)
      | fileio.ReadMatches()
      | beam.Map(read_and_resize, metadata.input_size)
      | RunInference(handler)
      | beam.Map(to_row)
      | beam.io.WriteToParquet(
        os.path.join(args.output, "part"), SCHEMA, file_name_suffix=".parquet"
      )
    )
  del keras
  return 0


if __name__ == "__main__":
  sys.exit(main())
