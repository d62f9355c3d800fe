"""From the exported model's class probabilities to a class mask at the image's own size.

Shared by `segbeam evaluate` and the pipeline, so their masks (and so their metrics) agree.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def class_mask(probabilities: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
  """float32 [h, w, C] probabilities -> (uint8 [height, width] class indices, mean confidence).

  Each class's probability map is resized bilinearly to the original size and the mask is the
  argmax there: smoother edges than enlarging a small argmax mask. Channels are visited one at a
  time so memory stays at two float maps of the output size, whatever the class count.
  Confidence is the mean over pixels of the winning probability.
  """
  if probabilities.ndim != 3:
    raise ValueError(f"expected [h, w, classes] probabilities, got shape {probabilities.shape}")
  size = (int(width), int(height))
  best = np.full((height, width), -1.0, np.float32)
  mask = np.zeros((height, width), np.uint8)
  for index in range(probabilities.shape[-1]):
    channel = Image.fromarray(np.ascontiguousarray(probabilities[..., index], np.float32), "F")
    if channel.size != size:
      channel = channel.resize(size, Image.Resampling.BILINEAR)
    plane = np.asarray(channel)
    better = plane > best
    mask[better] = index
    np.maximum(best, plane, out=best)
  return mask, float(best.mean())
