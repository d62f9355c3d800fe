"""Tiled inference (`segbeam run --tile auto`): what it costs against the same pixels segmented
whole, and the memory of one 100-megapixel image, in ONE run.

Throughput at equal pixels. Mosaics of the sample photos (../shared/data/oxford-pets-sample,
each photo fitted to a --cell pixels square) of --mosaic pixels a side, JPEG quality 90, are the
tiled inputs (`--tile auto`: tiles of the model's input with its default overlap, a quarter of
the tile, origins on multiples of 32); the same mosaics cut into squares of the model's input,
each one model input, JPEG 90 too, are the whole inputs (plain `segbeam run`, its default
handler on the encoded bytes; tiles go to the export's `predict_pixels`). Each variant runs
over --small and then --large mosaics' pixels, alternating variant by variant, with the embedded
default model and with bench/null_model.py's null model (one 1x1 convolution: what is left is
the pipeline's own work), tiled with --tile-blend centre and gaussian. A unit is an image whole,
a tile tiled; the differences drop start-up out:

  marginal units/s  = (units(large) - units(small)) / (wall(large) - wall(small))
  marginal MP/s     = (MP(large) - MP(small)) / (wall(large) - wall(small))
  MP per CPU second = (MP(large) - MP(small)) / (CPU(large) - CPU(small)), i.e. per core
  CPU ms per unit   = 1000 * (CPU(large) - CPU(small)) / (units(large) - units(small))

The null model's CPU per tile / CPU per whole image is tiling's own cost per model input
(decoding once and cutting, reducing each tile's prediction, grouping, stitching) against the
whole path's (decoding, resizing, the mask at the original size, each per image).

Memory. One --big x --big JPEG (10,000 x 10,000 = 100 MP by default: the photos fitted to
--big-cell squares, enlarged) with `--tile auto`, centre and gaussian, and one sample photo (the
start-up floor): the peak RSS of the run, from wait4's ru_maxrss of the child and its waited
descendants (this process stays small: its inputs are made and its outputs checked in another,
so the peak counted from before the child's exec is this process's few MB), wall and CPU time,
tiles, and its RSS sampled every 0.25 s from /proc, printed at fractions of the wall time: what
grows while tiles are inferred is what the run holds per tile. Beside them, the compressed pieces
(`segbeam.pipeline.tiling.Piece`, what each tile's prediction is reduced to and held until its
image's tiles are grouped) of a sample of the large image's tiles, measured with the default
model: their size, and pickled (about what Beam holds of each), times the image's tiles.

Every run's output is checked: each input segmented, none failed, its masks at the image's size.

  python bench/tiling.py [--mosaic 2048] [--small 1] [--large 5] [--big 10000]
  python bench/tiling.py --quick   # tiny sizes, seconds per run: what tests/bench_test.py runs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import null_model  # Marginal: figures by differencing a small and a large run
import throughput  # the bench's inputs, timings and `segbeam run` command line

# Heavy imports (TensorFlow, Pillow, pyarrow) only in the helper process (`_helper`): this one
# forks the timed children, whose ru_maxrss counts the memory they were forked with.

BLENDS = ("centre", "gaussian")
TARGET_MB = 2048  # issue 34: a 100 MP image within 2 GB
SAMPLE_SECONDS = 0.25


# ---- the helper process: inputs, tile counts, output checks, piece sizes ----


def _fitted_photos(source: str, cell: int):
  """The readable photos of `source`, each fitted to a `cell` x `cell` square (cropped to it,
  then resized), endlessly in name order."""
  from PIL import Image
  from PIL import ImageOps

  names = sorted(os.listdir(source))
  readable = 0
  while True:
    for name in names:
      try:
        with Image.open(os.path.join(source, name)) as image:
          photo = image.convert("RGB")
      except (OSError, ValueError, Image.DecompressionBombError):
        continue  # not an image, or not one Pillow reads
      readable += 1
      yield ImageOps.fit(photo, (cell, cell), Image.Resampling.BICUBIC)
    if not readable:
      raise SystemExit(f"no readable photos in {source}")


def _mosaic(photos, side: int, cell: int):
  from PIL import Image

  mosaic = Image.new("RGB", (side, side))
  for top in range(0, side, cell):
    for left in range(0, side, cell):
      mosaic.paste(next(photos), (left, top))
  return mosaic


def _link_all(names: list[str], source: str, target: str) -> None:
  os.makedirs(target, exist_ok=True)
  for name in names:
    os.symlink(os.path.join(source, name), os.path.join(target, name))


def make_inputs(args_dict: dict, work: str) -> dict:
  """Writes every input under `work`; returns their folders, file counts, megapixels and
  tiles (as `segbeam run --tile auto` plans them for the model), and the tile size."""
  from PIL import Image

  from segbeam.model import contract
  from segbeam.model import defaults
  from segbeam.pipeline import tiled_inference as tiled

  args = argparse.Namespace(**args_dict)
  serving = contract.read_metadata(defaults.default_model_dir()).serving_config
  settings = tiled.TileSettings.resolve("auto", None, "centre", 1.0, serving)
  size = settings.size
  if args.mosaic % size:
    raise SystemExit(f"--mosaic {args.mosaic} must be a multiple of the tile, {size}")
  photos = _fitted_photos(args.photos, args.cell)
  every = {kind: os.path.join(work, f"all-{kind}") for kind in ("whole", "tiled")}
  for folder in every.values():
    os.makedirs(folder)
  whole_names: list[list[str]] = []
  for m in range(args.large):
    mosaic = _mosaic(photos, args.mosaic, args.cell)
    mosaic.save(os.path.join(every["tiled"], f"m{m:03d}.jpg"), quality=90)
    names = []
    for top in range(0, args.mosaic, size):
      for left in range(0, args.mosaic, size):
        name = f"m{m:03d}_{top:05d}_{left:05d}.jpg"
        mosaic.crop((left, top, left + size, top + size)).save(
          os.path.join(every["whole"], name), quality=90
        )
        names.append(name)
    whole_names.append(names)
  mosaic_mp = args.mosaic**2 / 1e6
  mosaic_tiles = settings.plan(args.mosaic, args.mosaic).count()
  inputs = {"tile": size, "overlap": settings.overlap, "mosaic_tiles": mosaic_tiles}
  for count in (args.small, args.large):
    tiled_dir = os.path.join(work, f"tiled-{count}")
    whole_dir = os.path.join(work, f"whole-{count}")
    _link_all([f"m{m:03d}.jpg" for m in range(count)], every["tiled"], tiled_dir)
    _link_all([n for names in whole_names[:count] for n in names], every["whole"], whole_dir)
    inputs[f"tiled-{count}"] = (tiled_dir, count, count * mosaic_mp, count * mosaic_tiles)
    crops = sum(len(names) for names in whole_names[:count])
    inputs[f"whole-{count}"] = (whole_dir, crops, count * mosaic_mp, crops)
  # The large image: every cell a photo, enlarged or shrunk to it.
  big_dir = os.path.join(work, "big")
  os.makedirs(big_dir)
  big_path = os.path.join(big_dir, f"big-{args.big}.jpg")
  _mosaic(_fitted_photos(args.photos, args.big_cell), args.big, args.big_cell).save(
    big_path, quality=90
  )
  big_tiles = settings.plan(args.big, args.big).count()
  inputs["big"] = (big_dir, 1, args.big**2 / 1e6, big_tiles)
  floor_dir = os.path.join(work, "one-photo")
  os.makedirs(floor_dir)
  for name in sorted(os.listdir(args.photos)):
    try:
      with Image.open(os.path.join(args.photos, name)) as image:
        width, height = image.size
    except (OSError, ValueError):
      continue
    os.symlink(os.path.abspath(os.path.join(args.photos, name)), os.path.join(floor_dir, name))
    inputs["floor"] = (floor_dir, 1, width * height / 1e6, 0)
    break
  return inputs


def check_output(output: str, images: int) -> list[str]:
  """Problems with a finished run: `large_photos.check_output`'s, and masks whose size is not
  their image's (read from the PNGs' headers)."""
  import glob
  import io

  import large_photos
  import pyarrow.parquet as pq
  from PIL import Image

  _, _, problems = large_photos.check_output(output, images)
  Image.MAX_IMAGE_PIXELS = None  # headers only: nothing is decoded
  for path in glob.glob(os.path.join(output, "segments", "*.parquet")):
    table = pq.read_table(path, columns=["image_id", "width", "height", "mask_png"])
    for row in table.to_pylist():
      with Image.open(io.BytesIO(row["mask_png"])) as mask:
        if mask.size != (row["width"], row["height"]):
          problems.append(
            f"{row['image_id']}: mask {mask.size[0]}x{mask.size[1]}, image "
            f"{row['width']}x{row['height']}"
          )
  shutil.rmtree(output, ignore_errors=True)
  return problems


def piece_sizes(image_path: str, sample: int, batch_size: int) -> dict:
  """Mean bytes of the compressed piece each stitcher makes of a tile's prediction, and of the
  piece pickled, over `sample` tiles spread evenly over the image, with the default model."""
  import pickle

  import numpy as np

  from segbeam.model import defaults
  from segbeam.model import export
  from segbeam.model import preprocessing
  from segbeam.pipeline import tiled_inference as tiled
  from segbeam.pipeline import tiling

  model = export.LoadedExport(defaults.default_model_dir())
  serving = model.metadata.serving_config
  settings = tiled.TileSettings.resolve("auto", None, "centre", 1.0, serving)
  with open(image_path, "rb") as f:
    pixels = preprocessing.decode_image(f.read(), settings.channels).numpy()
  plan = settings.plan(*pixels.shape[:2])
  tiles = list(plan.tiles())
  chosen = [tiles[i * len(tiles) // sample] for i in range(min(sample, len(tiles)))]
  sizes = {blend: [0, 0] for blend in BLENDS}
  stitchers = {"centre": tiling.CentreStitcher, "gaussian": tiling.GaussianStitcher}
  for start in range(0, len(chosen), batch_size):
    batch = chosen[start : start + batch_size]
    cut = np.stack([plan.cut(pixels, tile) for tile in batch]).astype(np.float32)
    for tile, probabilities in zip(batch, model.predict_pixels(cut)):
      for blend, stitcher in stitchers.items():
        piece = stitcher.piece(plan, tile, probabilities)
        sizes[blend][0] += len(piece.data)
        sizes[blend][1] += len(pickle.dumps(piece))
  return {
    blend: (data / len(chosen), pickled / len(chosen)) for blend, (data, pickled) in sizes.items()
  } | {"sampled": len(chosen)}


def write_null_export(export_dir: str) -> None:
  null_model.write_null_export(export_dir)


# ---- timed runs, in this process ----


def _rss_mb(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


@dataclasses.dataclass(frozen=True)
class Run:
  """One timed `segbeam run`: its timing (units: images whole, tiles tiled; peak RSS from
  ru_maxrss), its megapixels and its RSS sampled over time, (seconds, MB)."""

  timing: throughput.Timing
  megapixels: float
  samples: tuple[tuple[float, float], ...]

  def rss_at(self, fraction: float) -> float:
    """The RSS sampled nearest `fraction` of the wall time, MB."""
    when = fraction * self.timing.seconds
    return min(self.samples, key=lambda s: abs(s[0] - when))[1] if self.samples else 0.0

  def peak_at(self) -> float:
    """When the sampled RSS was highest, as a fraction of the wall time."""
    return max(self.samples, key=lambda s: s[1])[0] / self.timing.seconds if self.samples else 0.0


def timed_run(argv: list[str], log_path: str, units: int, megapixels: float) -> Run:
  """`throughput.timed_subprocess`, with the peak from wait4's ru_maxrss (the child and every
  process it waited for) and the child's RSS sampled over time."""
  start = time.perf_counter()
  samples = []
  with open(log_path, "w") as log:
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    while True:
      pid, status, usage = os.wait4(process.pid, os.WNOHANG)
      if pid:
        break
      samples.append((time.perf_counter() - start, _rss_mb(process.pid)))
      time.sleep(SAMPLE_SECONDS)
  elapsed = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    with open(log_path, errors="replace") as f:
      tail = "".join(f.readlines()[-20:])
    raise RuntimeError(f"{' '.join(argv[:2])} failed; {log_path} ends:\n{tail}")
  peak = usage.ru_maxrss / 1024  # kB on Linux
  timing = throughput.Timing(units, elapsed, usage.ru_utime + usage.ru_stime, peak)
  return Run(timing, megapixels, tuple(samples))


@dataclasses.dataclass(frozen=True)
class Variant:
  model: str  # "default" or "null"
  kind: str  # "whole" or "tiled"
  blend: str = ""

  @property
  def label(self) -> str:
    if self.kind == "whole":
      return "whole, one model input per image"
    return f"tiled, --tile-blend {self.blend}"

  @property
  def unit(self) -> str:
    return "images" if self.kind == "whole" else "tiles"

  def extra(self) -> list[str]:
    return ["--tile", "auto", "--tile-blend", self.blend] if self.kind == "tiled" else []


@dataclasses.dataclass(frozen=True)
class Figures:
  """A variant's marginal figures: per unit (`marginal`) and per megapixel."""

  marginal: null_model.Marginal
  small: Run
  large: Run

  @property
  def megapixels(self) -> float:
    return self.large.megapixels - self.small.megapixels

  @property
  def mp_s(self) -> float:
    return self.megapixels / (self.large.timing.seconds - self.small.timing.seconds)

  @property
  def mp_per_cpu_s(self) -> float:
    return self.megapixels / (self.large.timing.cpu_seconds - self.small.timing.cpu_seconds)


def _ratio(a: float, b: float) -> str:
  return f"{a / b:.2f}" if b else "n/a"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mosaic", type=int, default=2048, help="side of each tiled input")
  parser.add_argument("--cell", type=int, default=256, help="side of each photo in a mosaic")
  parser.add_argument("--small", type=int, default=1, help="mosaics in the small runs")
  parser.add_argument("--large", type=int, default=5, help="mosaics in the large runs")
  parser.add_argument("--big", type=int, default=10000, help="side of the memory run's image")
  parser.add_argument("--big-cell", type=int, default=500)
  parser.add_argument("--piece-sample", type=int, default=256, help="tiles whose pieces to size")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--photos", default=throughput.SHARED)
  parser.add_argument(
    "--models", help="models of the throughput runs (default: default,null; --quick: null)"
  )
  parser.add_argument("--skip-memory", action="store_true")
  parser.add_argument("--keep", action="store_true", help="keep the inputs and logs")
  parser.add_argument(
    "--quick", action="store_true", help="tiny sizes (seconds a run), for the tests"
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.mosaic, args.cell, args.small, args.large = 256, 64, 1, 2
    args.big, args.big_cell, args.piece_sample = 640, 128, 8
    # The null model's runs take a few seconds each; the memory runs use the default model.
    args.models = args.models or "null"
  if not 0 < args.small < args.large:
    parser.error("--small must be at least 1 and less than --large")
  models = (args.models or "default,null").split(",")
  work = tempfile.mkdtemp(prefix="segbeam-tiling-")
  began, load_before = time.perf_counter(), os.getloadavg()[0]
  spawn = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as helper:
    inputs = helper.submit(make_inputs, vars(args), work).result()
    model_dirs = {"default": helper.submit(_default_model_dir).result()}
    if "null" in models:
      model_dirs["null"] = os.path.join(work, "null-export")
      helper.submit(write_null_export, model_dirs["null"]).result()
    problems: list[str] = []

    def run(model: str, key: str, extra: list[str], name: str) -> Run:
      folder, files, megapixels, tiles = inputs[key]
      output = os.path.join(work, f"out-{name}")
      argv_ = throughput.segbeam_run_argv(
        model_dirs[model], folder, output, args.batch_size, ["--overwrite", *extra]
      )
      units = tiles if "--tile" in extra and key != "floor" else files
      result = timed_run(argv_, os.path.join(work, f"{name}.log"), units, megapixels)
      problems.extend(f"{name}: {p}" for p in helper.submit(check_output, output, files).result())
      print(
        f"  {name}: {result.timing.seconds:.1f} s, CPU {result.timing.cpu_seconds:.1f} s, "
        f"peak RSS {result.timing.peak_rss_mb:,.0f} MB",
        file=sys.stderr,
        flush=True,
      )
      return result

    variants = [Variant(m, "whole") for m in models]
    variants += [Variant(m, "tiled", blend) for m in models for blend in BLENDS]
    runs: dict[tuple[Variant, int], Run] = {}
    # Small then large, variant by variant: drift over minutes spreads over every variant.
    for count in (args.small, args.large):
      for v in variants:
        name = f"{v.model}-{v.kind}{'-' + v.blend if v.blend else ''}-{count}"
        runs[(v, count)] = run(v.model, f"{v.kind}-{count}", v.extra(), name)
    memory: dict[str, Run] = {}
    pieces = None
    if not args.skip_memory:
      memory["floor"] = run("default", "floor", ["--tile", "auto"], "memory-floor")
      for blend in BLENDS:
        memory[blend] = run(
          "default", "big", ["--tile", "auto", "--tile-blend", blend], f"memory-{blend}"
        )
      big_path = os.path.join(inputs["big"][0], os.listdir(inputs["big"][0])[0])
      pieces = helper.submit(piece_sizes, big_path, args.piece_sample, args.batch_size).result()

  # Another process busy on the machine would slow every run: the load says whether one was.
  print(
    f"machine: {throughput.cpu_model()}, {os.cpu_count()} cores (nproc); 1-minute load "
    f"average {load_before:.2f} before the runs, {os.getloadavg()[0]:.2f} after"
  )
  tile, overlap = inputs["tile"], inputs["overlap"]
  files_small, files_large = inputs[f"whole-{args.small}"][1], inputs[f"whole-{args.large}"][1]
  print(
    f"inputs: tiled, mosaics of {args.mosaic}x{args.mosaic} ({args.mosaic**2 / 1e6:.2f} MP, "
    f"{inputs['mosaic_tiles']} tiles of {tile} overlapping {overlap}), {args.small} and "
    f"{args.large}; whole, the same cut into {files_small} and {files_large} images of "
    f"{tile}x{tile}; photos fitted to {args.cell}-pixel cells; batch {args.batch_size}"
  )
  print()
  print(
    "| model | variant | marginal units | units/s | MP/s | MP per CPU s | CPU ms per unit | "
    "CPU s per MP | peak RSS, large run |"
  )
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  figures: dict[Variant, Figures] = {}
  for v in variants:
    small, large = runs[(v, args.small)], runs[(v, args.large)]
    f = figures[v] = Figures(null_model.Marginal(small.timing, large.timing), small, large)
    print(
      f"| {v.model} | {v.label} | {f.marginal.images:,} {v.unit} | {f.marginal.rate:.1f} | "
      f"{f.mp_s:.2f} | {f.mp_per_cpu_s:.2f} | {f.marginal.cpu_ms:.2f} | "
      f"{1 / f.mp_per_cpu_s:.2f} | {large.timing.peak_rss_mb:,.0f} MB |"
    )
  print()
  for model in models:
    whole = figures[Variant(model, "whole")]
    centre = figures[Variant(model, "tiled", "centre")]
    gaussian = figures[Variant(model, "tiled", "gaussian")]
    print(
      f"- {model} model, tiled (centre) / whole: CPU per model input "
      f"{_ratio(centre.marginal.cpu_ms, whole.marginal.cpu_ms)}, MP/s "
      f"{_ratio(centre.mp_s, whole.mp_s)}, MP per CPU s "
      f"{_ratio(centre.mp_per_cpu_s, whole.mp_per_cpu_s)} (tiled runs "
      f"{_ratio(centre.marginal.images, whole.marginal.images)}x as many model inputs); "
      f"gaussian / centre: CPU per tile {_ratio(gaussian.marginal.cpu_ms, centre.marginal.cpu_ms)}"
    )
  if memory:
    big_mp, big_tiles = inputs["big"][2], inputs["big"][3]
    print()
    print(
      "| run | MP | tiles | wall s | CPU s | peak RSS | RSS at 10 / 25 / 50 / 75 / 90% of wall |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    floor = memory["floor"]
    rows = [("one sample photo, --tile auto (start-up floor)", floor, "whole")]
    rows += [
      (f"{args.big}x{args.big} JPEG, --tile-blend {b}", memory[b], f"{big_tiles:,}") for b in BLENDS
    ]
    for label, result, tiles in rows:
      t = result.timing
      sampled = " / ".join(f"{result.rss_at(f):,.0f}" for f in (0.1, 0.25, 0.5, 0.75, 0.9))
      print(
        f"| {label} | {result.megapixels:.2f} | {tiles} | {t.seconds:.1f} | "
        f"{t.cpu_seconds:.1f} | {t.peak_rss_mb:,.0f} MB | {sampled} MB |"
      )
    print()
    for blend in BLENDS:
      t = memory[blend].timing
      above = t.peak_rss_mb - floor.timing.peak_rss_mb
      growth = memory[blend].rss_at(0.75) - memory[blend].rss_at(0.25)
      verdict = "met" if t.peak_rss_mb <= TARGET_MB else "NOT met"
      print(
        f"- {big_mp:.3g} MP, {blend}: peak {t.peak_rss_mb:,.0f} MB (sampled highest at "
        f"{100 * memory[blend].peak_at():.0f}% of the wall time), {above:,.0f} MB above the "
        f"floor ({above / big_mp:.1f} MB per MP); target {TARGET_MB:,} MB {verdict}; "
        f"{big_tiles / t.seconds:.1f} tiles/s over the whole run; RSS grew {growth:,.0f} MB "
        f"from 25% to 75% of the wall time, {1024 * growth / (big_tiles / 2):.1f} KB per tile "
        "had the tiles been inferred evenly over the run"
      )
    if pieces:
      print(
        f"- pieces, mean of {pieces['sampled']} tiles of the {big_mp:.3g} MP image (default "
        "model): "
        + "; ".join(
          f"{blend} {pieces[blend][0] / 1024:.1f} KB compressed, {pieces[blend][1] / 1024:.1f} "
          f"KB pickled, x {big_tiles:,} tiles = {pieces[blend][1] * big_tiles / 2**20:,.0f} MB"
          for blend in BLENDS
        )
      )
  print(f"\nwall time of this benchmark: {time.perf_counter() - began:.0f} s")
  if args.keep:
    print(f"inputs, outputs and logs in {work}")
  else:
    shutil.rmtree(work, ignore_errors=True)
  for problem in problems:
    print(f"PROBLEM {problem}", file=sys.stderr)
  return 1 if problems else 0


def _default_model_dir() -> str:
  from segbeam.model import defaults

  return defaults.default_model_dir()


if __name__ == "__main__":
  sys.exit(main())
