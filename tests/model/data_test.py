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


# --- Crops at native resolution (`segbeam train --crop`) --------------------------------------


def _coordinate_pair(folder, width, height, step=1):
  """A PNG whose red and green values are each pixel's column and row (divided by `step`, to
  fit a byte), and a mask whose raw values (1 or 3, never 2) follow 8 x 8 blocks of the same
  coordinates: wherever a crop comes from, its mask must equal `_expected_mask` of its pixels."""
  yy, xx = np.mgrid[0:height, 0:width]
  image = np.stack([xx // step, yy // step, np.full_like(xx, 7)], -1).astype(np.uint8)
  raw = np.where(((xx // step) // 8 + (yy // step) // 8) % 2, 3, 1).astype(np.uint8)
  name = f"coords_{width}x{height}"
  image_path, mask_path = folder / f"{name}.png", folder / f"{name}_mask.png"
  image_path.write_bytes(synthetic.encode(image, "PNG"))
  mask_path.write_bytes(synthetic.encode(raw, "PNG"))
  return data.ImageMaskPair(name, str(image_path), str(mask_path))


def _expected_mask(x, y):
  """Classes of the oxford-pet-trimap map for `_coordinate_pair`'s raw values 1 and 3."""
  return np.where((x // 8 + y // 8) % 2, 2, 0)


def _crop_dataset(pairs, *, crop, scale=1.0, training, batch_size=1):
  loader = data.PairLoader(
    pairs,
    channels=3,
    input_size=crop,
    label_map=labels.OXFORD_PET_TRIMAP,
    full_resolution=True,
  )
  return data.make_crop_dataset(
    loader,
    crop=crop,
    scale=scale,
    channels=3,
    batch_size=batch_size,
    training=training,
    augment=False,  # Colour jitter would blur the coordinates.
  )


def _crops(dataset):
  """(image, mask, weight) numpy arrays of every crop, in order."""
  return [
    (i.numpy(), m.numpy(), w.numpy())
    for images, masks, weights in dataset
    for i, m, w in zip(images, masks, weights)
  ]


def _check_window(image, mask, weight, size, side):
  """`image` is a `size` x `size` window of a coordinate image `side` pixels square, `mask`
  its mask, from the same window; returns the window's origin (column, row)."""
  assert image.shape == (size, size, 3) and mask.shape == (size, size)
  x, y = image[..., 0].astype(int), image[..., 1].astype(int)
  np.testing.assert_array_equal(image[..., 0], x)  # whole values: no blending
  origin = x[0, 0], y[0, 0]
  np.testing.assert_array_equal(x, np.broadcast_to(origin[0] + np.arange(size), (size, size)))
  np.testing.assert_array_equal(y, np.broadcast_to(origin[1] + np.arange(size)[:, None], x.shape))
  assert 0 <= min(origin) and max(origin) + size <= side
  np.testing.assert_array_equal(mask, _expected_mask(x, y))
  assert (weight == 1.0).all()
  return origin


def test_training_crops_are_the_same_window_of_image_and_mask_and_change_each_epoch(tmp_path):
  pair = _coordinate_pair(tmp_path, 200, 200)
  dataset = _crop_dataset([pair], crop=64, training=True)
  assert int(dataset.cardinality()) == 1  # one crop per image per epoch
  origins = []
  for _ in range(4):
    ((image, mask, weight),) = _crops(dataset)
    origins.append(_check_window(image, mask, weight, 64, 200))
  assert len(set(origins)) > 1, origins


def test_crops_at_a_scale_come_from_the_scaled_image_with_masks_never_interpolated(tmp_path):
  # 512 x 512 at scale 0.5 is 256 x 256: coordinates x // 2 become exactly x in the crops.
  pair = _coordinate_pair(tmp_path, 512, 512, step=2)
  for training in (True, False):
    crops = _crops(_crop_dataset([pair], crop=64, scale=0.5, training=training))
    assert len(crops) == (1 if training else 16)  # validation: the 4 x 4 grid of 256 x 256
    for image, mask, weight in crops:
      _check_window(image, mask, weight, 64, 256)
      # Raw values 1 and 3 are classes 0 and 2; bilinear would have made some 1s between them.
      assert set(np.unique(mask)) <= {0, 2}


@pytest.mark.parametrize("scale", [0.5, 0.3])
def test_a_scaled_mask_keeps_only_its_own_values(tmp_path, scale):
  """Columns alternate between raw values 1 and 3 (classes 0 and 2): any blending, bilinear
  or antialiased, would put class 1 between them."""
  image = np.zeros((128, 128, 3), np.uint8)
  raw = np.where(np.arange(128) % 2, 3, 1).astype(np.uint8)[None, :].repeat(128, 0)
  (tmp_path / "stripes.png").write_bytes(synthetic.encode(image, "PNG"))
  (tmp_path / "stripes_mask.png").write_bytes(synthetic.encode(raw, "PNG"))
  pair = data.ImageMaskPair(
    "stripes", str(tmp_path / "stripes.png"), str(tmp_path / "stripes_mask.png")
  )
  for training in (True, False):
    for _, mask, weight in _crops(_crop_dataset([pair], crop=32, scale=scale, training=training)):
      assert set(np.unique(mask[weight > 0])) <= {0, 2}


def test_images_smaller_than_the_crop_are_padded_with_ignored_pixels(tmp_path):
  pair = _coordinate_pair(tmp_path, 40, 50)
  for training in (True, False):
    ((image, mask, weight),) = _crops(_crop_dataset([pair], crop=64, training=training))
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(weight[:50, :40], 1.0)
    assert weight.sum() == 40 * 50  # padding weighs nothing
    yy, xx = np.mgrid[0:50, 0:40]
    np.testing.assert_array_equal(mask[:50, :40], _expected_mask(xx, yy))
    # The image repeats its last row and column, as tiles are padded at run time.
    np.testing.assert_array_equal(image[50:, :40], np.broadcast_to(image[49, :40], (14, 40, 3)))
    np.testing.assert_array_equal(image[:, 40:], np.broadcast_to(image[:, 39:40], (64, 24, 3)))


def test_validation_crops_are_a_centred_grid_identical_each_pass(tmp_path):
  pairs = [_coordinate_pair(tmp_path, 160, 160), _coordinate_pair(tmp_path, 200, 130)]
  dataset = _crop_dataset(pairs, crop=64, training=False, batch_size=4)
  assert int(dataset.cardinality()) == 3  # 2 x 2 + 3 x 2 crops, 4 a batch
  first, second = _crops(dataset), _crops(dataset)
  assert len(first) == 10
  for (image, mask, weight), again in zip(first, second):
    for array, same in zip((image, mask, weight), again):
      np.testing.assert_array_equal(array, same)
  origins = [_check_window(image, mask, weight, 64, 200) for image, mask, weight in first]
  # Centred: 160 leaves 16 a side, 200 leaves 4, 130 leaves 1.
  assert origins[:4] == [(16, 16), (80, 16), (16, 80), (80, 80)]
  assert origins[4:] == [(4, 1), (68, 1), (132, 1), (4, 65), (68, 65), (132, 65)]


def test_a_mask_whose_header_says_another_size_is_refused_before_decoding():
  """A few hundred bytes declaring 13,000 x 13,000, under PIL's own bomb limit (a label inside
  a shard, say): refused from its header, never decoded."""
  from tests.pipeline import hostile_corpus

  bomb = hostile_corpus.png_bomb(13_000, 13_000)
  with pytest.raises(data.MaskSizeError, match="label is 13000x13000, image 8x8"):
    data.read_mask(bomb, labels.OXFORD_PET_TRIMAP, size=(8, 8))
