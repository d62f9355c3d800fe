import io

import numpy as np
import pytest
from PIL import Image

from segbeam.pipeline import records
from segbeam.pipeline import schema
from segbeam.pipeline import segments

CONTEXT = segments.RunContext("m", "sha256:1", ("pet", "background", "Border Zone"), "run-1")


def _outputs(height, width, seed=0):
  probabilities = np.random.default_rng(seed).dirichlet([1, 1, 1], (8, 8)).astype(np.float32)
  return {"probabilities": probabilities, "height": np.int32(height), "width": np.int32(width)}


def test_row_has_mask_at_original_size_and_coverage_summing_to_one():
  info = records.ImageInfo("a.jpg", "/x/a.jpg", "jpeg", 37, 23)
  row = segments.segment_row(info, _outputs(23, 37), CONTEXT)
  mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
  assert mask.shape == (23, 37) and mask.dtype == np.uint8 and mask.max() <= 2
  assert (row["width"], row["height"]) == (37, 23)
  coverage = [row[f"coverage_{s}"] for s in ("pet", "background", "border_zone")]
  pixels = [row[f"pixels_{s}"] for s in ("pet", "background", "border_zone")]
  assert sum(coverage) == pytest.approx(1.0)
  assert sum(pixels) == 23 * 37
  assert pixels == [int((mask == c).sum()) for c in range(3)]
  assert row["dominant_class"] == CONTEXT.class_names[int(np.argmax(pixels))]
  assert 1 / 3 <= row["mean_confidence"] <= 1.0
  assert set(row) == set(schema.segments_schema(CONTEXT.class_names).names)


def test_column_names_are_sql_friendly_and_unique():
  assert schema.class_columns(["Pet (cat)", "back-ground"]) == ["pet_cat", "back_ground"]
  with pytest.raises(ValueError, match="collide"):
    schema.class_columns(["a b", "a-b"])
