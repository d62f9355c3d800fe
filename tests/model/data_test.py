"""Training input: pairing by stem, any image mode, nearest-neighbour masks, skipped pairs."""

import numpy as np
import pytest
from PIL import Image

from segbeam.model import data
from segbeam.model import labels
from tests import synthetic


def test_pairs_match_by_stem_whatever_the_extension(pet_folder):
  images, masks, names = pet_folder
  pairs = data.match_pairs(images, masks)
  assert [p.name for p in pairs] == names
  assert all(p.image_path.endswith(".jpg") and p.mask_path.endswith(".png") for p in pairs)


def test_names_select_pairs_and_a_missing_one_is_an_error(pet_folder, tmp_path):
  images, masks, names = pet_folder
  listing = tmp_path / "list.txt"
  listing.write_text(f"# comment\n{names[2]} 1 1 1\n{names[0]}\n")
  assert [p.name for p in data.match_pairs(images, masks, data.read_names(str(listing)))] == [
    names[2],
    names[0],
  ]
  with pytest.raises(FileNotFoundError, match="no image or no mask"):
    data.match_pairs(images, masks, ["pet_999"])


def test_large_jpeg_decodes_at_a_dct_scale_with_its_original_size(tmp_path):
  image, trimap = synthetic.pet_scene(300, 200, seed=5)
  (tmp_path / "big.jpg").write_bytes(synthetic.encode(image, "JPEG"))
  (tmp_path / "big.png").write_bytes(synthetic.encode(trimap, "PNG"))
  pair = data.ImageMaskPair("big", str(tmp_path / "big.jpg"), str(tmp_path / "big.png"))
  loader = data.PairLoader([pair], channels=3, input_size=32, label_map=labels.OXFORD_PET_TRIMAP)
  decoded, mask = loader.load(pair)
  assert decoded.shape == (50, 75, 3)  # 1/4: the largest scale keeping both sides >= 32
  assert mask.shape == (200, 300)


@pytest.mark.parametrize(
  "fmt,mode",
  [("PNG", "RGBA"), ("PNG", "L"), ("GIF", None), ("PNG", "P"), ("JPEG", "L"), ("BMP", None)],
)
def test_any_image_mode_behind_a_jpg_name_decodes_to_rgb(tmp_path, fmt, mode):
  image, trimap = synthetic.pet_scene(40, 30, seed=3)
  (tmp_path / "x.jpg").write_bytes(synthetic.encode(image, fmt, mode=mode))
  (tmp_path / "x.png").write_bytes(synthetic.encode(trimap, "PNG"))
  pair = data.ImageMaskPair("x", str(tmp_path / "x.jpg"), str(tmp_path / "x.png"))
  loader = data.PairLoader([pair], channels=3, input_size=32, label_map=labels.OXFORD_PET_TRIMAP)
  decoded, mask = loader.load(pair)
  assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
  np.testing.assert_array_equal(mask, trimap - 1)


def test_palette_mask_keeps_its_indices(tmp_path):
  _, trimap = synthetic.pet_scene(20, 20, seed=4)
  palette = Image.fromarray(trimap, "P")
  palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
  path = tmp_path / "mask.png"
  palette.save(path)
  np.testing.assert_array_equal(
    data.read_mask(path.read_bytes(), labels.OXFORD_PET_TRIMAP), trimap - 1
  )


def test_rgb_mask_is_refused():
  with pytest.raises(ValueError, match="mode RGB"):
    data.read_mask(synthetic.encode(np.zeros((4, 4, 3), np.uint8), "PNG"), labels.OXFORD_PET_TRIMAP)


def test_dataset_batches_resized_pairs_with_ignore_weights(pet_folder):
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  loader = data.PairLoader(
    pairs, channels=3, input_size=32, label_map=labels.parse_label_map("1:0,2:1")
  )
  dataset = data.make_dataset(loader, input_size=32, channels=3, batch_size=4, training=True)
  assert int(dataset.cardinality()) == 2  # known, so Keras runs exactly these batches
  batches = list(dataset)
  assert [b[0].shape[0] for b in batches] == [4, 2]
  image, mask, weight = batches[0]
  assert image.shape == (4, 32, 32, 3) and mask.shape == (4, 32, 32)
  # Nearest neighbour: no value between classes appears; border (3) pixels are weight 0.
  assert set(np.unique(mask.numpy())) <= {0, 1}
  assert set(np.unique(weight.numpy())) == {0.0, 1.0}
  assert 0.0 <= float(np.min(image)) and float(np.max(image)) <= 255.0


def test_unreadable_pairs_are_skipped_and_reported(pet_folder, tmp_path):
  images, masks, _ = pet_folder
  pairs = data.match_pairs(images, masks)
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image at all")
  bad_size = tmp_path / "bad_size.png"
  bad_size.write_bytes(synthetic.encode(np.ones((5, 5), np.uint8), "PNG"))
  pairs += [
    data.ImageMaskPair("broken", str(broken), pairs[0].mask_path),
    data.ImageMaskPair("bad_size", pairs[0].image_path, str(bad_size)),
  ]
  loader = data.PairLoader(pairs, channels=3, input_size=32, label_map=labels.OXFORD_PET_TRIMAP)
  dataset = data.make_dataset(loader, input_size=32, channels=3, batch_size=4, training=False)
  assert int(dataset.cardinality()) == 2  # the usable pairs, not those given (3 batches of 4)
  assert [b[0].shape[0] for b in dataset] == [4, len(pairs) - 2 - 4]
  assert sorted(loader.skipped) == ["bad_size", "broken"]
  assert "mask is 5x5" in loader.skipped["bad_size"].reason
  assert "InvalidArgumentError" in loader.skipped["broken"].reason


def test_a_dataset_of_no_usable_pair_is_refused(tmp_path, pet_folder):
  images, masks, _ = pet_folder
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image at all")
  pair = data.match_pairs(images, masks)[0]
  loader = data.PairLoader(
    [data.ImageMaskPair("broken", str(broken), pair.mask_path)],
    channels=3,
    input_size=32,
    label_map=labels.OXFORD_PET_TRIMAP,
  )
  with pytest.raises(ValueError, match="none of the 1 pairs could be used .broken: "):
    data.make_dataset(loader, input_size=32, channels=3, batch_size=4, training=True)
