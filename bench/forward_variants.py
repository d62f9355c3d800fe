"""The model's forward pass per batch size, with and without XLA and mixed precision.

For the GPU path (issue 5): img/s of the tutorial U-Net (or --architecture) on random 128x128
batches already on the device, for every combination of --batch-sizes, XLA (tf.function
jit_compile) and precision (float32, or Keras' mixed policy: float16 on a GPU, bfloat16 on a
CPU). Weights are random: they do not change the time. It runs on a CPU as well, which is how
it was checked here; the GPU figures it is for are still to be taken.

  python bench/forward_variants.py [--batch-sizes 32,64,128,256] [--seconds 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time


def images_per_second(forward, batch, seconds: float) -> float:
  forward(batch).numpy()  # tracing, XLA compilation, autotuning
  forward(batch).numpy()
  done, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    forward(batch).numpy()  # .numpy() waits for the device, as a pipeline must
    done += int(batch.shape[0])
  return done / (time.perf_counter() - start)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--architecture", default="mobilenetv2")
  parser.add_argument("--batch-sizes", default="32,64,128,256")
  parser.add_argument("--seconds", type=float, default=10.0, help="timed per combination")
  parser.add_argument("--xla", default="off,on")
  parser.add_argument("--precision", default="float32,mixed")
  args = parser.parse_args(argv)
  import keras
  import numpy as np
  import tensorflow as tf

  from segbeam.model import config as config_lib
  from segbeam.model import unet

  gpus = tf.config.list_physical_devices("GPU")
  for gpu in gpus:
    tf.config.experimental.set_memory_growth(gpu, True)
  mixed_policy = "mixed_float16" if gpus else "mixed_bfloat16"
  config = config_lib.preset(args.architecture)
  results = []
  print(
    f"device: {'GPU ' + gpus[0].name if gpus else 'CPU'}; model {args.architecture} at "
    f"{config.input_size}x{config.input_size}",
    flush=True,
  )
  for precision, xla in itertools.product(args.precision.split(","), args.xla.split(",")):
    keras.mixed_precision.set_global_policy(mixed_policy if precision == "mixed" else "float32")
    model = unet.build_unet(config)

    def forward(pixels, model=model):
      return tf.cast(model(pixels, training=False), tf.float32)

    compiled = tf.function(forward, jit_compile=(xla == "on"))
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
      pixels = tf.constant(
        np.random.default_rng(0)
        .uniform(0, 255, (batch_size, config.input_size, config.input_size, config.channels))
        .astype(np.float32)
      )
      rate = images_per_second(compiled, pixels, args.seconds)
      results.append(
        {
          "precision": keras.mixed_precision.global_policy().name,
          "xla": xla,
          "batch_size": batch_size,
          "img_s": rate,
        }
      )
      print(
        f"{results[-1]['precision']:15s} xla {xla:3s} batch {batch_size:4d} {rate:9.1f} img/s",
        flush=True,
      )
  keras.mixed_precision.set_global_policy("float32")
  print(json.dumps(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
