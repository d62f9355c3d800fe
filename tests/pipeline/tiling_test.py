"""Overlap-tile geometry and stitching: every pixel kept once, a local model tiled equals it run
on the whole image, and plans no model can run are refused in one line."""

import itertools

import numpy as np
import pytest
from PIL import Image

from segbeam.pipeline import tiling

SAMPLE = "../shared/data/oxford-pets-sample/images"


@pytest.mark.parametrize(
  "height, width, tile, overlap",
  [
    (128, 128, 128, 32),  # one tile
    (300, 500, 128, 32),
    (1000, 257, 96, 40),
    (1, 50_000, 128, 32),  # one pixel high: padded to a tile
    (64, 64, 128, 16),  # smaller than a tile both ways
    (513, 513, 64, 0),  # no overlap
    (200, 200, 64, 63),  # the most overlap there is
  ],
)
@pytest.mark.parametrize("align", [1, 32])
def test_the_kept_regions_cover_every_pixel_once_inside_their_tiles(
  height, width, tile, overlap, align
):
  plan = tiling.TilePlan(height, width, tile, overlap, align=align)
  covered = np.zeros((height, width), np.int32)
  tiles = list(plan.tiles())
  assert len(tiles) == plan.count()
  for t in tiles:
    assert 0 <= t.top <= plan.padded_height - tile and 0 <= t.left <= plan.padded_width - tile
    assert t.top <= t.keep_top < t.keep_bottom <= t.top + tile
    assert t.left <= t.keep_left < t.keep_right <= t.left + tile
    covered[t.keep_top : t.keep_bottom, t.keep_left : t.keep_right] += 1
    # Away from the tile's inner edges by half the overlap, at least.
    if t.keep_top > 0:
      assert t.keep_top - t.top >= overlap // 2
    if t.keep_bottom < height:
      assert t.top + tile - t.keep_bottom >= overlap // 2
  assert covered.min() == covered.max() == 1


@pytest.mark.parametrize(
  "height, width, tile, overlap, multiple_of, words",
  [
    (100, 100, 100, 10, 32, "a tile of 100 pixels: it must be a positive multiple of 32"),
    (100, 100, 0, 0, 1, "a tile of 0 pixels"),
    (100, 100, 64, 64, 1, "an overlap of 64 pixels: it must be 0 or more and smaller"),
    (100, 100, 64, 200, 1, "an overlap of 200 pixels"),
    (100, 100, 64, -1, 1, "an overlap of -1 pixels"),
    (0, 100, 64, 8, 1, "an image of 0x100 pixels has none to tile"),
  ],
)
def test_a_plan_no_model_can_run_is_refused_in_one_line(
  height, width, tile, overlap, multiple_of, words
):
  with pytest.raises(ValueError, match="^" + words):
    tiling.TilePlan(height, width, tile, overlap, multiple_of)


def _local_model(pixels: np.ndarray) -> np.ndarray:
  """A fully convolutional stand-in for a U-Net: per pixel, three class scores from a 5x5
  neighbourhood (edges repeated), so a tile's prediction equals the whole image's wherever the
  pixel is 2 or more pixels from the tile's inner edges."""
  gray = pixels.astype(np.float32).mean(axis=-1)
  padded = np.pad(gray, 2, mode="edge")
  window = np.lib.stride_tricks.sliding_window_view(padded, (5, 5))
  local = window.mean(axis=(-1, -2))
  spread = window.std(axis=(-1, -2))
  scores = np.stack([local, 255 - local, 4 * spread], axis=-1)
  exp = np.exp((scores - scores.max(axis=-1, keepdims=True)) / 16)
  return exp / exp.sum(axis=-1, keepdims=True)


def _photo(name: str) -> np.ndarray:
  return np.asarray(Image.open(f"{SAMPLE}/{name}").convert("RGB"))


def _tiled(image, tile, overlap, stitcher):
  plan = tiling.TilePlan(image.shape[0], image.shape[1], tile, overlap)
  stitch = stitcher(plan)
  for t in plan.tiles():
    window = plan.cut(image, t)
    assert window.shape[:2] == (tile, tile)
    stitch.add(t, _local_model(window))
  return stitch.finish()


@pytest.mark.parametrize("name", ["Abyssinian_1.jpg", "Bengal_150.jpg", "american_bulldog_13.jpg"])
def test_a_local_model_tiled_equals_it_on_the_whole_photo(name):
  image = _photo(name)
  whole = np.argmax(_local_model(image), axis=-1)
  centre = _tiled(image, 64, 16, tiling.CentreStitcher)
  assert np.array_equal(centre, whole)
  blended = _tiled(image, 64, 16, lambda plan: tiling.GaussianStitcher(plan, 3))
  assert np.mean(blended == whole) >= 0.999


def test_a_mosaic_of_photos_tiled_equals_the_whole_mosaic():
  photos = [_photo(n) for n in ("Abyssinian_1.jpg", "Bengal_150.jpg")]
  height = min(p.shape[0] for p in photos)
  mosaic = np.concatenate([p[:height] for p in photos], axis=1)
  mosaic = np.concatenate([mosaic, mosaic[::-1]], axis=0)
  whole = np.argmax(_local_model(mosaic), axis=-1)
  assert np.array_equal(_tiled(mosaic, 128, 32, tiling.CentreStitcher), whole)


def test_an_image_one_pixel_high_gives_a_mask_of_its_size():
  image = np.arange(3 * 50_000, dtype=np.uint8).reshape(1, 50_000, 3)
  whole = np.argmax(_local_model(image), axis=-1)
  mask = _tiled(image, 128, 32, tiling.CentreStitcher)
  assert mask.shape == (1, 50_000) and np.array_equal(mask, whole)


def test_gaussian_weights_peak_in_the_middle_and_never_reach_zero():
  weights = tiling.gaussian_weights(64)
  assert weights.shape == (64, 64) and weights.dtype == np.float32
  assert weights[31:33, 31:33].min() == pytest.approx(1.0, abs=0.01)
  assert weights.min() > 0 and weights[0, 0] == weights.min()
  assert np.array_equal(weights, weights.T) and np.array_equal(weights, weights[::-1, ::-1])


def _blended_whole(plan, predictions, num_classes):
  """The Gaussian blend computed over the whole image at once: what the banded stitcher must
  give (on probabilities in the steps its pieces carry them in)."""
  weights = tiling.gaussian_weights(plan.tile)
  total = np.zeros((plan.padded_height, plan.padded_width, num_classes + 1), np.float64)
  for t, probabilities in predictions:
    levels = (
      np.rint(probabilities * tiling.GaussianStitcher.LEVELS) / tiling.GaussianStitcher.LEVELS
    )
    window = total[t.top : t.top + plan.tile, t.left : t.left + plan.tile]
    window[..., :-1] += levels * weights[..., None]
    window[..., -1] += weights
  total = total[: plan.height, : plan.width]
  return total[..., :-1] / total[..., -1:]


@pytest.mark.parametrize("height, width", [(150, 170), (40, 300), (64, 64), (1, 500)])
def test_the_banded_gaussian_blend_equals_the_whole_image_blend(height, width):
  rng = np.random.default_rng(0)
  plan = tiling.TilePlan(height, width, 64, 24)
  predictions = []
  for t in plan.tiles():
    scores = rng.random((64, 64, 4), np.float32)
    predictions.append((t, scores / scores.sum(axis=-1, keepdims=True)))
  stitch = tiling.GaussianStitcher(plan, 4)
  for t, probabilities in predictions:
    stitch.add(t, probabilities)
  mask = stitch.finish()
  blended = _blended_whole(plan, predictions, 4)
  assert np.allclose(blended.sum(axis=-1), 1.0, atol=1e-4)
  expected = np.argmax(blended, axis=-1)
  assert mask.shape == (height, width)
  assert np.mean(mask == expected) >= 0.999  # float32 sums vs float64: near-ties only
  assert stitch.confidence_sum == pytest.approx(blended.max(axis=-1).sum(), rel=1e-4)


def test_the_gaussian_stitcher_refuses_tiles_out_of_row_order():
  plan = tiling.TilePlan(200, 200, 64, 16)
  tiles = list(plan.tiles())
  stitch = tiling.GaussianStitcher(plan, 2)
  probabilities = np.full((64, 64, 2), 0.5, np.float32)
  for t in tiles[:5]:  # the first tile row, and the first tile of the second
    stitch.add(t, probabilities)
  with pytest.raises(ValueError, match="came after"):
    stitch.add(tiles[1], probabilities)
  stitch = tiling.GaussianStitcher(plan, 2)
  with pytest.raises(ValueError, match="no tile came for some of rows 0 to 136"):
    stitch.add(tiles[-1], probabilities)  # the rows before it were never covered


def test_pieces_are_small_and_give_back_what_went_in():
  plan = tiling.TilePlan(300, 300, 128, 32)
  t = next(iter(plan.tiles()))
  probabilities = np.zeros((128, 128, 3), np.float32)
  probabilities[..., 1] = 1.0
  probabilities[40:80, 40:80] = [0.7, 0.1, 0.2]
  piece = tiling.CentreStitcher.piece(plan, t, probabilities)
  kept = (t.keep_bottom - t.keep_top, t.keep_right - t.keep_left)
  assert piece.shape == kept and len(piece.data) < kept[0] * kept[1] // 20
  expected = np.argmax(probabilities[: kept[0], : kept[1]], axis=-1)
  assert np.array_equal(piece.array(), expected)
  assert piece.confidence_sum == pytest.approx(
    np.max(probabilities[: kept[0], : kept[1]], axis=-1).sum()
  )


def test_a_single_sigmoid_threshold_decides_the_class_in_both_stitchers():
  plan = tiling.TilePlan(100, 100, 64, 16)
  foreground = np.full((64, 64), 0.4, np.float32)
  probabilities = np.stack([1 - foreground, foreground], axis=-1)
  for make in (
    lambda: tiling.CentreStitcher(plan, threshold=0.3),
    lambda: tiling.GaussianStitcher(plan, 2, threshold=0.3),
  ):
    stitch = make()
    for t in plan.tiles():
      stitch.add(t, probabilities)
    assert (stitch.finish() == 1).all()  # 0.4 > 0.3, though the argmax says background
    assert stitch.confidence_sum == pytest.approx(0.4 * 100 * 100, rel=1e-2)


def test_aligned_origins_are_multiples_of_the_alignment_and_overlap_at_least_as_asked():
  plan = tiling.TilePlan(500, 375, 128, 40, align=32)
  assert plan.stride == 64  # 88 rounded down: overlap 64, not less than 40
  tiles = list(plan.tiles())
  assert all(t.top % 32 == 0 and t.left % 32 == 0 for t in tiles)
  assert plan.padded_height >= 500 and plan.padded_width >= 375
  assert max(t.top for t in tiles) + 128 == plan.padded_height
  # A stride that cannot be aligned is left as it is.
  assert tiling.TilePlan(500, 500, 128, 120, align=32).stride == 8


def test_origins_step_by_the_stride_and_end_flush():
  assert tiling.starts(100, 128, 96) == [0]
  assert tiling.starts(300, 128, 96) == [0, 96, 172]
  assert tiling.starts(128 + 96, 128, 96) == [0, 96]
  for length, tile, stride in itertools.product((129, 500, 4096), (32, 128), (1, 16, 32)):
    origins = tiling.starts(length, tile, stride)
    assert origins[0] == 0 and origins[-1] == length - tile
    assert all(0 < b - a <= stride for a, b in zip(origins, origins[1:]))
