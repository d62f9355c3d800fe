import numpy as np
import pytest

from segbeam.model import labels


def test_oxford_trimap_subtracts_one():
  raw = np.array([[1, 2, 3], [3, 2, 1]], np.uint8)
  np.testing.assert_array_equal(labels.OXFORD_PET_TRIMAP.apply(raw), raw - 1)
  assert labels.OXFORD_PET_TRIMAP.class_names == ("pet", "background", "border")


def test_unmapped_values_are_ignored():
  label_map = labels.parse_label_map("1:0,2:1")
  np.testing.assert_array_equal(label_map.apply(np.array([1, 2, 3, 255, 0])),
                                [0, 1, labels.IGNORE_INDEX, labels.IGNORE_INDEX,
                                 labels.IGNORE_INDEX])


def test_binary_0_255_and_16_bit_masks():
  np.testing.assert_array_equal(labels.BINARY_0_255.apply(np.array([0, 255], np.uint8)), [0, 1])
  label_map = labels.parse_label_map("1000:0,2000:1", ("a", "b"))
  np.testing.assert_array_equal(label_map.apply(np.array([1000, 2000, 7], np.uint16)),
                                [0, 1, labels.IGNORE_INDEX])


def test_parse_presets_names_and_errors():
  assert labels.parse_label_map("oxford-pet-trimap") is labels.OXFORD_PET_TRIMAP
  assert labels.parse_label_map("0:0,255:1").class_names == ("class_0", "class_1")
  with pytest.raises(ValueError, match="preset"):
    labels.parse_label_map("pets")
  with pytest.raises(ValueError, match="not 'int:int'"):
    labels.parse_label_map("1:a")
  with pytest.raises(ValueError, match="exactly 0..1"):
    labels.parse_label_map("1:0,2:2")
  with pytest.raises(ValueError, match="mapped twice"):
    labels.parse_label_map("1:0,1:1")


def test_round_trip_through_dict():
  assert labels.LabelMap.from_dict(labels.OXFORD_PET_TRIMAP.to_dict()) == labels.OXFORD_PET_TRIMAP
