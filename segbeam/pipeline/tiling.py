"""Overlap-tile geometry and stitching: a large image cut into model-sized tiles, and the tiles'
predictions put back together into one full-resolution mask (`segbeam run --tile`, whose
Beam side is `segbeam.pipeline.tiled`).

The U-Net paper's overlap-tile strategy: tiles overlap, so that the pixels a tile's prediction
is kept for are away from its inner edges, where the network sees less context. Two ways to put
the predictions together:
- `CentreStitcher`: each pixel takes the prediction of the one tile whose centre region holds
  it (the overlap split down its middle): class labels written straight into the mask, so its
  memory is the mask's, one byte a pixel.
- `GaussianStitcher`: each pixel takes the average of the probabilities of every tile over it,
  weighted by a Gaussian centred on each tile (sigma 1/8 of the tile, as MONAI and nnU-Net
  do): smoother across tile edges, at the cost of carrying each tile's probabilities (two bytes
  a class and pixel) to the stitching, and summing a band of rows of them there.
Each tile's contribution travels as a compressed `Piece`, made where the tile was inferred.

A tile plan covers images smaller than a tile along an axis by padding them to one tile there
(`TilePlan.padded_height`, `padded_width`); what a tile predicts for padding is never kept.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator, Optional

import numpy as np


def starts(length: int, tile: int, stride: int, flush: bool = True) -> list[int]:
  """Tile origins along one axis of `length` pixels: every `stride` pixels until a tile reaches
  the end; with `flush` the last one moved back flush with the end (so no tile reaches past
  it), without it every origin a multiple of `stride` (the last tile may reach past the end,
  into padding). One tile at 0 where the axis is no longer than a tile."""
  if length <= tile:
    return [0]
  origins = list(range(0, length - tile, stride))
  origins.append(length - tile if flush else origins[-1] + stride)
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

  With `align`, every tile's origin is a multiple of it: a network that downsamples by N
  gives the same prediction for a pixel seen from two origins only where they differ by a
  multiple of N (32 for a U-Net's five halvings), so aligned tiles agree with the network run
  on the whole image. The stride is then rounded down to a multiple of `align` (more overlap,
  never less), and the last tiles may reach past the image into padding instead of being
  moved back flush with its end.

  Raises ValueError for a plan no model can run: a tile under 1 pixel, or not a multiple of
  `multiple_of` (a U-Net's input must divide by 2 for each downsampling: 32 for five), an
  overlap that is negative or not smaller than the tile, an image without pixels.
  """

  height: int
  width: int
  tile: int
  overlap: int
  multiple_of: int = 1
  align: int = 1

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
  def aligned(self) -> bool:
    return self.align > 1 and (self.tile - self.overlap) >= self.align

  @property
  def stride(self) -> int:
    stride = self.tile - self.overlap
    return stride // self.align * self.align if self.aligned else stride

  def _starts(self, length: int) -> list[int]:
    return starts(length, self.tile, self.stride, flush=not self.aligned)

  @property
  def padded_height(self) -> int:
    """The height the tiles cover: the image's, or more where they reach past it."""
    return self._starts(self.height)[-1] + self.tile

  @property
  def padded_width(self) -> int:
    return self._starts(self.width)[-1] + self.tile

  def tiles(self) -> Iterator[Tile]:
    """Every tile, row by row; their kept regions cover each pixel of the image exactly once."""
    rows = self._starts(self.height)
    columns = self._starts(self.width)
    kept_rows = _kept(rows, self.tile, self.height)
    kept_columns = _kept(columns, self.tile, self.width)
    for top, (keep_top, keep_bottom) in zip(rows, kept_rows):
      for left, (keep_left, keep_right) in zip(columns, kept_columns):
        yield Tile(top, left, keep_top, keep_bottom, keep_left, keep_right)

  def count(self) -> int:
    return len(self._starts(self.height)) * len(self._starts(self.width))

  def cut(self, image: np.ndarray, tile: Tile) -> np.ndarray:
    """`tile`'s pixels of `image` [height, width, ...], padding past the image's edges by
    repeating its last row or column (what a tile predicts there is never kept)."""
    window = image[tile.top : tile.top + self.tile, tile.left : tile.left + self.tile]
    missing = ((0, self.tile - window.shape[0]), (0, self.tile - window.shape[1]))
    if missing[0][1] or missing[1][1]:
      window = np.pad(window, missing + ((0, 0),) * (window.ndim - 2), mode="edge")
    return window


@dataclasses.dataclass(frozen=True)
class Piece:
  """What one tile's prediction contributes to its image's mask, small enough to travel
  between workers: a stitcher's `piece`, handed to the same kind of stitcher's `add_piece`.

  Attributes:
    tile: the tile it comes from.
    shape: the shape of `data`'s array.
    data: that array, zlib-compressed: the kept region's uint8 classes (`CentreStitcher`), or
      the probabilities of the tile's part inside the image as uint16 steps of 1/65535
      (`GaussianStitcher`: steps of 1/255 would decide the class of pixels whose two best
      classes are that close).
    dtype: the array's type.
    confidence_sum: the sum of the winning probability over the kept region (`CentreStitcher`).
  """

  tile: Tile
  shape: tuple[int, ...]
  data: bytes
  confidence_sum: float = 0.0
  dtype: str = "uint8"

  def array(self) -> np.ndarray:
    return np.frombuffer(zlib.decompress(self.data), self.dtype).reshape(self.shape)


def _packed(array: np.ndarray) -> bytes:
  # Level 1: class maps shrink tens of times at a fraction of the tile's inference time.
  return zlib.compress(np.ascontiguousarray(array).tobytes(), 1)


def _classes(
  probabilities: np.ndarray, threshold: Optional[float]
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 classes, the winning probability) per pixel: the argmax, or for a single sigmoid
  served as two classes, class 1 above `threshold` (as `postprocess.class_mask`)."""
  if threshold is not None:
    foreground = probabilities[..., 1]
    chosen = foreground > threshold
    return chosen.astype(np.uint8), np.where(chosen, foreground, 1 - foreground)
  return np.argmax(probabilities, axis=-1).astype(np.uint8), np.max(probabilities, axis=-1)


class CentreStitcher:
  """Puts tiles' predictions together by keeping each tile's centre region (`Tile.keep_*`), in
  any order. Its memory is the mask's.

  Args:
    threshold: a single sigmoid's foreground threshold, where the mask is not the argmax.
  """

  def __init__(
    self, plan: TilePlan, num_classes: Optional[int] = None, threshold: Optional[float] = None
  ):
    del num_classes  # what `GaussianStitcher` needs; classes are written as they come here
    self._plan = plan
    self._threshold = threshold
    self.mask = np.zeros((plan.height, plan.width), np.uint8)
    self.confidence_sum = 0.0

  @staticmethod
  def piece(
    plan: TilePlan, tile: Tile, probabilities: np.ndarray, threshold: Optional[float] = None
  ) -> Piece:
    """`probabilities` [tile, tile, classes], `tile`'s prediction, as its `Piece`."""
    rows = slice(tile.keep_top - tile.top, tile.keep_bottom - tile.top)
    columns = slice(tile.keep_left - tile.left, tile.keep_right - tile.left)
    classes, winning = _classes(probabilities[rows, columns], threshold)
    return Piece(tile, classes.shape, _packed(classes), float(winning.sum(dtype=np.float64)))

  def add(self, tile: Tile, probabilities: np.ndarray) -> None:
    self.add_piece(self.piece(self._plan, tile, probabilities, self._threshold))

  def add_piece(self, piece: Piece) -> None:
    tile = piece.tile
    self.mask[tile.keep_top : tile.keep_bottom, tile.keep_left : tile.keep_right] = piece.array()
    self.confidence_sum += piece.confidence_sum

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
  weighted by `gaussian_weights`.

  Tiles come row by row (`TilePlan.tiles`' order; `add_piece` refuses others), so that only
  one band of rows, a tile high, is being summed at a time: rows above the current tile row
  are final and go into the mask. Its memory is the mask's and the band's (tile x width x
  (classes + 1) floats), not the image's probabilities.
  """

  LEVELS = 65535  # a piece's probabilities are uint16 steps of 1/LEVELS

  def __init__(
    self,
    plan: TilePlan,
    num_classes: int,
    sigma_scale: float = 0.125,
    threshold: Optional[float] = None,
  ):
    self._plan = plan
    self._threshold = threshold
    self._weights = gaussian_weights(plan.tile, sigma_scale)
    band = min(plan.tile, plan.height)
    self._sum = np.zeros((band, plan.width, num_classes), np.float32)
    self._total = np.zeros((band, plan.width), np.float32)
    self._band_top = 0  # the image row of the band's first row
    self.mask = np.zeros((plan.height, plan.width), np.uint8)
    self.confidence_sum = 0.0

  @staticmethod
  def piece(plan: TilePlan, tile: Tile, probabilities: np.ndarray, threshold=None) -> Piece:
    """`probabilities` [tile, tile, classes], `tile`'s prediction, as its `Piece`: the part
    inside the image, in steps of 1/LEVELS."""
    bottom = min(tile.top + plan.tile, plan.height) - tile.top
    right = min(tile.left + plan.tile, plan.width) - tile.left
    levels = np.rint(probabilities[:bottom, :right] * GaussianStitcher.LEVELS).astype(np.uint16)
    return Piece(tile, levels.shape, _packed(levels), dtype="uint16")

  def add(self, tile: Tile, probabilities: np.ndarray) -> None:
    self.add_piece(self.piece(self._plan, tile, probabilities))

  def add_piece(self, piece: Piece) -> None:
    tile = piece.tile
    if tile.top < self._band_top:
      raise ValueError(f"tile at row {tile.top} came after the rows from {self._band_top}")
    self._finish_rows(tile.top)
    probabilities = piece.array().astype(np.float32) / self.LEVELS
    height, width = probabilities.shape[:2]
    weights = self._weights[:height, :width]
    rows = slice(tile.top - self._band_top, tile.top - self._band_top + height)
    columns = slice(tile.left, tile.left + width)
    self._sum[rows, columns] += probabilities * weights[..., np.newaxis]
    self._total[rows, columns] += weights

  def _finish_rows(self, until: int) -> None:
    """Rows from the band's top to `until` (no later tile reaches them) into the mask; the
    band moves down to start at `until`."""
    done = min(until, self._plan.height) - self._band_top
    if done <= 0:
      return
    if done > len(self._total) or not self._total[:done].all():  # a tile went missing
      raise ValueError(f"no tile came for some of rows {self._band_top} to {until}")
    blended = self._sum[:done] / self._total[:done, :, np.newaxis]
    classes, winning = _classes(blended, self._threshold)
    self.mask[self._band_top : self._band_top + done] = classes
    self.confidence_sum += float(winning.sum(dtype=np.float64))
    kept = len(self._total) - done  # rows of the band the next tiles still add to
    for array in (self._sum, self._total):
      array[:kept] = array[done:].copy()
      array[kept:] = 0
    self._band_top += done

  def finish(self) -> np.ndarray:
    self._finish_rows(self._plan.height)
    return self.mask
