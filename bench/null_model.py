"""The pipeline's own cost per image, with a model that costs nothing: a "null model".

The null model is an export with segbeam's contract (the default model's input size, classes,
decode and resize in the graph) whose network is one 1x1 convolution, written with
`segbeam.model.export.export_model`; the same network as a .keras file runs Beam's reference
pattern (`bench/reference_pattern.py --keras`). What remains of a run is the pipeline: reading,
validating, decoding, resizing, the mask at the original size, its PNG, coverage, Parquet and
Beam's per-element cost.

Marginal figures: each variant runs over --small and --large images (the 450 sample photos
repeated by symbolic links) in one session, alternating, and the difference divided by
(large - small) drops start-up out:

  marginal CPU per image = (CPU(large) - CPU(small)) / (large - small)
  marginal img/s         = (large - small) / (wall(large) - wall(small))

and the ratio segbeam / reference of the marginal rates, measured in the same run.

  pip install -e '.[bench]'    # tensorflow_hub for the reference pattern
  python bench/null_model.py [--small 450] [--large 4500] [--skip-reference]
  python bench/null_model.py --write-only DIR   # just the null export (and DIR.keras)
  python bench/null_model.py --model default    # the same method on a real model
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # the bench's inputs and timed child processes

NULL_MODEL_NAME = "segbeam-null-1x1-conv"


def write_null_export(export_dir: str) -> str:
  """The null export in `export_dir`, and its network as `export_dir`.keras; returns the
  latter's path."""
  import keras

  from segbeam.model import contract
  from segbeam.model import defaults
  from segbeam.model import export

  base = contract.read_metadata(defaults.default_model_dir())
  config = base.unet_config
  keras.utils.set_random_seed(0)
  network = keras.Sequential(
    [
      keras.Input((config.input_size, config.input_size, config.channels)),
      keras.layers.Conv2D(config.num_classes, 1, name="null_1x1"),
    ]
  )
  export.export_model(
    network,
    config,
    export_dir,
    label_map=base.labels,
    name=NULL_MODEL_NAME,
    training={"note": "bench/null_model.py: one 1x1 convolution, untrained"},
  )
  keras_path = export_dir.rstrip("/") + ".keras"
  network.save(keras_path)
  return keras_path


@dataclasses.dataclass(frozen=True)
class Marginal:
  small: throughput.Timing
  large: throughput.Timing

  @property
  def images(self) -> int:
    return self.large.images - self.small.images

  @property
  def cpu_ms(self) -> float:
    return 1000 * (self.large.cpu_seconds - self.small.cpu_seconds) / self.images

  @property
  def rate(self) -> float:
    return self.images / (self.large.seconds - self.small.seconds)

  def line(self, label: str) -> str:
    return (
      f"{label:34s} marginal {self.rate:6.1f} img/s, CPU {self.cpu_ms:5.2f} ms/img "
      f"(runs: {self.small.images} in {self.small.seconds:.1f} s, {self.large.images} in "
      f"{self.large.seconds:.1f} s; peak RSS {self.large.peak_rss_mb or 0:,.0f} MB)"
    )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", type=int, default=450)
  parser.add_argument("--large", type=int, default=4500)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--photos", default=throughput.SHARED)
  parser.add_argument("--run-args", default="", help="extra arguments for segbeam run")
  parser.add_argument("--skip-reference", action="store_true")
  parser.add_argument("--write-only", metavar="DIR", help="write the null export and stop")
  parser.add_argument(
    "--model",
    help="time this export instead of the null model ('default': the embedded one), without "
    "the reference pattern",
  )
  args = parser.parse_args(argv)
  if args.write_only:
    print(write_null_export(args.write_only))
    return 0
  work = tempfile.mkdtemp(prefix="segbeam-null-")
  if args.model:
    from segbeam.model import defaults

    export_dir = defaults.default_model_dir() if args.model == "default" else args.model
    args.skip_reference = True
  else:
    export_dir = os.path.join(work, "null-export")
    keras_path = write_null_export(export_dir)
  inputs = {}
  for count in (args.small, args.large):
    folder = os.path.join(work, f"images-{count}")
    throughput.make_inputs(args.photos, count, folder)
    inputs[count] = folder

  def segbeam_run(count: int) -> throughput.Timing:
    output = os.path.join(work, f"segbeam-{count}")
    return throughput.segbeam_run(
      export_dir,
      inputs[count],
      output,
      count,
      args.batch_size,
      os.path.join(work, f"segbeam-{count}.log"),
      ["--overwrite", *args.run_args.split()],
    )

  def reference(count: int) -> throughput.Timing:
    return throughput.reference_pattern(
      export_dir,
      inputs[count],
      os.path.join(work, f"reference-{count}"),
      count,
      "beam-default",  # as Beam's examples batch
      args.batch_size,
      os.path.join(work, f"reference-{count}.log"),
      keras=keras_path,
    )

  variants = {"segbeam run": segbeam_run}
  if not args.skip_reference:
    variants["Beam's reference pattern"] = reference
  timings: dict[tuple[str, int], throughput.Timing] = {}
  # Alternating small and large, variant by variant, so drift over minutes spreads evenly.
  for count in (args.small, args.large):
    for name, run in variants.items():
      timings[(name, count)] = run(count)
  model_name = throughput.cpu_model()
  model = f"model {export_dir}" if args.model else "null model: one 1x1 convolution"
  print(f"machine: {model_name}, {os.cpu_count()} cores; {model}")
  marginals = {
    name: Marginal(timings[(name, args.small)], timings[(name, args.large)]) for name in variants
  }
  for name, marginal in marginals.items():
    print(marginal.line(name))
  if len(marginals) == 2:
    ours, theirs = marginals.values()
    print(
      f"segbeam / reference, marginal img/s: {ours.rate / theirs.rate:.2f}; "
      f"CPU per image: {ours.cpu_ms / theirs.cpu_ms:.2f}"
    )
  print(f"outputs and logs in {work}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
