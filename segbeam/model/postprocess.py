"""From the exported model's class probabilities to a class mask at the image's own size.

Shared by `segbeam evaluate` and the pipeline, so their masks (and so their metrics) agree.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image


def class_mask(
  probabilities: np.ndarray, height: int, width: int, threshold: Optional[float] = None
) -> tuple[np.ndarray, float]:
  """float32 [h, w, C] probabilities -> (uint8 [height, width] class indices, mean confidence).

  The mask is the argmax of the probability maps resized bilinearly to the original size
  (smoother edges than enlarging a small argmax mask); confidence is the mean over those pixels
  of the winning probability. Enlarging, the usual case, takes an exact shortcut
  (`_enlarged_class_mask`); shrinking interpolates every plane with Pillow's antialiasing filter.

  Args:
    threshold: for two classes (a single sigmoid channel served as background, foreground):
      class 1 where its resized probability exceeds it, instead of the argmax (0.5).
  """
  if probabilities.ndim != 3:
    raise ValueError(f"expected [h, w, classes] probabilities, got shape {probabilities.shape}")
  if probabilities.shape[-1] > 255:
    raise ValueError(f"at most 255 classes fit an 8-bit mask, got {probabilities.shape[-1]}")
  height, width = int(height), int(width)
  if threshold is not None:
    return _thresholded_class_mask(probabilities, height, width, threshold)
  if height >= probabilities.shape[0] and width >= probabilities.shape[1]:
    return _enlarged_class_mask(probabilities, height, width)
  return _shrunk_class_mask(probabilities, height, width)


def enlarged_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """A uint8 class mask at `height` x `width`, resized with nearest neighbour: classes are
  never interpolated (a mask segmented at a fraction of an image's size, `segbeam run
  --scale`)."""
  if mask.shape == (height, width):
    return mask
  return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
  """Pixels of each class in a uint8 mask, as int64 [num_classes]."""
  if num_classes <= 16:
    # One compare-and-count pass per class over the uint8 mask: for a few classes, several
    # times faster than bincount, which first widens every pixel to a 64-bit index.
    return np.array([np.count_nonzero(mask == index) for index in range(num_classes)], np.int64)
  return np.bincount(mask.reshape(-1), minlength=num_classes)[:num_classes]


def _sample_positions(out_size: int, in_size: int):
  """Bilinear sampling along one axis with half-pixel centres and clamped edges (as Pillow and
  TensorFlow resize): for each output index, the two source indices and the weight of the
  second."""
  centres = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
  low = centres.astype(np.intp)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, (centres - low).astype(np.float32)


def _argmax_planes(planes) -> tuple[np.ndarray, np.ndarray]:
  """(first index of the maximum, the maximum) over a sequence of equal-shaped planes;
  elementwise passes, cheaper than an argmax along a short interleaved last axis."""
  best = np.array(planes[0], copy=True)
  winner = np.zeros(best.shape, np.uint8)
  for index in range(1, len(planes)):
    better = planes[index] > best
    winner[better] = index
    np.maximum(best, planes[index], out=best)
  return winner, best


# From this many output rows per source row on (photos of a few MP and up), boundary pixels are
# mixed a source row at a time (`_mix_boundary_by_source_row`): fewer gathers per pixel, a
# few numpy calls more per row. BENCHMARKS.md has the crossover.
_ROWS_PER_SOURCE_ROW_FOR_BLOCKS = 12


def _enlarged_class_mask(probabilities: np.ndarray, height: int, width: int):
  """Exactly the argmax of the bilinearly enlarged probabilities, computed only where needed.

  A pixel of the enlarged image mixes the four source pixels around it with non-negative
  weights. If one class wins at all four, it wins the mixture too (a convex combination keeps
  the order), so only pixels whose four sources disagree are interpolated; that is the few
  percent along class boundaries. The mean confidence is sum(bilinear(max probability)) over
  all pixels, a separable sum, corrected at those boundary pixels. Each step is one numpy call
  over a whole array: this runs once per image, holding Python's GIL between calls.
  """
  source_height, source_width, num_classes = probabilities.shape
  # The class planes and, last, the winning probability: interpolated together at boundaries.
  planes = np.empty((num_classes + 1, source_height * source_width), np.float32)
  planes[:num_classes] = np.moveaxis(probabilities, -1, 0).reshape(num_classes, -1)
  winner, planes[num_classes] = _argmax_planes(planes[:num_classes])
  winner = winner.reshape(source_height, source_width)
  top = planes[num_classes].reshape(source_height, source_width)

  # Class of each source cell (a pixel with its right, lower and diagonal neighbours, edges
  # repeated), or 255 where they disagree. On the last row the diagonal neighbour is the right
  # one, on the last column the lower one: already compared.
  agree = np.ones((source_height, source_width), bool)
  agree[:, :-1] = winner[:, :-1] == winner[:, 1:]
  agree[:-1, :] &= winner[:-1, :] == winner[1:, :]
  agree[:-1, :-1] &= winner[:-1, :-1] == winner[1:, 1:]
  cell_class = winner  # in place: the winners are not needed again
  cell_class[~agree] = 255

  rows = rows_low, rows_high, rows_weight = _sample_positions(height, source_height)
  cols = cols_low, cols_high, cols_weight = _sample_positions(width, source_width)
  # Columns first: the second gather then copies whole rows.
  cell_columns = np.take(cell_class, cols_low, axis=1)
  mask = np.take(cell_columns, rows_low, axis=0)

  row_mass = np.bincount(rows_low, 1 - rows_weight, source_height) + np.bincount(
    rows_high, rows_weight, source_height
  )
  col_mass = np.bincount(cols_low, 1 - cols_weight, source_width) + np.bincount(
    cols_high, cols_weight, source_width
  )
  confidence_sum = float(row_mass @ top.astype(np.float64) @ col_mass)
  if height >= _ROWS_PER_SOURCE_ROW_FOR_BLOCKS * source_height:
    correction = _mix_boundary_by_source_row(mask, cell_columns, planes, rows, cols)
  else:
    correction = _mix_boundary_pixels(mask, planes, source_width, rows, cols)
  return mask, (confidence_sum + correction) / (height * width)


def _mix_boundary_pixels(mask, planes, source_width: int, rows, cols) -> float:
  """Sets every boundary pixel (255) of `mask` to its class, the planes mixed pixel by pixel;
  returns the confidence sum's correction there. `rows`, `cols`: `_sample_positions`."""
  rows_low, rows_high, rows_weight = rows
  cols_low, cols_high, cols_weight = cols
  flat_mask = mask.reshape(-1)
  boundary = np.flatnonzero(flat_mask == 255)
  if not boundary.size:
    return 0.0
  y, x = np.divmod(boundary, mask.shape[1])
  row_weight, col_weight = rows_weight[y], cols_weight[x]
  top_row = rows_low[y] * source_width
  bottom_row = rows_high[y] * source_width
  left, right = cols_low[x], cols_high[x]
  # Every plane at once, term by term in the order of a scalar bilinear sum.
  mixed = (1 - row_weight) * (1 - col_weight) * np.take(planes, top_row + left, axis=1)
  mixed += (1 - row_weight) * col_weight * np.take(planes, top_row + right, axis=1)
  mixed += row_weight * (1 - col_weight) * np.take(planes, bottom_row + left, axis=1)
  mixed += row_weight * col_weight * np.take(planes, bottom_row + right, axis=1)
  boundary_class, boundary_top = _argmax_planes(mixed[:-1])
  flat_mask[boundary] = boundary_class
  return float(boundary_top.sum(dtype=np.float64) - mixed[-1].sum(dtype=np.float64))


def _mix_boundary_by_source_row(mask, cell_columns, planes, rows, cols) -> float:
  """As `_mix_boundary_pixels`, a source row at a time: the output rows a source row covers
  (contiguous) by its boundary columns, whose four source pixels are the same in every one of
  those rows, so they are gathered once per column instead of once per pixel. The same float32
  operations per pixel in the same order, and the confidence terms summed in the same
  (row-major) order: the same mask and confidence, bit for bit."""
  rows_low, rows_high, rows_weight = rows
  cols_low, cols_high, cols_weight = cols
  source_width = planes.shape[1] // cell_columns.shape[0]
  boundary_columns = cell_columns == 255
  first_rows = np.searchsorted(rows_low, np.arange(cell_columns.shape[0] + 1))
  rows_a, cols_a = 1 - rows_weight, 1 - cols_weight
  tops, mixed_tops = [], []
  for source_row in np.flatnonzero(boundary_columns.any(axis=1)):
    y0, y1 = first_rows[source_row], first_rows[source_row + 1]
    x = np.flatnonzero(boundary_columns[source_row])
    top_row, bottom_row = source_row * source_width, rows_high[y0] * source_width
    left, right = cols_low[x], cols_high[x]
    row_a, row_b = rows_a[y0:y1, None], rows_weight[y0:y1, None]
    col_a, col_b = cols_a[x], cols_weight[x]
    mixed = (row_a * col_a) * np.take(planes, top_row + left, axis=1)[:, None, :]
    mixed += (row_a * col_b) * np.take(planes, top_row + right, axis=1)[:, None, :]
    mixed += (row_b * col_a) * np.take(planes, bottom_row + left, axis=1)[:, None, :]
    mixed += (row_b * col_b) * np.take(planes, bottom_row + right, axis=1)[:, None, :]
    boundary_class, boundary_top = _argmax_planes(mixed[:-1])
    mask[y0:y1, x] = boundary_class
    tops.append(boundary_top.reshape(-1))
    mixed_tops.append(mixed[-1].reshape(-1))
  if not tops:
    return 0.0
  return float(
    np.concatenate(tops).sum(dtype=np.float64) - np.concatenate(mixed_tops).sum(dtype=np.float64)
  )


def _shrunk_class_mask(probabilities: np.ndarray, height: int, width: int):
  planes = [
    _resized_plane(probabilities[..., index], height, width)
    for index in range(probabilities.shape[-1])
  ]
  mask, top = _argmax_planes(planes)
  return mask, float(top.mean(dtype=np.float64))


def _resized_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
  image = Image.fromarray(np.ascontiguousarray(plane, np.float32), "F")
  return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def _thresholded_class_mask(probabilities: np.ndarray, height: int, width: int, threshold: float):
  if probabilities.shape[-1] != 2:
    raise ValueError(f"a threshold needs two classes, got {probabilities.shape[-1]}")
  foreground = _resized_plane(probabilities[..., 1], height, width)
  mask = foreground > threshold
  confidence = np.where(mask, foreground, 1.0 - foreground)
  return mask.astype(np.uint8), float(confidence.mean(dtype=np.float64))
