"""How `segbeam run`'s costs grow with the number of inputs: 10,000 to 1,000,000 tiny images.

Generated 24x24 PNG images with 24x24 label masks, as files (with --ground-truth) and packed
into TFRecord shards of --records-per-shard (labels inside the examples), run with the null
model of `bench/null_model.py` (one 1x1 convolution behind segbeam's export contract), so what
grows is the pipeline's own work. Per size and layout it prints: wall time and CPU per input,
peak RSS, bytes the run read per byte of input (the process's `rchar` from /proc, read at its
exit by a `sitecustomize` hook; reading the model and Python's modules is in it, so the
marginal figure between two sizes is the one to compare with 1.0), the output Parquet files
(count, total and largest size) and the manifest step's time (from its log line). The last
lines compare the largest size with the smallest against issue 23's targets: per-input time
and peak RSS within 1.2x, every input byte read once (1.0x, within 5%), and no output table
split into files smaller than 10 MB. Each size's inputs and outputs are removed once measured
(1,000,000 inputs as files are 2,000,000 files), unless --keep.

  python bench/scale.py [--sizes 10000,50000,200000] [--layouts files,shards] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import re
import shutil
import sys
import tempfile
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import null_model  # the null export
import throughput  # timed child processes

# Written next to the run; Python imports it at start-up when its folder is on PYTHONPATH.
# segbeam's CLI ends with os._exit (no atexit), so the hook wraps that too.
_SITECUSTOMIZE = """
import atexit, os
def _write_io():
  with open('/proc/self/io') as f, open(os.environ['SEGBEAM_BENCH_IO'], 'w') as out:
    out.write(f.read())
if os.environ.get('SEGBEAM_BENCH_IO'):
  atexit.register(_write_io)
  _exit = os._exit
  def _write_io_and_exit(code):
    _write_io()
    _exit(code)
  os._exit = _write_io_and_exit
"""
_MANIFEST_LINE = re.compile(r"wrote the manifest .* in ([0-9.]+) s")


def distinct_images(count: int = 97) -> tuple[list[bytes], list[bytes]]:
  """`count` different 24x24 RGB PNGs and 24x24 trimap-like masks (values 1 to 3)."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(0)
  images, masks = [], []
  for _ in range(count):
    pixels = rng.integers(0, 256, (24, 24, 3), np.uint8)
    mask = rng.integers(1, 4, (24, 24), np.uint8)
    for array, out_list in ((pixels, images), (mask, masks)):
      buffer = io.BytesIO()
      Image.fromarray(array).save(buffer, "PNG")
      out_list.append(buffer.getvalue())
  return images, masks


def write_files(folder: str, size: int) -> int:
  """images/NNN/NNNNNN.png and labels/NNN/NNNNNN.png; returns the input bytes (both)."""
  images, masks = distinct_images()
  total = 0
  for i in range(size):
    name = f"{i // 1000:03d}/{i:06d}.png"
    for kind, data in (("images", images[i % len(images)]), ("labels", masks[i % len(masks)])):
      path = os.path.join(folder, kind, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
      total += len(data)
  return total


def write_shards(folder: str, size: int, per_shard: int) -> int:
  """Shards of `per_shard` examples, each with its image, filename and label; returns the
  shards' bytes."""
  from segbeam.commands import pack
  from segbeam.pipeline import tfrecord

  images, masks = distinct_images()
  os.makedirs(folder, exist_ok=True)
  shards = (size + per_shard - 1) // per_shard
  for shard in range(shards):
    with open(pack.shard_path(os.path.join(folder, "part"), shard, shards), "wb") as f:
      for i in range(shard * per_shard, min(size, (shard + 1) * per_shard)):
        example = pack.make_example(f"{i:06d}.png", images[i % len(images)], masks[i % len(masks)])
        f.write(tfrecord.encode_record(example))
  return sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder, "*")))


@dataclasses.dataclass(frozen=True)
class Result:
  layout: str
  size: int
  input_bytes: int
  timing: throughput.Timing
  rchar: int
  parquet_files: int
  parquet_bytes: int
  largest_file: int
  manifest_seconds: Optional[float]
  small_table_splits: int  # output tables split into more than one file, one under 10 MB

  def line(self) -> str:
    t = self.timing
    manifest = f"{self.manifest_seconds:.2f} s" if self.manifest_seconds is not None else "?"
    return (
      f"| {self.layout} | {self.size:,} | {1000 * t.seconds / self.size:.3f} | "
      f"{1000 * t.cpu_seconds / self.size:.3f} | {t.peak_rss_mb:,.0f} | "
      f"{self.rchar / self.input_bytes:.2f} | {self.parquet_files} files, "
      f"{self.parquet_bytes / 1e6:.1f} MB, largest {self.largest_file / 1e6:.1f} MB | {manifest} |"
    )


SMALL_FILE_BYTES = 10_000_000


def small_splits(output: str) -> int:
  """How many of the output's tables are split into several files, one of them under 10 MB
  (a table that small could be one file)."""
  count = 0
  for table in ("segments", "errors"):
    sizes = [os.path.getsize(p) for p in glob.glob(os.path.join(output, table, "*.parquet"))]
    count += len(sizes) > 1 and min(sizes) < SMALL_FILE_BYTES
  return count


def run(
  layout: str, size: int, work: str, model_dir: str, per_shard: int, hook_dir: str, keep: bool
):
  data = os.path.join(work, f"{layout}-{size}")
  extra = ["--overwrite"]
  if layout == "files":
    input_bytes = write_files(data, size)
    pattern = os.path.join("images", "**", "*.png")
    extra += ["--ground-truth", os.path.join(data, "labels", "**", "*.png")]
  else:
    input_bytes = write_shards(data, size, per_shard)
    pattern = "*.tfrecord"
  output = os.path.join(work, f"out-{layout}-{size}")
  log = os.path.join(work, f"{layout}-{size}.log")
  io_file = os.path.join(work, f"{layout}-{size}.io")
  env = dict(
    os.environ,
    SEGBEAM_BENCH_IO=io_file,
    PYTHONPATH=os.pathsep.join(filter(None, [hook_dir, os.environ.get("PYTHONPATH")])),
  )
  argv = throughput.segbeam_run_argv(model_dir, data, output, 32, extra, pattern=pattern)
  timing = throughput.timed_subprocess(argv, log, size, env=env)
  with open(io_file) as f:
    rchar = int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])
  files = glob.glob(os.path.join(output, "*", "*.parquet"))
  sizes = [os.path.getsize(p) for p in files]
  with open(log, errors="replace") as f:
    found = _MANIFEST_LINE.findall(f.read())
  splits = small_splits(output)
  if not keep:
    shutil.rmtree(data)
    shutil.rmtree(output)
  return Result(
    layout,
    size,
    input_bytes,
    timing,
    rchar,
    len(files),
    sum(sizes),
    max(sizes, default=0),
    float(found[-1]) if found else None,
    splits,
  )


def _met(ok: bool) -> str:
  return "target met" if ok else "TARGET MISSED"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="10000,50000,200000")
  parser.add_argument("--layouts", default="files,shards")
  parser.add_argument("--records-per-shard", type=int, default=5000)
  parser.add_argument("--keep", action="store_true", help="keep each size's inputs and outputs")
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  layouts = args.layouts.split(",")
  work = tempfile.mkdtemp(prefix="segbeam-scale-")
  hook_dir = os.path.join(work, "hook")
  os.makedirs(hook_dir)
  with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
    f.write(_SITECUSTOMIZE)
  model_dir = os.path.join(work, "null-export")
  null_model.write_null_export(model_dir)
  columns = (
    "layout, inputs, wall ms per input, CPU ms per input, peak RSS MB, bytes read per input "
    "byte, output Parquet, manifest step"
  ).split(", ")
  print(f"| {' | '.join(columns)} |\n|{' --- |' * len(columns)}", flush=True)
  results: dict[tuple[str, int], Result] = {}
  for size in sizes:
    for layout in layouts:
      result = run(layout, size, work, model_dir, args.records_per_shard, hook_dir, args.keep)
      results[(layout, size)] = result
      print(result.line(), flush=True)
  small, large = min(sizes), max(sizes)
  for layout in layouts:
    a, b = results[(layout, small)], results[(layout, large)]
    wall = (b.timing.seconds / large) / (a.timing.seconds / small)
    rss = b.timing.peak_rss_mb / a.timing.peak_rss_mb
    read = (b.rchar - a.rchar) / (b.input_bytes - a.input_bytes) if large > small else 0.0
    splits = sum(results[(layout, size)].small_table_splits for size in sizes)
    print(
      f"{layout}: {large:,} / {small:,} inputs: wall per input {wall:.2f}x ({_met(wall <= 1.2)}), "
      f"peak RSS {rss:.2f}x ({_met(rss <= 1.2)}); bytes read per extra input byte {read:.2f} "
      f"({_met(abs(read - 1.0) <= 0.05)}); tables split into files under 10 MB: {splits} "
      f"({_met(splits == 0)})"
    )
  print(f"inputs, outputs and logs in {work}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
