import io

import numpy as np
import pytest
from PIL import Image

from segbeam.pipeline import mask_png


def _decode(data: bytes) -> np.ndarray:
  image = Image.open(io.BytesIO(data))
  assert image.format == "PNG" and image.mode == "L"
  return np.asarray(image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 700), (700, 1), (375, 500), (17, 3)])
def test_decodes_to_the_same_mask(shape):
  rng = np.random.default_rng(sum(shape))
  mask = rng.integers(0, 4, size=shape, dtype=np.uint8)
  np.testing.assert_array_equal(_decode(mask_png.encode(mask)), mask)


def test_every_byte_value_survives():
  mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
  np.testing.assert_array_equal(_decode(mask_png.encode(mask)), mask)


def test_a_mask_of_regions_is_no_larger_than_pillows():
  mask = np.zeros((400, 600), np.uint8)
  mask[100:300, 150:450] = 1
  mask[95:100, 150:450] = 2
  pillow = io.BytesIO()
  Image.fromarray(mask, "L").save(pillow, format="PNG", compress_level=1)
  assert len(mask_png.encode(mask)) <= len(pillow.getvalue())


def test_accepts_a_non_contiguous_view():
  mask = np.arange(60, dtype=np.uint8).reshape(6, 10)[:, ::2]
  np.testing.assert_array_equal(_decode(mask_png.encode(mask)), mask)


@pytest.mark.parametrize(
  "mask", [np.zeros((4, 4), np.int32), np.zeros((4, 4, 1), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_refuses_what_is_not_a_mask(mask):
  with pytest.raises(ValueError):
    mask_png.encode(mask)
