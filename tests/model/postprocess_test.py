import numpy as np
import pytest

from segbeam.model import postprocess


def test_same_size_is_a_plain_argmax():
  probabilities = np.random.default_rng(0).dirichlet([1, 1, 1], (8, 8)).astype(np.float32)
  mask, confidence = postprocess.class_mask(probabilities, 8, 8)
  np.testing.assert_array_equal(mask, probabilities.argmax(-1))
  assert confidence == pytest.approx(probabilities.max(-1).mean(), rel=1e-6)


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
