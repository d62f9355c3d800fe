import numpy as np
import pytest
from PIL import Image

from segbeam.model import postprocess


def _smooth_probabilities(shape, num_classes, seed):
  """Softmax of blocky random logits: class regions with boundaries, like a model's output."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(scale=3.0, size=(shape[0] // 4 + 1, shape[1] // 4 + 1, num_classes))
  logits = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[: shape[0], : shape[1]]
  logits = logits + rng.normal(scale=0.3, size=logits.shape)
  exp = np.exp(logits - logits.max(-1, keepdims=True))
  return (exp / exp.sum(-1, keepdims=True)).astype(np.float32)


def _pillow_reference(probabilities, height, width):
  """Every plane resized with Pillow's float bilinear filter, then argmax: the definition the
  shortcut must reproduce."""
  planes = np.stack(
    [
      np.asarray(
        Image.fromarray(np.ascontiguousarray(probabilities[..., c]), "F").resize(
          (width, height), Image.Resampling.BILINEAR
        )
      )
      for c in range(probabilities.shape[-1])
    ],
    -1,
  )
  return planes


@pytest.mark.parametrize("num_classes", [2, 3, 4, 7])
def test_same_size_is_a_plain_argmax(num_classes):
  probabilities = np.random.default_rng(0).dirichlet([1] * num_classes, (32, 32)).astype(np.float32)
  mask, confidence = postprocess.class_mask(probabilities, 32, 32)
  np.testing.assert_array_equal(mask, probabilities.argmax(-1))
  assert confidence == pytest.approx(probabilities.max(-1).mean(), rel=1e-6)


@pytest.mark.parametrize(
  "source,target",
  [((4, 4), (30, 50)), ((16, 16), (37, 101)), ((32, 24), (375, 500)), ((128, 128), (128, 300))],
)
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_enlarging_matches_bilinear_planes_then_argmax(source, target, num_classes):
  probabilities = _smooth_probabilities(source, num_classes, seed=num_classes)
  mask, confidence = postprocess.class_mask(probabilities, *target)
  planes = _pillow_reference(probabilities, *target)
  top2 = np.sort(planes, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-5  # float rounding may only decide exact near-ties
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(mask[clear], planes.argmax(-1)[clear])
  assert confidence == pytest.approx(planes.max(-1).mean(), abs=1e-6)


def test_enlarging_a_single_class_region_interpolates_nothing():
  probabilities = np.zeros((8, 8, 3), np.float32)
  probabilities[..., 1] = 0.7
  probabilities[..., 0] = 0.2
  probabilities[..., 2] = 0.1
  mask, confidence = postprocess.class_mask(probabilities, 100, 61)
  assert (mask == 1).all()
  assert confidence == pytest.approx(0.7, rel=1e-6)


@pytest.mark.parametrize("target", [(10, 12), (40, 9)])  # smaller on both axes, or on one
def test_shrinking_uses_antialiased_planes(target):
  probabilities = _smooth_probabilities((32, 32), 3, seed=7)
  mask, confidence = postprocess.class_mask(probabilities, *target)
  planes = _pillow_reference(probabilities, *target)
  assert mask.shape == target and mask.dtype == np.uint8
  np.testing.assert_array_equal(mask, planes.argmax(-1))
  assert confidence == pytest.approx(planes.max(-1).mean(), rel=1e-6)


def test_mask_comes_back_at_the_original_size():
  probabilities = np.zeros((4, 4, 2), np.float32)
  probabilities[:, :2, 0] = 0.9  # left half class 0
  probabilities[:, :2, 1] = 0.1
  probabilities[:, 2:, 0] = 0.2  # right half class 1
  probabilities[:, 2:, 1] = 0.8
  mask, confidence = postprocess.class_mask(probabilities, height=30, width=50)
  assert mask.shape == (30, 50) and mask.dtype == np.uint8
  assert (mask[:, :20] == 0).all() and (mask[:, 30:] == 1).all()
  assert 0.5 < confidence <= 0.9


def test_rejects_wrong_rank_and_too_many_classes():
  with pytest.raises(ValueError, match="classes"):
    postprocess.class_mask(np.zeros((4, 4), np.float32), 4, 4)
  with pytest.raises(ValueError, match="255"):
    postprocess.class_mask(np.zeros((2, 2, 256), np.float32), 4, 4)


@pytest.mark.parametrize("num_classes", [1, 3, 16, 17, 40])
def test_class_pixel_counts_match_bincount(num_classes):
  mask = np.random.default_rng(num_classes).integers(0, num_classes, (37, 53), dtype=np.uint8)
  counts = postprocess.class_pixel_counts(mask, num_classes)
  np.testing.assert_array_equal(counts, np.bincount(mask.reshape(-1), minlength=num_classes))
  assert counts.dtype == np.int64 and counts.sum() == mask.size


@pytest.mark.parametrize("target", [(128, 128), (130, 700), (375, 500), (1600, 1200), (3000, 129)])
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_boundaries_mixed_by_source_row_equal_pixel_by_pixel_bit_for_bit(
  target, num_classes, monkeypatch
):
  probabilities = _smooth_probabilities((128, 128), num_classes, seed=7 + num_classes)
  monkeypatch.setattr(postprocess, "_ROWS_PER_SOURCE_ROW_FOR_BLOCKS", 10**9)
  by_pixel, by_pixel_confidence = postprocess.class_mask(probabilities, *target)
  monkeypatch.setattr(postprocess, "_ROWS_PER_SOURCE_ROW_FOR_BLOCKS", 1)
  by_row, by_row_confidence = postprocess.class_mask(probabilities, *target)
  np.testing.assert_array_equal(by_row, by_pixel)
  assert by_row_confidence == by_pixel_confidence  # the same sums in the same order
