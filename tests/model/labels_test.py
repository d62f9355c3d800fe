import numpy as np
import pytest

from segbeam.model import labels


def test_oxford_trimap_subtracts_one():
  raw = np.array([[1, 2, 3], [3, 2, 1]], np.uint8)
  np.testing.assert_array_equal(labels.OXFORD_PET_TRIMAP.apply(raw), raw - 1)
  assert labels.OXFORD_PET_TRIMAP.class_names == ("pet", "background", "border")


def test_unmapped_values_are_ignored():
  label_map = labels.parse_label_map("1:0,2:1")
  np.testing.assert_array_equal(
    label_map.apply(np.array([1, 2, 3, 255, 0])),
    [0, 1, labels.IGNORE_INDEX, labels.IGNORE_INDEX, labels.IGNORE_INDEX],
  )


def test_binary_0_255_and_16_bit_masks():
  np.testing.assert_array_equal(labels.BINARY_0_255.apply(np.array([0, 255], np.uint8)), [0, 1])
  label_map = labels.parse_label_map("1000:0,2000:1", ("a", "b"))
  np.testing.assert_array_equal(
    label_map.apply(np.array([1000, 2000, 7], np.uint16)), [0, 1, labels.IGNORE_INDEX]
  )


def test_parse_presets_names_and_errors():
  assert labels.parse_label_map("oxford-pet-trimap") is labels.OXFORD_PET_TRIMAP
  assert labels.parse_label_map("0:0,255:1").class_names == ("class_0", "class_1")
  with pytest.raises(ValueError, match="preset"):
    labels.parse_label_map("pets")
  with pytest.raises(ValueError, match="not 'int:int'"):
    labels.parse_label_map("1:a")
  with pytest.raises(ValueError, match="within 0..1"):
    labels.parse_label_map("1:0,2:2", ("a", "b"))
  with pytest.raises(ValueError, match="mapped twice"):
    labels.parse_label_map("1:0,1:1")
  with pytest.raises(ValueError, match=r"in 0..254, not \[-1, 255\]"):
    labels.parse_label_map("1:-1,2:255,3:0")
  with pytest.raises(ValueError, match="0..65535"):
    labels.parse_label_map("65536:0")
  with pytest.raises(ValueError, match="at least one"):
    labels.LabelMap((), ("a",))


def test_a_label_map_may_cover_some_classes_only():
  """Binary pet/background masks (1 pet, 0 background) against pet/background/border."""
  label_map = labels.parse_label_map("1:0,0:1", ("pet", "background", "border"))
  assert label_map.num_classes == 3 and label_map.covered_classes == (0, 1)
  assert label_map.uncovered_class_names == ("border",)
  np.testing.assert_array_equal(
    label_map.apply(np.array([0, 1, 255], np.uint8)), [1, 0, labels.IGNORE_INDEX]
  )
  assert labels.OXFORD_PET_TRIMAP.uncovered_class_names == ()
  # Without names, classes run up to the highest one named; the gap is uncovered.
  gap = labels.parse_label_map("0:0,9:2")
  assert gap.class_names == ("class_0", "class_1", "class_2")
  assert gap.uncovered_class_names == ("class_1",)
  assert labels.LabelMap.from_dict(label_map.to_dict()) == label_map


def test_coverage_line():
  names = ("pet", "background", "border")
  assert (
    labels.coverage_line(names, ["pet", "background"])
    == "ground truth covers: pet, background (not: border)"
  )
  assert labels.coverage_line(names, names) == "ground truth covers: pet, background, border"


def test_round_trip_through_dict():
  assert labels.LabelMap.from_dict(labels.OXFORD_PET_TRIMAP.to_dict()) == labels.OXFORD_PET_TRIMAP
