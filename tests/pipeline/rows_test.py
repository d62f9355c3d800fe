import io

import numpy as np
import pytest
from PIL import Image

from segbeam.pipeline import elements
from segbeam.pipeline import rows
from segbeam.pipeline import schema

CONTEXT = rows.RunContext("m", "sha256:1", ("pet", "background", "Border Zone"), "run-1")


def _outputs(height, width, seed=0):
  probabilities = np.random.default_rng(seed).dirichlet([1, 1, 1], (8, 8)).astype(np.float32)
  return {"probabilities": probabilities, "height": np.int32(height), "width": np.int32(width)}


def test_row_has_mask_at_original_size_and_coverage_summing_to_one():
  info = elements.ImageInfo("a.jpg", "/x/a.jpg", "jpeg", 37, 23)
  row = rows.segments_row(info, _outputs(23, 37), CONTEXT)
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


def test_ground_truth_columns_on_a_hand_checked_example():
  """Trimap values 1..3 map to classes 0..2; 255 is outside the map and ignored."""
  from segbeam.model import labels
  from tests import synthetic

  context = rows.RunContext(
    "m", "v", ("pet", "background", "border"), "r", labels.OXFORD_PET_TRIMAP
  )
  mask = np.array([[0, 0, 1], [1, 1, 2]], np.uint8)
  label = synthetic.encode(np.array([[1, 2, 2], [2, 255, 3]], np.uint8), "PNG")
  columns = rows.ground_truth_columns(mask, label, context)
  # Compared pixels: 5 (the 255 one is out). Truth: pet, bg, bg, bg, border;
  # mask: pet, pet, bg, bg, border -> 4 correct.
  assert (columns["gt_pixels"], columns["gt_correct"]) == (5, 4)
  assert columns["gt_pixel_accuracy"] == pytest.approx(0.8)
  # pet: I=1, U=2; background: I=2, U=3; border: I=1, U=1.
  assert [columns[f"gt_intersection_{c}"] for c in ("pet", "background", "border")] == [1, 2, 1]
  assert [columns[f"gt_union_{c}"] for c in ("pet", "background", "border")] == [2, 3, 1]
  assert columns["gt_error"] is None
  wrong_size = rows.ground_truth_columns(np.zeros((3, 3), np.uint8), label, context)
  assert wrong_size["gt_pixels"] is None and "label is 3x2" in wrong_size["gt_error"]
  assert rows.ground_truth_columns(mask, None, context)["gt_pixels"] is None


def test_ground_truth_columns_with_binary_labels_leave_the_border_null():
  """Binary labels (1 pet, 0 background) against a pet/background/border mask."""
  from segbeam.model import labels
  from tests import synthetic

  names = ("pet", "background", "border")
  context = rows.RunContext("m", "v", names, "r", labels.parse_label_map("1:0,0:1", names))
  mask = np.array([[0, 0, 2], [1, 2, 1]], np.uint8)
  label = synthetic.encode(np.array([[1, 1, 1], [0, 0, 7]], np.uint8), "PNG")
  columns = rows.ground_truth_columns(mask, label, context)
  # Compared: 5 (7 is outside the map). Truth: pet, pet, pet, bg, bg; mask: pet, pet, border,
  # bg, border -> 3 correct; the two masked border are wrong.
  assert (columns["gt_pixels"], columns["gt_correct"]) == (5, 3)
  assert columns["gt_pixel_accuracy"] == pytest.approx(3 / 5)
  # pet: I=2, U=3; background: I=1, U=2; border: null, not 0.
  assert [columns[f"gt_intersection_{c}"] for c in names] == [2, 1, None]
  assert [columns[f"gt_union_{c}"] for c in names] == [3, 2, None]
  assert columns["gt_error"] is None


def test_an_inference_lost_with_its_slice_becomes_an_error_row():
  import concurrent.futures

  from segbeam.pipeline import inference

  lost = concurrent.futures.Future()
  lost.set_exception(RuntimeError("slice thread died"))
  done = concurrent.futures.Future()
  done.set_result([("b.jpg", _outputs(5, 6))])
  segment = rows.MakeRows(CONTEXT, max_pending=4)
  segment.setup()
  segment.start_bundle()
  outputs = []
  for name, pending in (
    ("a.jpg", inference.PendingInference(lost, 0)),
    ("b.jpg", inference.PendingInference(done, 0)),
  ):
    info = elements.ImageInfo(name, f"/x/{name}", "png", 6, 5)
    outputs += list(segment.process((info, pending), timestamp=0, window=None))
  outputs += list(segment.finish_bundle())
  segment.teardown()
  failure, row = outputs  # a TaggedOutput, then a row; each a WindowedValue inside
  assert failure.tag == elements.FAILURES
  assert (
    failure.value.value.image_id,
    failure.value.value.stage,
    failure.value.value.error_type,
  ) == ("a.jpg", elements.STAGE_INFER, "RuntimeError")
  assert row.value["image_id"] == "b.jpg" and row.value["width"] == 6
