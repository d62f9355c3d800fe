"""Overlap-tile geometry and stitching: a large image cut into model-sized tiles, and the tiles'
predictions put back together into one full-resolution mask (issue 34; `--tile` is to come).

The U-Net paper's overlap-tile strategy: tiles overlap, so that the pixels a tile's prediction
is kept for are away from its inner edges, where the network sees less context. Two ways to put
the predictions together:
- `CentreStitcher`: each pixel takes the prediction of the one tile whose centre region holds
  it (the overlap split down its middle): class labels written straight into the mask, so its
  memory is the mask's, one byte a pixel.
- `GaussianStitcher`: each pixel takes the average of the probabilities of every tile over it,
  weighted by a Gaussian centred on each tile (sigma 1/8 of the tile, as MONAI and nnU-Net
  do): smoother across tile edges, at 4 bytes per pixel and class plus 4 for the weights.

A tile plan covers images smaller than a tile along an axis by padding them to one tile there
(`TilePlan.padded_height`, `padded_width`); what a tile predicts for padding is never kept.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np


def starts(length: int, tile: int, stride: int) -> list[int]:
  """Tile origins along one axis of `length` pixels: every `stride` pixels, the last one flush
  with the end (so no tile reaches past it); one tile at 0 where the axis is no longer than a
  tile."""
  if length <= tile:
    return [0]
  origins = list(range(0, length - tile, stride))
  origins.append(length - tile)
  return origins


def _kept(origins: list[int], tile: int, length: int) -> list[tuple[int, int]]:
  """Per tile, the span of the axis its prediction is kept for: the overlap with the next tile
  split down its middle; the first and last spans reach the axis's ends."""
  bounds = [0]
  for before, after in zip(origins, origins[1:]):
    bounds.append((after + before + tile) // 2)  # the middle of [after, before + tile)
  bounds.append(length)
  return list(zip(bounds, bounds[1:]))


@dataclasses.dataclass(frozen=True)
class Tile:
  """One tile: its origin in the (padded) image, and the region of the image its prediction is
  kept for by `CentreStitcher` (rows `keep_top:keep_bottom`, columns `keep_left:keep_right`)."""

  top: int
  left: int
  keep_top: int
  keep_bottom: int
  keep_left: int
  keep_right: int


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """How an image of `height` x `width` pixels is cut into square tiles of `tile` pixels, each
  overlapping its neighbours by at least `overlap` pixels.

  Raises ValueError for a plan no model can run: a tile under 1 pixel, or not a multiple of
  `multiple_of` (a U-Net's input must divide by 2 for each downsampling: 32 for five), an
  overlap that is negative or not smaller than the tile, an image without pixels.
  """

  height: int
  width: int
  tile: int
  overlap: int
  multiple_of: int = 1

  def __post_init__(self):
    if self.tile < 1 or self.tile % self.multiple_of:
      raise ValueError(
        f"a tile of {self.tile} pixels: it must be a positive multiple of {self.multiple_of}, "
        "which the model's input needs"
      )
    if not 0 <= self.overlap < self.tile:
      raise ValueError(
        f"an overlap of {self.overlap} pixels: it must be 0 or more and smaller than the tile "
        f"({self.tile})"
      )
    if self.height < 1 or self.width < 1:
      raise ValueError(f"an image of {self.height}x{self.width} pixels has none to tile")

  @property
  def stride(self) -> int:
    return self.tile - self.overlap

  @property
  def padded_height(self) -> int:
    return max(self.height, self.tile)

  @property
  def padded_width(self) -> int:
    return max(self.width, self.tile)

  def tiles(self) -> Iterator[Tile]:
    """Every tile, row by row; their kept regions cover each pixel of the image exactly once."""
    rows = starts(self.padded_height, self.tile, self.stride)
    columns = starts(self.padded_width, self.tile, self.stride)
    kept_rows = _kept(rows, self.tile, self.height)
    kept_columns = _kept(columns, self.tile, self.width)
    for top, (keep_top, keep_bottom) in zip(rows, kept_rows):
      for left, (keep_left, keep_right) in zip(columns, kept_columns):
        yield Tile(top, left, keep_top, keep_bottom, keep_left, keep_right)

  def count(self) -> int:
    return len(starts(self.padded_height, self.tile, self.stride)) * len(
      starts(self.padded_width, self.tile, self.stride)
    )

  def cut(self, image: np.ndarray, tile: Tile) -> np.ndarray:
    """`tile`'s pixels of `image` [height, width, ...], padding past the image's edges by
    repeating its last row or column (what a tile predicts there is never kept)."""
    window = image[tile.top : tile.top + self.tile, tile.left : tile.left + self.tile]
    missing = ((0, self.tile - window.shape[0]), (0, self.tile - window.shape[1]))
    if missing[0][1] or missing[1][1]:
      window = np.pad(window, missing + ((0, 0),) * (window.ndim - 2), mode="edge")
    return window


class CentreStitcher:
  """Puts tiles' predictions together by keeping each tile's centre region (`Tile.keep_*`)."""

  def __init__(self, plan: TilePlan):
    self._plan = plan
    self.mask = np.zeros((plan.height, plan.width), np.uint8)

  def add(self, tile: Tile, probabilities: np.ndarray) -> None:
    """`probabilities` [tile, tile, classes]: `tile`'s prediction."""
    rows = slice(tile.keep_top - tile.top, tile.keep_bottom - tile.top)
    columns = slice(tile.keep_left - tile.left, tile.keep_right - tile.left)
    self.mask[tile.keep_top : tile.keep_bottom, tile.keep_left : tile.keep_right] = np.argmax(
      probabilities[rows, columns], axis=-1
    )

  def finish(self) -> np.ndarray:
    return self.mask


def gaussian_weights(size: int, sigma_scale: float = 0.125) -> np.ndarray:
  """[size, size] float32 weights: a Gaussian centred on the tile, sigma `sigma_scale` of its
  side, scaled to 1 at the centre and kept above 0 at the corners (every pixel some weight)."""
  centre = (size - 1) / 2
  axis = np.exp(-0.5 * ((np.arange(size) - centre) / (sigma_scale * size)) ** 2)
  weights = np.outer(axis, axis).astype(np.float32)
  return np.maximum(weights / weights.max(), np.float32(1e-6))


class GaussianStitcher:
  """Puts tiles' predictions together by averaging every tile's probabilities at each pixel,
  weighted by `gaussian_weights`."""

  def __init__(self, plan: TilePlan, num_classes: int, sigma_scale: float = 0.125):
    self._plan = plan
    self._weights = gaussian_weights(plan.tile, sigma_scale)
    self._sum = np.zeros((plan.height, plan.width, num_classes), np.float32)
    self._total = np.zeros((plan.height, plan.width), np.float32)

  def add(self, tile: Tile, probabilities: np.ndarray) -> None:
    """`probabilities` [tile, tile, classes]: `tile`'s prediction; what lies in padding is
    dropped."""
    bottom = min(tile.top + self._plan.tile, self._plan.height)
    right = min(tile.left + self._plan.tile, self._plan.width)
    rows, columns = slice(0, bottom - tile.top), slice(0, right - tile.left)
    weights = self._weights[rows, columns]
    self._sum[tile.top : bottom, tile.left : right] += (
      probabilities[rows, columns] * weights[..., np.newaxis]
    )
    self._total[tile.top : bottom, tile.left : right] += weights

  def probabilities(self) -> np.ndarray:
    """The blended probabilities [height, width, classes]."""
    return self._sum / self._total[..., np.newaxis]

  def finish(self) -> np.ndarray:
    return np.argmax(self._sum, axis=-1).astype(np.uint8)
