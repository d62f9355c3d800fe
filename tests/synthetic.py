"""Small generated images and trimaps for tests: no binary fixtures in the repository."""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

PET, BACKGROUND, BORDER = 1, 2, 3  # Oxford-IIIT Pet trimap values.


def pet_scene(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """An RGB image of a bright ellipse on a noisy dark background, and its trimap."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width]
  cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
  ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
  radius = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
  trimap = np.full((height, width), BACKGROUND, np.uint8)
  trimap[radius <= 1.15] = BORDER
  trimap[radius <= 0.85] = PET
  image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
  colour = rng.integers(150, 255, 3).astype(np.uint8)
  image[radius <= 1.0] = colour
  return image, trimap


def texture_scene(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A gray RGB image with discs of a fine checkerboard (2-pixel squares of 0 and 255, the same
  mean as the gray), and its trimap: the discs can be told from the gray at full resolution
  only; shrunk 4 times they are gray too."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size]
  checker = ((yy // 2 + xx // 2) % 2 * 255).astype(np.uint8)
  image = np.full((size, size), 127, np.uint8)
  trimap = np.full((size, size), BACKGROUND, np.uint8)
  for _ in range(6):
    cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(20, 60)
    distance = np.hypot(yy - cy, xx - cx)
    trimap[(distance <= r + 2) & (trimap == BACKGROUND)] = BORDER
    trimap[distance <= r - 2] = PET
    image[distance <= r] = checker[distance <= r]
  return np.repeat(image[..., None], 3, axis=-1), trimap


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
  buffer = io.BytesIO()
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def write_dataset(
  root: str, sizes: Sequence[tuple[int, int]], image_format: str = "JPEG", extension: str = ".jpg"
) -> tuple[str, str, list[str]]:
  """Writes root/images/NAME.jpg and root/masks/NAME.png; returns (images, masks, names)."""
  images_dir, masks_dir = os.path.join(root, "images"), os.path.join(root, "masks")
  os.makedirs(images_dir, exist_ok=True)
  os.makedirs(masks_dir, exist_ok=True)
  names = []
  for index, (width, height) in enumerate(sizes):
    name = f"pet_{index:03d}"
    image, trimap = pet_scene(width, height, seed=index)
    with open(os.path.join(images_dir, name + extension), "wb") as f:
      f.write(encode(image, image_format))
    with open(os.path.join(masks_dir, name + ".png"), "wb") as f:
      f.write(encode(trimap, "PNG"))
    names.append(name)
  return images_dir, masks_dir, names
