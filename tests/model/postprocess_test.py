import numpy as np
import pytest
from PIL import Image

from segbeam.model import postprocess


@pytest.mark.parametrize("num_classes", [2, 3, 4, 5, 7])
def test_same_size_is_a_plain_argmax(num_classes):
  probabilities = np.random.default_rng(0).dirichlet([1] * num_classes, (32, 32)).astype(
      np.float32)
  mask, confidence = postprocess.class_mask(probabilities, 32, 32)
  expected = probabilities.argmax(-1)
  if num_classes > 4:  # the float path is exact
    np.testing.assert_array_equal(mask, expected)
  else:  # the 8-bit path may only flip near-ties (probabilities within 1/255)
    sorted_probs = np.sort(probabilities, axis=-1)
    near_tie = sorted_probs[..., -1] - sorted_probs[..., -2] < 1 / 255
    np.testing.assert_array_equal(mask[~near_tie], expected[~near_tie])
  assert confidence == pytest.approx(probabilities.max(-1).mean(), abs=0.5 / 255)


def test_8_bit_and_float_paths_agree_when_enlarging():
  rng = np.random.default_rng(1)
  coarse = rng.normal(size=(4, 4, 3)).astype(np.float32)
  logits = np.stack([np.kron(coarse[..., c], np.ones((8, 8), np.float32)) for c in range(3)], -1)
  probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  fast, fast_confidence = postprocess._class_mask_8bit(probabilities, (100, 70))
  exact, exact_confidence = postprocess._class_mask_float(probabilities, (100, 70))
  planes = np.stack([np.asarray(Image.fromarray(probabilities[..., c], "F").resize(
      (100, 70), Image.Resampling.BILINEAR)) for c in range(3)], -1)
  top2 = np.sort(planes, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 2 / 255  # away from near-ties, no flip is allowed
  assert clear.mean() > 0.5
  np.testing.assert_array_equal(fast[clear], exact[clear])
  assert fast_confidence == pytest.approx(exact_confidence, abs=1 / 255)


def test_mask_comes_back_at_the_original_size():
  probabilities = np.zeros((4, 4, 2), np.float32)
  probabilities[:, :2, 0] = 0.9   # left half class 0
  probabilities[:, :2, 1] = 0.1
  probabilities[:, 2:, 0] = 0.2   # right half class 1
  probabilities[:, 2:, 1] = 0.8
  mask, confidence = postprocess.class_mask(probabilities, height=30, width=50)
  assert mask.shape == (30, 50) and mask.dtype == np.uint8
  assert (mask[:, :20] == 0).all() and (mask[:, 30:] == 1).all()
  assert 0.5 < confidence <= 0.9


def test_rejects_wrong_rank():
  with pytest.raises(ValueError):
    postprocess.class_mask(np.zeros((4, 4), np.float32), 4, 4)
