"""Large photos: the sample photos upscaled to about 12 MP, against the same photos as they are.

Takes the first --images readable photos of the sample (../shared/data/oxford-pets-sample, about
0.2 MP each; files that are not images are skipped), links them as they are into one folder and
writes each upscaled (Pillow, bicubic, aspect ratio kept) to about --megapixels MP, JPEG quality
90, into another; then times `segbeam run` over each folder as a child process (wall seconds, CPU
seconds of the child, its peak RSS from /proc), with the embedded default model and, with --null,
with the null model of bench/null_model.py too. Each run's output is checked: its manifest must
count every photo segmented, none failed, and its segments Parquet must hold as many rows.
Upscaled photos are smooth: their JPEGs (~0.7 MB) and masks compress better than real 12 MP
photos', so decoding and the mask PNG cost less here than they would on a camera's files.

Start-up (~6 s of wall time, ~7 s of CPU) is in every run's figures: no marginal runs. It is
most of the run at the original size and, with tens of photos, much of the 12 MP run too, so the
per-run ratios understate what a large photo costs. Both runs of a model start up alike and
segment as many photos, so their difference drops start-up out; that is the last line:

  extra CPU per image = (CPU(large) - CPU(original)) / images
  extra CPU per MP    = (CPU(large) - CPU(original)) / (MP(large) - MP(original))

  python bench/large_photos.py [--images 60] [--megapixels 12] [--null] [--run-args '...']
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # the bench's inputs and timed child processes


def prepare_inputs(source: str, count: int, megapixels: float, work: str) -> dict[str, float]:
  """Links the first `count` readable photos of `source` into work/original and writes them
  upscaled into work/large; returns each folder's total megapixels."""
  from PIL import Image

  folders = {"original": os.path.join(work, "original"), "large": os.path.join(work, "large")}
  for folder in folders.values():
    os.makedirs(folder)
  totals = dict.fromkeys(folders, 0.0)
  done = 0
  for name in sorted(os.listdir(source)):
    if done == count:
      break
    path = os.path.join(source, name)
    try:
      with Image.open(path) as image:
        image.load()
        photo = image if image.mode in ("RGB", "L") else image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
      continue  # not an image, or not one Pillow reads
    width, height = photo.size
    scale = math.sqrt(megapixels * 1e6 / (width * height))
    size = (round(width * scale), round(height * scale))
    stem = f"{done:03d}_{os.path.splitext(name)[0]}"
    link = os.path.join(folders["original"], stem + os.path.splitext(name)[1])
    os.symlink(os.path.abspath(path), link)
    photo.resize(size, Image.Resampling.BICUBIC).save(
      os.path.join(folders["large"], stem + ".jpg"), quality=90
    )
    totals["original"] += width * height / 1e6
    totals["large"] += size[0] * size[1] / 1e6
    done += 1
  if done == 0:
    raise SystemExit(f"no readable photos in {source}")
  return totals


def check_output(output: str, images: int) -> tuple[int, int, list[str]]:
  """(segmented, failed, problems) of a finished run in `output`."""
  import pyarrow.parquet as pq

  with open(os.path.join(output, "manifest.json")) as f:
    manifest = json.load(f)
  counts = manifest["counts"]
  rows = sum(
    pq.ParquetFile(p).metadata.num_rows
    for p in glob.glob(os.path.join(output, "segments", "*.parquet"))
  )
  problems = []
  if counts["failed"]:
    problems.append(f"{counts['failed']} failed: {counts['failed_by_reason']}")
  if counts["inputs_seen"] != images or counts["segmented"] != images:
    problems.append(f"{images} photos, manifest counts {counts}")
  if rows != counts["segmented"]:
    problems.append(f"segments Parquet holds {rows} rows, manifest {counts['segmented']}")
  if not manifest["conservation"]["holds"]:
    problems.append(f"conservation does not hold: {manifest['conservation']}")
  return counts["segmented"], counts["failed"], problems


@dataclasses.dataclass(frozen=True)
class Run:
  label: str
  timing: throughput.Timing
  megapixels: float
  segmented: int
  failed: int

  def line(self) -> str:
    t = self.timing
    return (
      f"{self.label:24s} {t.images:4d} images {self.megapixels:7.1f} MP {t.seconds:7.1f} s "
      f"{t.img_s:7.2f} img/s  CPU {t.cpu_ms_per_image:8.1f} ms/img "
      f"{1000 * t.cpu_seconds / self.megapixels:7.1f} ms/MP  peak RSS "
      f"{t.peak_rss_mb or 0:6,.0f} MB  {self.segmented}/{t.images} segmented, {self.failed} failed"
    )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=60)
  parser.add_argument("--megapixels", type=float, default=12.0)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--photos", default=throughput.SHARED)
  parser.add_argument("--null", action="store_true", help="also run the null model")
  parser.add_argument("--run-args", default="", help="extra arguments for segbeam run")
  args = parser.parse_args(argv)
  from segbeam.model import defaults

  work = tempfile.mkdtemp(prefix="segbeam-large-")
  totals = prepare_inputs(args.photos, args.images, args.megapixels, work)
  images = len(os.listdir(os.path.join(work, "original")))
  models = {"default": defaults.default_model_dir()}
  if args.null:
    from null_model import write_null_export

    models["null"] = os.path.join(work, "null-export")
    write_null_export(models["null"])
  runs: dict[tuple[str, str], Run] = {}
  problems = []
  for model, model_dir in models.items():
    for size in ("original", "large"):
      label = f"{model}, {size}"
      name = f"{model}-{size}"
      output, log = os.path.join(work, f"out-{name}"), os.path.join(work, f"{name}.log")
      try:
        timing = throughput.segbeam_run(
          model_dir,
          os.path.join(work, size),
          output,
          images,
          args.batch_size,
          log,
          ["--overwrite", *args.run_args.split()],
        )
        segmented, failed, found = check_output(output, images)
      except (RuntimeError, OSError, KeyError) as error:
        with open(log, errors="replace") as f:
          tail = "".join(f.readlines()[-20:])
        problems.append(f"{label}: {error}\n{tail}")
        continue
      problems += [f"{label}: {p}" for p in found]
      runs[(model, size)] = Run(label, timing, totals[size], segmented, failed)
      shutil.rmtree(output, ignore_errors=True)
  model_name = throughput.cpu_model()
  print(f"machine: {model_name}, {os.cpu_count()} cores; batch size {args.batch_size}")
  print(
    f"photos: {images}, original {totals['original'] / images:.2f} MP each, large "
    f"{totals['large'] / images:.2f} MP each; start-up included in every run"
  )
  for run in runs.values():
    print(run.line())
  for model in models:
    if (model, "original") in runs and (model, "large") in runs:
      small, large = runs[(model, "original")].timing, runs[(model, "large")].timing
      extra = large.cpu_seconds - small.cpu_seconds
      print(
        f"{model} model, large / original: "
        f"CPU per image {large.cpu_seconds / small.cpu_seconds:.2f}, "
        f"peak RSS {(large.peak_rss_mb or 0) / (small.peak_rss_mb or 1):.2f}; without start-up: "
        f"extra CPU {1000 * extra / images:.1f} ms/img, "
        f"{1000 * extra / (totals['large'] - totals['original']):.1f} ms per extra MP"
      )
  shutil.rmtree(os.path.join(work, "large"), ignore_errors=True)
  print(f"logs in {work}")
  for problem in problems:
    print(f"PROBLEM {problem}", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
