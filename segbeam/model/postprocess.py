"""From the exported model's class probabilities to a class mask at the image's own size.

Shared by `segbeam evaluate` and the pipeline, so their masks (and so their metrics) agree.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def class_mask(probabilities: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
  """float32 [h, w, C] probabilities -> (uint8 [height, width] class indices, mean confidence).

  The probability maps are resized bilinearly to the original size and the mask is the argmax
  there: smoother edges than enlarging a small argmax mask. Confidence is the mean over pixels
  of the winning probability.

  Up to four classes travel as one 8-bit RGB(A) image through a single resize (the costly step,
  about 4x faster than float planes); probabilities closer than 1/255 may then tie, which only
  moves a boundary pixel. More classes take the float path.
  """
  if probabilities.ndim != 3:
    raise ValueError(f"expected [h, w, classes] probabilities, got shape {probabilities.shape}")
  num_classes = probabilities.shape[-1]
  size = (int(width), int(height))
  if num_classes <= 4:
    return _class_mask_8bit(probabilities, size)
  return _class_mask_float(probabilities, size)


def _class_mask_8bit(probabilities: np.ndarray, size: tuple[int, int]):
  num_classes = probabilities.shape[-1]
  planes = np.zeros(probabilities.shape[:2] + (3 if num_classes <= 3 else 4,), np.uint8)
  planes[..., :num_classes] = np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0)
  image = Image.fromarray(planes, "RGB" if planes.shape[-1] == 3 else "RGBA")
  if image.size != size:
    image = image.resize(size, Image.Resampling.BILINEAR)
  return _argmax_planes([np.asarray(plane) for plane in image.split()[:num_classes]], 255.0)


def _argmax_planes(planes, scale: float):
  """Argmax and mean maximum over separate contiguous planes: elementwise passes, cheaper than
  an argmax along an interleaved last axis."""
  best = planes[0].copy()
  mask = np.zeros(best.shape, np.uint8)
  for index, plane in enumerate(planes[1:], start=1):
    better = plane > best
    mask[better] = index
    np.maximum(best, plane, out=best)
  return mask, float(best.mean(dtype=np.float64)) / scale


def _class_mask_float(probabilities: np.ndarray, size: tuple[int, int]):
  planes = []
  for index in range(probabilities.shape[-1]):
    channel = Image.fromarray(np.ascontiguousarray(probabilities[..., index], np.float32), "F")
    if channel.size != size:
      channel = channel.resize(size, Image.Resampling.BILINEAR)
    planes.append(np.asarray(channel))
  return _argmax_planes(planes, 1.0)
