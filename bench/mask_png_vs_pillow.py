"""segbeam's own mask PNG encoder (pipeline/mask_png.py) against Pillow's PNG writer, in ONE run.

Issue 21, point 7: is the hand-written encoder worth keeping, or is Pillow with zlib's run-length
strategy (`compress_type=3`, zlib.Z_RLE; Pillow passes it to deflateInit2 as the strategy) as
fast and as small? On real masks:
  - trimaps: the --trimaps PNGs (Oxford-IIIT Pet sample, values 1..3, minus 1 -> classes 0..2),
    at their own sizes;
  - blobs: --blobs synthetic prediction-like masks at --blob-size (default 500x375): background,
    a few irregular pet blobs (thresholded smoothed noise plus ellipses) and a band of the third
    class along their edges, as an argmax of a U-Net upsampled to the photo gives.
Encoders (Pillow's time includes Image.fromarray, as a caller would pay it):
  mask_png                       zlib level 1, Z_RLE, memLevel 9, no row filter (what segbeam uses)
  pillow_l1_rle                  compress_level=1, compress_type=3: mask_png's level and strategy
                                 (Pillow still picks a filter per row; it has no option for that)
  pillow_rle                     compress_type=3 at Pillow's default level
  pillow_l1                      compress_level=1, default strategy (the earlier comparison)
  pillow_default                 Image.save(format="PNG") with nothing set (level 6)
  pillow_optimize                optimize=True (level 9)
  pillow_P_l1_rle                pillow_l1_rle on the mask as a palette (mode P) image, which
                                 Pillow writes without row filters: a diagnostic of what the
                                 filter choice costs, not a drop-in (a palette PNG with a PLTE
                                 chunk; Pillow decodes it to the same indices, other readers
                                 such as tf.io.decode_png to palette colours)
Every encoder's output is decoded with Pillow and compared with the mask, for every mask.

Timing: --rounds rounds; in each, every mask is encoded --reps times in a row by each encoder, the
encoders' order rotating from mask to mask (interleaved, so drift hits all alike). Per round and
encoder: the mean time per mask over the set. Printed: the median over rounds, the spread
(min-max over rounds, and (max-min)/median), bytes per mask, and the ratios to mask_png per round
(median and min-max). Noise here is the spread between rounds: an encoder is "within noise" of
mask_png when its time ratio's min-max range over the rounds covers 1.0.

  python bench/mask_png_vs_pillow.py [--rounds 7] [--reps 5] [--blobs 100]
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import statistics
import sys
import time
import zlib

import numpy as np
import PIL
from PIL import Image
from PIL import features

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  # the CPU's name

from segbeam.pipeline import mask_png  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_TRIMAPS = os.path.join(_HERE, "..", "..", "shared", "data", "oxford-pets-sample", "trimaps")


_GRAY_PALETTE = list(range(256)) * 3


def _pillow(mode: str = "L", **options):
  def encode(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(mask, "L")
    if mode == "P":  # same bytes, a palette image: Pillow writes those rows unfiltered
      image = image.copy()
      image.putpalette(_GRAY_PALETTE)  # makes it mode P without touching the pixels
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()

  return encode


ENCODERS = {
  "mask_png": mask_png.encode,
  "pillow_l1_rle": _pillow(compress_level=1, compress_type=3),
  "pillow_rle": _pillow(compress_type=3),
  "pillow_l1": _pillow(compress_level=1),
  "pillow_default": _pillow(),
  "pillow_optimize": _pillow(optimize=True),
  "pillow_P_l1_rle": _pillow("P", compress_level=1, compress_type=3),
}
_MODE = dict.fromkeys(ENCODERS, "L") | {"pillow_P_l1_rle": "P"}


def load_trimaps(folder: str, limit: int | None) -> list[np.ndarray]:
  paths = sorted(glob.glob(os.path.join(folder, "*.png")))[:limit]
  if not paths:
    sys.exit(f"no trimaps in {folder} (--trimaps)")
  return [np.ascontiguousarray(np.asarray(Image.open(p).convert("L")) - 1) for p in paths]


def _smooth_noise(rng, height: int, width: int, cell: int) -> np.ndarray:
  """Bilinear upsampling of a coarse random grid: smooth, blob-shaped level sets."""
  coarse = rng.random((height // cell + 2, width // cell + 2))
  ys, xs = np.arange(height) / cell, np.arange(width) / cell
  y0, x0 = ys.astype(int), xs.astype(int)
  fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
  a, b = coarse[y0][:, x0], coarse[y0][:, x0 + 1]
  c, d = coarse[y0 + 1][:, x0], coarse[y0 + 1][:, x0 + 1]
  return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def make_blobs(count: int, height: int, width: int, seed: int = 21) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height, :width]
  masks = []
  for _ in range(count):
    pet = np.zeros((height, width), bool)
    for _ in range(rng.integers(1, 4)):  # one to three ellipses
      cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
      ry, rx = rng.uniform(0.1, 0.35) * height, rng.uniform(0.1, 0.35) * width
      pet |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    pet ^= _smooth_noise(rng, height, width, int(rng.integers(12, 40))) > rng.uniform(0.8, 0.9)
    edge = np.zeros_like(pet)  # the third class: a 1-3 px band where pet meets background
    for shift in range(1, int(rng.integers(2, 4))):
      edge[shift:] |= pet[shift:] != pet[:-shift]
      edge[:, shift:] |= pet[:, shift:] != pet[:, :-shift]
    mask = np.where(pet, 0, 1).astype(np.uint8)
    mask[edge] = 2
    masks.append(mask)
  return masks


def check_roundtrip(name: str, masks: list[np.ndarray]) -> dict[str, float]:
  """Every encoder decodes (Pillow) to the identical array; returns mean bytes per mask."""
  sizes = {}
  for encoder, encode in ENCODERS.items():
    total = 0
    for i, mask in enumerate(masks):
      data = encode(mask)
      total += len(data)
      decoded = Image.open(io.BytesIO(data))
      if (
        decoded.format != "PNG"
        or decoded.mode != _MODE[encoder]
        or not np.array_equal(np.asarray(decoded), mask)
      ):
        sys.exit(f"{name}[{i}]: {encoder} does not decode to the mask")
    sizes[encoder] = total / len(masks)
  return sizes


def time_rounds(masks: list[np.ndarray], rounds: int, reps: int) -> dict[str, list[float]]:
  """Seconds per mask, per encoder, one value per round."""
  names = list(ENCODERS)
  per_round = {name: [] for name in names}
  for _ in range(rounds):
    spent = dict.fromkeys(names, 0)
    for i, mask in enumerate(masks):
      order = names[i % len(names) :] + names[: i % len(names)]
      for name in order:
        encode = ENCODERS[name]
        start = time.perf_counter_ns()
        for _ in range(reps):
          encode(mask)
        spent[name] += time.perf_counter_ns() - start
    for name in names:
      per_round[name].append(spent[name] / 1e9 / reps / len(masks))
  return per_round


def report(name: str, masks: list[np.ndarray], rounds: int, reps: int) -> None:
  shapes = {m.shape for m in masks}
  pixels = sum(m.size for m in masks) / len(masks)
  print(
    f"\n== {name}: {len(masks)} masks, {len(shapes)} distinct shapes, "
    f"mean {pixels / 1e3:.0f} kpx; {rounds} rounds x {reps} reps per mask per encoder"
  )
  sizes = check_roundtrip(name, masks)
  print("   all encoders decode (Pillow) to the identical mask, every mask")
  times = time_rounds(masks, rounds, reps)
  base = times["mask_png"]
  base_spread = (max(base) - min(base)) / statistics.median(base)
  print(
    f"   {'encoder':<16} {'ms/mask median':>14} {'min-max ms':>15} {'spread':>7} "
    f"{'bytes/mask':>10} {'bytes ratio':>11} {'time ratio med':>14} {'min-max':>11}  verdict"
  )
  for encoder, values in times.items():
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median
    ratios = [v / b for v, b in zip(values, base)]  # same round, same masks
    ratio = statistics.median(ratios)
    if encoder == "mask_png":
      verdict = "(reference)"
    elif min(ratios) <= 1 <= max(ratios):
      verdict = "within noise"
    else:
      verdict = "slower" if ratio > 1 else "faster"
    low, high = min(values) * 1e3, max(values) * 1e3
    print(
      f"   {encoder:<16} {median * 1e3:14.3f} {low:7.3f}-{high:<7.3f} {spread:7.1%}"
      f" {sizes[encoder]:10.0f} {sizes[encoder] / sizes['mask_png']:11.3f}"
      f" {ratio:14.2f} {min(ratios):5.2f}-{max(ratios):<5.2f}  {verdict}"
    )
  print(
    f"   noise = the spread between rounds: mask_png's time {base_spread:.1%} (machine drift;"
    " the ratios, taken within each round, drift less); within noise = the ratio's min-max"
    " over rounds covers 1.00"
  )


def machine() -> str:
  model = throughput.cpu_model()
  affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
  return f"{model}, {os.cpu_count()} CPUs ({affinity} usable)"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trimaps", default=_TRIMAPS)
  parser.add_argument("--limit", type=int, default=None, help="at most this many trimaps")
  parser.add_argument("--blobs", type=int, default=100)
  parser.add_argument("--blob-size", default="500x375", help="WIDTHxHEIGHT")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  width, height = (int(v) for v in args.blob_size.lower().split("x"))
  pillow_zlib = (
    f"zlib-ng {features.version('zlib_ng')}"
    if features.check_feature("zlib_ng")
    else f"zlib {features.version('zlib')}"
  )
  print(
    f"machine: {machine()}; Python {platform.python_version()}, numpy {np.__version__}; "
    f"mask_png deflates with Python's zlib {zlib.ZLIB_RUNTIME_VERSION}, "
    f"Pillow {PIL.__version__} with its own {pillow_zlib}; one thread"
  )
  report("trimaps", load_trimaps(args.trimaps, args.limit), args.rounds, args.reps)
  report(f"blobs {width}x{height}", make_blobs(args.blobs, height, width), args.rounds, args.reps)


if __name__ == "__main__":
  main()
