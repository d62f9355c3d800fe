"""Seams and cost of the two ways tiles are put together (`segbeam run --tile-blend`).

For each tile size and overlap, over sample photos at native resolution: how often the stitched
mask agrees with the same network run once on the whole photo (edge-padded to where the tiles
reach), with each tile's centre kept (`centre`) or probabilities blended with Gaussian weights
(`gaussian`); and what a tile costs on the CPU to reduce to its piece and stitch, and the bytes
per image pixel the pieces carry to the stitching.

The network is the embedded default model's, rebuilt to take any multiple of 32 (the embedded
export's pixels signature is fixed at 128x128; its variables are loaded by name into the same
architecture, and the rebuilt network must give the export's probabilities at 128x128).

  python bench/tile_seams.py [--photos 10] [--sizes 128:32,128:64,256:64]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

PHOTOS = "../shared/data/oxford-pets-sample/images"


def any_size_default(export_dir: str) -> str:
  """The embedded default model exported again with a pixels signature of any multiple of 32."""
  import tensorflow as tf

  from segbeam.model import contract
  from segbeam.model import defaults
  from segbeam.model import export
  from segbeam.model import unet

  source = defaults.default_model_dir()
  metadata = contract.read_metadata(source)
  loaded = tf.saved_model.load(source)
  by_name = {v.name.removesuffix(":0"): v for v in loaded._all_variables}
  network = unet.build_unet(metadata.unet_config)
  for weight in network.weights:
    weight.assign(by_name[weight.path].numpy())
  probe = np.random.default_rng(0).uniform(0, 255, (1, 128, 128, 3)).astype(np.float32)
  expected = loaded.signatures["predict_pixels"](pixels=tf.constant(probe))["probabilities"]
  got = tf.nn.softmax(network(probe, training=False), axis=-1)
  assert np.abs(expected.numpy() - got.numpy()).max() < 1e-4, "the rebuilt network differs"
  export.export_model(
    network, metadata.unet_config, export_dir, label_map=metadata.labels, name="default-any-size"
  )
  return export_dir


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--photos", type=int, default=10, help="sample photos, evenly spaced")
  parser.add_argument("--sizes", default="128:32,128:64,256:64", help="tile:overlap,...")
  args = parser.parse_args()

  from segbeam.model import export as export_lib
  from segbeam.pipeline import tiling

  paths = sorted(glob.glob(os.path.join(PHOTOS, "*.jpg")))
  paths = paths[:: max(1, len(paths) // args.photos)][: args.photos]
  with tempfile.TemporaryDirectory() as root:
    model = export_lib.LoadedExport(any_size_default(os.path.join(root, "export")))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{len(paths)} photos at native resolution, the default network at any size\n")
    print("| tile:overlap | blend | agrees with whole | min | piece+stitch ms/tile | piece B/px |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
      tile, overlap = map(int, size.split(":"))
      stats = {blend: ([], [], [], 0) for blend in ("centre", "gaussian")}
      for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        plan = tiling.TilePlan(*image.shape[:2], tile, overlap, align=32)
        padded = np.pad(
          image,
          ((0, plan.padded_height - plan.height), (0, plan.padded_width - plan.width), (0, 0)),
          mode="edge",
        )
        whole = model.predict_pixels(padded[None].astype(np.float32))[0]
        whole = np.argmax(whole[: plan.height, : plan.width], axis=-1)
        tiles = list(plan.tiles())
        predictions = model.predict_pixels(np.stack([plan.cut(image, t) for t in tiles]))
        for blend, stitcher in (
          ("centre", tiling.CentreStitcher(plan)),
          ("gaussian", tiling.GaussianStitcher(plan, predictions.shape[-1])),
        ):
          agree, seconds, piece_bytes, _ = stats[blend]
          start = time.process_time()
          pieces = [stitcher.piece(plan, t, p) for t, p in zip(tiles, predictions)]
          for piece in sorted(pieces, key=lambda p: (p.tile.top, p.tile.left)):
            stitcher.add_piece(piece)
          mask = stitcher.finish()
          seconds.append((time.process_time() - start) / len(tiles))
          agree.append(float(np.mean(mask == whole)))
          piece_bytes.append(sum(len(p.data) for p in pieces) / mask.size)
      for blend, (agree, seconds, piece_bytes, _) in stats.items():
        print(
          f"| {tile}:{overlap} | {blend} | {np.mean(agree):.4f} | {np.min(agree):.4f} | "
          f"{1000 * np.mean(seconds):.2f} | {np.mean(piece_bytes):.2f} |"
        )


if __name__ == "__main__":
  main()
