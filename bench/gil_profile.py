"""Where `segbeam run` spends the time it holds Python's GIL, per image, by stage.

Runs `segbeam run` over the photos of ../shared/data/oxford-pets-sample repeated to --images
files, once plainly (wall and CPU time) and once under py-spy sampling only the thread that
holds the GIL (`py-spy record --gil --threads`). Each sample is put in the first stage whose
frame pattern its stack contains (`STAGES`, in order), and the script prints, per stage, the
GIL-held seconds and milliseconds per image. Python work is what the GIL serialises; the
forward pass and the decoding in the graph run in TensorFlow's threads without it, so the
total against the run's wall time says whether the GIL could be what limits the run.

Sampling slows the run (the process is paused for every sample), so compare stages with each
other and with the plain run's CPU per image, not the profiled run's rate with anything.

  pip install -e '.[bench]'    # py-spy
  python bench/gil_profile.py [--images 1800] [--rate 50]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # the bench's own inputs

# (stage, a pattern of a frame in the stack), first match wins: nested stages before the ones
# around them (class_mask runs inside segments_row, which runs inside MakeRows). The
# start-up stages are paid once per run, the others per image.
START_UP_STAGES = (
  ("importing modules", "_find_and_load"),
  ("building the pipeline", "build_pipeline"),
  ("loading the model", "sessions.py"),
)
STAGES = START_UP_STAGES + (
  ("reading files", "ReadFile"),
  ("validating headers", "ValidateImage"),
  ("tfx-bsl: outputs into PredictionLogs", "_post_process"),
  ("outputs back out of PredictionLogs", "outputs_as_arrays"),
  ("session.run, Python side", "BaseSession"),
  ("the mask at original size (class_mask)", "class_mask"),
  ("the mask's PNG", "mask_png.py"),
  ("the rest of the row (counts, columns)", "segments_row"),
  ("MakeRows's queueing", "MakeRows"),
  ("writing Parquet", "parquetio"),
  ("batching", "BatchElements"),
  ("Beam's bundle machinery", "process_bundle"),
  ("Beam, elsewhere", "apache_beam"),
)
OTHER = "other"


def stage_of(stack: str) -> str:
  for stage, pattern in STAGES:
    if pattern in stack:
      return stage
  return OTHER


def gil_seconds_by_stage(raw_profile: str, rate: int) -> collections.Counter:
  """py-spy's raw output (one 'frame;frame;... count' line per distinct stack) -> seconds."""
  seconds: collections.Counter = collections.Counter()
  with open(raw_profile) as lines:
    for line in lines:
      stack, _, count = line.rstrip("\n").rpartition(" ")
      if stack:
        seconds[stage_of(stack)] += int(count) / rate
  return seconds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=1800)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
  parser.add_argument("--model", default=None, help="export (default: the embedded model)")
  parser.add_argument("--photos", default=throughput.SHARED)
  parser.add_argument("--run-args", default="", help="extra arguments for segbeam run")
  parser.add_argument(
    "--py-spy",
    default=shutil.which("py-spy", path=os.path.dirname(sys.executable)),
    help="the py-spy executable (default: beside this Python)",
  )
  args = parser.parse_args(argv)
  if not args.py_spy:
    parser.error("py-spy not found: pip install -e '.[bench]'")
  from segbeam.model import defaults

  model_dir = args.model or defaults.default_model_dir()
  work = tempfile.mkdtemp(prefix="segbeam-gil-")
  try:
    input_dir = os.path.join(work, "images")
    images = len(throughput.make_inputs(args.photos, args.images, input_dir))
    plain = throughput.segbeam_run(
      model_dir,
      input_dir,
      os.path.join(work, "plain"),
      images,
      args.batch_size,
      os.path.join(work, "plain.log"),
      args.run_args.split(),
    )
    print(f"plain run: {plain.describe()}")
    raw = os.path.join(work, "profile.txt")
    start = time.perf_counter()
    with open(os.path.join(work, "profiled.log"), "w") as log:
      subprocess.run(
        [
          args.py_spy,
          "record",
          "--gil",
          "--threads",
          "--rate",
          str(args.rate),
          "--format",
          "raw",
          "-o",
          raw,
          "--",
          *throughput.segbeam_run_argv(
            model_dir,
            input_dir,
            os.path.join(work, "profiled"),
            args.batch_size,
            args.run_args.split(),
          ),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        check=True,
      )
    profiled_wall = time.perf_counter() - start
    seconds = gil_seconds_by_stage(raw, args.rate)
    held = sum(seconds.values())
    print(
      f"profiled run: {profiled_wall:.1f} s wall, the GIL held {held:.1f} s of it "
      f"({held / profiled_wall:.0%})"
    )
    print(f"{'stage':42s} {'GIL s':>7s} {'ms/image':>9s}")
    for stage, stage_seconds in seconds.most_common():
      print(f"{stage:42s} {stage_seconds:7.2f} {1000 * stage_seconds / images:9.2f}")
    start_up = {stage for stage, _ in START_UP_STAGES}
    per_image = sum(s for stage, s in seconds.items() if stage not in start_up)
    print(
      f"{'all but importing, building and loading':42s} {per_image:7.2f} "
      f"{1000 * per_image / images:9.2f}"
    )
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
