"""`segbeam pack`: every image of a folder into whole shards, and a word for what it left out."""

import glob
import os

import pyarrow.parquet as pq
import pytest

from segbeam import cli
from segbeam.commands import pack
from segbeam.pipeline import tfrecord
from tests import accounting
from tests import synthetic


def _examples(shards):
  import tensorflow as tf

  examples = {}
  for shard in shards:
    with open(shard, "rb") as f:
      for _, record in tfrecord.read_records(f):
        features = tf.train.Example.FromString(record).features.feature
        examples[features["image/filename"].bytes_list.value[0].decode()] = features
  return examples


@pytest.fixture()
def awkward_folder(tmp_path):
  """Photos with what real folders also hold: damaged images, an image without an extension,
  notes, a FIFO; and trimaps for some of them, one with no photo."""
  images, masks = tmp_path / "images", tmp_path / "masks"
  images.mkdir()
  masks.mkdir()
  for i in range(4):
    image, trimap = synthetic.pet_scene(30 + i, 24, i)
    (images / f"pet{i}.jpg").write_bytes(synthetic.encode(image, "JPEG"))
    (masks / f"pet{i}.png").write_bytes(synthetic.encode(trimap, "PNG"))
  (masks / "gone.png").write_bytes(synthetic.encode(synthetic.pet_scene(8, 8, 9)[1], "PNG"))
  (images / "no_extension").write_bytes(synthetic.encode(synthetic.pet_scene(20, 30, 5)[0], "PNG"))
  # A JPEG marker, then no header PIL can read: `pack` used to stop here with a traceback.
  (images / "bad_header.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 4)
  (images / "not_a_photo.png").write_bytes(b"a note saved under an image name")
  (images / "notes.txt").write_text("shot in 2019")
  os.mkfifo(images / "stream.jpg")  # opening it would block
  return str(images), str(masks)


def test_packs_every_image_stores_damaged_ones_for_the_run_and_names_what_it_left_out(
  awkward_folder, tmp_path
):
  images, masks = awkward_folder
  prefix = str(tmp_path / "shards" / "pets")
  packed = pack.pack(images, prefix, masks_dir=masks, num_shards=2)
  assert [os.path.basename(s) for s in packed.shards] == [
    "pets-00000-of-00002.tfrecord",
    "pets-00001-of-00002.tfrecord",
  ]
  assert (packed.images, packed.with_mask) == (7, 4)
  assert packed.not_images == ["notes.txt", "stream.jpg"]
  assert packed.masks_without_image == ["gone.png"]
  assert sorted(os.listdir(tmp_path / "shards")) == [
    "pets-00000-of-00002.tfrecord",
    "pets-00001-of-00002.tfrecord",
  ]
  examples = _examples(packed.shards)
  assert sorted(examples) == [
    "bad_header.jpg",
    "no_extension",
    "not_a_photo.png",
    "pet0.jpg",
    "pet1.jpg",
    "pet2.jpg",
    "pet3.jpg",
  ]
  sizes = {
    name: (
      f["image/format"].bytes_list.value[0],
      f["image/width"].int64_list.value[0],
      f["image/height"].int64_list.value[0],
    )
    for name, f in examples.items()
  }
  assert sizes["pet1.jpg"] == (b"jpeg", 31, 24)
  assert sizes["no_extension"] == (b"png", 20, 30)
  assert sizes["bad_header.jpg"] == (b"jpeg", 0, 0)
  assert sizes["not_a_photo.png"] == (b"unknown", 0, 0)
  assert (
    examples["bad_header.jpg"]
    .get("image/encoded")
    .bytes_list.value[0]
    .startswith(b"\xff\xd8\xff\xe0garbage")
  )


def test_the_run_over_packed_shards_reports_what_pack_stored_as_it_was(
  awkward_folder, tiny_export, tmp_path
):
  """The damaged images pack kept are error rows of the run, not lost."""
  images, masks = awkward_folder
  prefix = str(tmp_path / "pets")
  pack.pack(images, prefix, masks_dir=masks, num_shards=2)
  output = str(tmp_path / "out")
  accounting.run_and_account(
    ["--input", prefix + "-*", "--output", output, "--model", tiny_export[0]], inputs_seen=7
  )
  errors = {
    row["filename"]: (row["stage"], row["error_type"])
    for row in pq.read_table(glob.glob(f"{output}/errors/*.parquet")).to_pylist()
  }
  assert errors == {
    "bad_header.jpg": ("validate", "CorruptHeader"),
    "not_a_photo.png": ("validate", "UnsupportedFormat"),
  }


def test_shards_appear_whole_or_not_at_all(awkward_folder, tmp_path, monkeypatch):
  images, masks = awkward_folder
  prefix = str(tmp_path / "pets")
  earlier = pack.pack(images, prefix, num_shards=2).shards
  before = {path: open(path, "rb").read() for path in earlier}
  make_example = pack.make_example
  made = []

  def interrupted_at_the_fourth(*args, **kwargs):
    made.append(args[0])
    if len(made) == 4:
      raise KeyboardInterrupt  # Ctrl-C half way
    return make_example(*args, **kwargs)

  monkeypatch.setattr(pack, "make_example", interrupted_at_the_fourth)
  with pytest.raises(KeyboardInterrupt):
    pack.pack(images, prefix, masks_dir=masks, num_shards=2)
  # No partial file left, and the shards of the earlier pack are as they were.
  assert sorted(os.listdir(tmp_path)) == [
    "images",
    "masks",
    "pets-00000-of-00002.tfrecord",
    "pets-00001-of-00002.tfrecord",
  ]
  assert {path: open(path, "rb").read() for path in earlier} == before


def test_two_masks_for_one_image_are_refused(awkward_folder, tmp_path, capsys):
  images, masks = awkward_folder
  with open(os.path.join(masks, "pet2.bmp"), "wb") as f:
    f.write(synthetic.encode(synthetic.pet_scene(32, 24, 2)[1], "BMP"))
  code = cli.main(
    ["pack", "--images", images, "--masks", masks, "--output", str(tmp_path / "pets")]
  )
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    f"segbeam pack: two masks for the images named 'pet2': pet2.bmp and pet2.png "
    f"in {masks}; keep one"
  )
  assert not glob.glob(str(tmp_path / "*pets*"))


def test_the_command_says_what_it_packed_and_left_out(awkward_folder, tmp_path, capsys):
  images, masks = awkward_folder
  prefix = str(tmp_path / "pets")
  assert (
    cli.main(
      ["pack", "--images", images, "--masks", masks, "--output", prefix, "--num-shards", "3"]
    )
    == 0
  )
  assert capsys.readouterr().out.splitlines() == [
    f"packed 7 images (4 with a mask) into 3 shards: {prefix}-00000-of-00003.tfrecord ... "
    "pets-00002-of-00003.tfrecord",
    f"left out 2 files of {images}, not images by name or first bytes, or not regular files: "
    "notes.txt, stream.jpg",
    f"no image for 1 mask of {masks}: gone.png",
  ]


def test_a_file_that_cannot_be_read_half_way_fails_the_pack_in_one_line(tmp_path, capsys):
  images = tmp_path / "images"
  images.mkdir()
  (images / "a.jpg").write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "JPEG"))
  (images / "b.jpg").symlink_to("/proc/self/mem")  # a regular file whose read fails (EIO)
  (images / "c.jpg.gz").write_bytes(b"not gzip at all")  # stored as is, never decompressed
  code = cli.main(["pack", "--images", str(images), "--output", str(tmp_path / "pets")])
  assert code == 1
  assert capsys.readouterr().err == (
    f"segbeam pack: cannot read {images / 'b.jpg'}: Input/output error; no shard was written\n"
  )
  assert sorted(os.listdir(tmp_path)) == ["images"]


def test_every_name_in_the_folder_is_packed_or_said_left_out(tmp_path, capsys):
  """Beam's `*` matches no backslash and its listing drops links it cannot size: a name with a
  backslash is packed like any other, a name that is not UTF-8 keeps its bytes, and a dangling
  link or a link loop is said left out."""
  images = tmp_path / "images"
  images.mkdir()
  jpeg = synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "JPEG")
  odd = os.fsdecode(b"caf\xe9.jpg")
  for name in ["plain.jpg", "back\\slash.jpg", "ends in a backslash\\", odd]:
    (images / name).write_bytes(jpeg)
  (images / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
  (images / "loop.jpg").symlink_to("loop.jpg")
  (images / os.fsdecode(b"gone\xff.jpg")).symlink_to(tmp_path / "nowhere.jpg")
  prefix = str(tmp_path / "shards" / "pets")
  assert cli.main(["pack", "--images", str(images), "--output", prefix]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1] == (
    f"left out 3 files of {images}, not images by name or first bytes, or not regular files: "
    "dangling.jpg, gone\\xff.jpg, loop.jpg"
  )
  import tensorflow as tf

  with open(f"{prefix}-00000-of-00001.tfrecord", "rb") as f:
    names = sorted(
      tf.train.Example.FromString(record).features.feature["image/filename"].bytes_list.value[0]
      for _, record in tfrecord.read_records(f)
    )
  assert names == [b"back\\slash.jpg", b"caf\xe9.jpg", b"ends in a backslash\\", b"plain.jpg"]
