"""`segbeam pack`: every image of a folder into whole shards, and a word for what it left out,
read back with each format's own reader."""

import glob
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

from segbeam import cli
from segbeam.commands import pack
from segbeam.pipeline import tfrecord
from tests import accounting
from tests import gcs_emulator
from tests import synthetic

FORMATS = ["tfrecord", "parquet", "webdataset"]
EXTENSION = {"tfrecord": "tfrecord", "parquet": "parquet", "webdataset": "tar"}


def _examples(shards):
  import tensorflow as tf

  examples = {}
  for shard in shards:
    with open(shard, "rb") as f:
      for _, record in tfrecord.read_records(f):
        features = tf.train.Example.FromString(record).features.feature
        examples[features["image/filename"].bytes_list.value[0].decode()] = features
  return examples


def _samples(shards):
  """The WebDataset samples of the shards, in order, by the `webdataset` package."""
  import webdataset

  samples = []
  for shard in shards:
    samples.extend(webdataset.WebDataset(shard, shardshuffle=False))
  return samples


def _stored(shards, shard_format):
  """name -> (image bytes, mask bytes or None), by each format's own reader. The name: the
  filename (tfrecord), the image's path (parquet), KEY.<image extension> (webdataset)."""
  stored = {}
  if shard_format == "tfrecord":
    for name, f in _examples(shards).items():
      mask = f.get("image/segmentation/class/encoded")
      stored[name] = (f["image/encoded"].bytes_list.value[0], mask and mask.bytes_list.value[0])
  elif shard_format == "parquet":
    for shard in shards:
      for row in pq.read_table(shard).to_pylist():
        label = row.get("label")
        stored[row["image"]["path"]] = (row["image"]["bytes"], label and label["bytes"])
  else:
    for sample in _samples(shards):
      (image,) = [k for k in sample if not k.startswith("__") and not k.startswith("seg.")]
      masks = [sample[k] for k in sample if k.startswith("seg.")]
      stored[f"{sample['__key__']}.{image}"] = (sample[image], masks[0] if masks else None)
  return stored


def _stored_names(awkward):
  """The names `_stored` gives the awkward folder's images in each format."""
  names = ["bad_header.jpg", "not_a_photo.png", "pet0.jpg", "pet1.jpg", "pet2.jpg", "pet3.jpg"]
  return {
    "tfrecord": sorted(names + ["no_extension"]),
    "parquet": sorted(names + ["no_extension"]),
    "webdataset": sorted(names + ["no_extension.png"]),
  }


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


@pytest.mark.parametrize("shard_format", FORMATS)
def test_packs_every_image_stores_damaged_ones_for_the_run_and_names_what_it_left_out(
  awkward_folder, tmp_path, shard_format
):
  images, masks = awkward_folder
  prefix = str(tmp_path / "shards" / "pets")
  packed = pack.pack(images, prefix, masks_dir=masks, num_shards=2, shard_format=shard_format)
  extension = EXTENSION[shard_format]
  names = [f"pets-00000-of-00002.{extension}", f"pets-00001-of-00002.{extension}"]
  assert [os.path.basename(s) for s in packed.shards] == names
  assert (packed.images, packed.with_mask) == (7, 4)
  assert packed.not_images == ["notes.txt", "stream.jpg"]
  assert packed.masks_without_image == ["gone.png"]
  assert sorted(os.listdir(tmp_path / "shards")) == names
  stored = _stored(packed.shards, shard_format)
  assert sorted(stored) == _stored_names(awkward_folder)[shard_format]
  # Every image's bytes as in its file, damaged ones too, and its mask's where it has one.
  for name, (image, mask) in stored.items():
    path = os.path.join(images, "no_extension" if name.startswith("no_extension") else name)
    assert image == open(path, "rb").read(), name
    mask_path = os.path.join(masks, os.path.splitext(name)[0] + ".png")
    assert mask == (open(mask_path, "rb").read() if os.path.exists(mask_path) else None), name
  # Round-robin: the first, third, ... image in the first shard.
  first = _stored(packed.shards[:1], shard_format)
  assert len(first) == 4 and len(stored) - len(first) == 3


def test_tf_examples_say_format_and_size_from_the_header(awkward_folder, tmp_path):
  images, masks = awkward_folder
  packed = pack.pack(images, str(tmp_path / "pets"), masks_dir=masks, num_shards=2)
  sizes = {
    name: (
      f["image/format"].bytes_list.value[0],
      f["image/width"].int64_list.value[0],
      f["image/height"].int64_list.value[0],
    )
    for name, f in _examples(packed.shards).items()
  }
  assert sizes["pet1.jpg"] == (b"jpeg", 31, 24)
  assert sizes["no_extension"] == (b"png", 20, 30)
  assert sizes["bad_header.jpg"] == (b"jpeg", 0, 0)
  assert sizes["not_a_photo.png"] == (b"unknown", 0, 0)


@pytest.mark.parametrize("shard_format", FORMATS)
def test_the_run_over_packed_shards_reports_what_pack_stored_as_it_was(
  awkward_folder, tiny_export, tmp_path, shard_format
):
  """The damaged images pack kept are error rows of the run, not lost."""
  images, masks = awkward_folder
  prefix = str(tmp_path / "pets")
  pack.pack(images, prefix, masks_dir=masks, num_shards=2, shard_format=shard_format)
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


@pytest.mark.parametrize("shard_format", FORMATS)
def test_shards_appear_whole_or_not_at_all(awkward_folder, tmp_path, monkeypatch, shard_format):
  images, masks = awkward_folder
  prefix = str(tmp_path / "pets")
  earlier = pack.pack(images, prefix, num_shards=2, shard_format=shard_format).shards
  before = {path: open(path, "rb").read() for path in earlier}
  read = pack._read
  reads = []

  def interrupted_at_the_sixth(path):
    reads.append(path)
    if len(reads) == 6:  # four images in, two in each shard
      raise KeyboardInterrupt  # Ctrl-C half way
    return read(path)

  monkeypatch.setattr(pack, "_read", interrupted_at_the_sixth)
  with pytest.raises(KeyboardInterrupt):
    pack.pack(images, prefix, masks_dir=masks, num_shards=2, shard_format=shard_format)
  # No partial file left, and the shards of the earlier pack are as they were.
  extension = EXTENSION[shard_format]
  assert sorted(os.listdir(tmp_path)) == [
    "images",
    "masks",
    f"pets-00000-of-00002.{extension}",
    f"pets-00001-of-00002.{extension}",
  ]
  assert {path: open(path, "rb").read() for path in earlier} == before


@pytest.mark.parametrize("shard_format", FORMATS)
def test_two_masks_for_one_image_are_refused(awkward_folder, tmp_path, capsys, shard_format):
  images, masks = awkward_folder
  with open(os.path.join(masks, "pet2.bmp"), "wb") as f:
    f.write(synthetic.encode(synthetic.pet_scene(32, 24, 2)[1], "BMP"))
  code = cli.main(
    ["pack", "--images", images, "--masks", masks, "--output", str(tmp_path / "pets")]
    + ["--format", shard_format]
  )
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    f"segbeam pack: two masks for the images named 'pet2': pet2.bmp and pet2.png "
    f"in {masks}; keep one"
  )
  assert not glob.glob(str(tmp_path / "*pets*"))


@pytest.mark.parametrize("shard_format", FORMATS)
def test_the_command_says_what_it_packed_and_left_out(
  awkward_folder, tmp_path, capsys, shard_format
):
  images, masks = awkward_folder
  prefix = str(tmp_path / "pets")
  argv = ["pack", "--images", images, "--masks", masks, "--output", prefix, "--num-shards", "3"]
  if shard_format != "tfrecord":  # tfrecord: the default
    argv += ["--format", shard_format]
  assert cli.main(argv) == 0
  extension = EXTENSION[shard_format]
  assert capsys.readouterr().out.splitlines() == [
    f"packed 7 images (4 with a mask) into 3 shards: {prefix}-00000-of-00003.{extension} ... "
    f"pets-00002-of-00003.{extension}",
    f"left out 2 files of {images}, not images by name or first bytes, or not regular files: "
    "notes.txt, stream.jpg",
    f"no image for 1 mask of {masks}: gone.png",
  ]


def test_the_help_names_the_formats_and_their_extensions(capsys):
  with pytest.raises(SystemExit):
    cli.main(["pack", "--help"])
  help_text = " ".join(capsys.readouterr().out.split())
  assert "--format {tfrecord,parquet,webdataset}" in help_text
  assert "PREFIX-00000-of-0000N.tfrecord, .parquet or .tar by --format" in help_text


@pytest.mark.parametrize("shard_format", FORMATS)
def test_a_file_that_cannot_be_read_half_way_fails_the_pack_in_one_line(
  tmp_path, capsys, shard_format
):
  images = tmp_path / "images"
  images.mkdir()
  (images / "a.jpg").write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "JPEG"))
  (images / "b.jpg").symlink_to("/proc/self/mem")  # a regular file whose read fails (EIO)
  (images / "c.jpg.gz").write_bytes(b"not gzip at all")  # stored as is, never decompressed
  code = cli.main(
    ["pack", "--images", str(images), "--output", str(tmp_path / "pets"), "--format", shard_format]
  )
  assert code == 1
  assert capsys.readouterr().err == (
    f"segbeam pack: cannot read {images / 'b.jpg'}: Input/output error; no shard was written\n"
  )
  assert sorted(os.listdir(tmp_path)) == ["images"]


@pytest.mark.parametrize("shard_format", FORMATS)
def test_every_name_in_the_folder_is_packed_or_said_left_out(tmp_path, capsys, shard_format):
  """Beam's `*` matches no backslash and its listing drops links it cannot size: a name with a
  backslash is packed like any other, a name that is not UTF-8 keeps its bytes (backslash-
  escaped in Parquet's UTF-8 strings), and a dangling link or a link loop is said left out."""
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
  assert (
    cli.main(["pack", "--images", str(images), "--output", prefix, "--format", shard_format]) == 0
  )
  out = capsys.readouterr().out.splitlines()
  assert out[1] == (
    f"left out 3 files of {images}, not images by name or first bytes, or not regular files: "
    "dangling.jpg, gone\\xff.jpg, loop.jpg"
  )
  shard = f"{prefix}-00000-of-00001.{EXTENSION[shard_format]}"
  if shard_format == "tfrecord":
    import tensorflow as tf

    with open(shard, "rb") as f:
      names = sorted(
        tf.train.Example.FromString(record).features.feature["image/filename"].bytes_list.value[0]
        for _, record in tfrecord.read_records(f)
      )
    assert names == [b"back\\slash.jpg", b"caf\xe9.jpg", b"ends in a backslash\\", b"plain.jpg"]
  elif shard_format == "parquet":
    paths = sorted(row["image"]["path"] for row in pq.read_table(shard).to_pylist())
    assert paths == ["back\\slash.jpg", "caf\\xe9.jpg", "ends in a backslash\\", "plain.jpg"]
  else:
    members = sorted(
      (s["__key__"].encode("utf-8", "surrogateescape"), s["jpg"]) for s in _samples([shard])
    )
    assert members == [
      (b"back\\slash", jpeg),
      (b"caf\xe9", jpeg),
      (b"ends in a backslash\\", jpeg),
      (b"plain", jpeg),
    ]


# Parquet: Hugging Face `datasets` Image columns.


def test_parquet_shards_load_as_hugging_face_images(awkward_folder, tmp_path):
  import datasets
  from PIL import Image

  images, masks = awkward_folder
  with_masks = pack.pack(
    images, str(tmp_path / "masked"), masks_dir=masks, num_shards=2, shard_format="parquet"
  )
  alone = pack.pack(images, str(tmp_path / "alone"), shard_format="parquet")
  expected = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
  schema = pq.read_schema(with_masks.shards[0])
  # The schema and metadata `datasets` itself writes for these features.
  assert schema.equals(expected.arrow_schema, check_metadata=True)
  assert schema.metadata[b"huggingface"] == (
    b'{"info": {"features": {"image": {"_type": "Image"}, "label": {"_type": "Image"}}}}'
  )
  assert pq.read_schema(alone.shards[0]).equals(
    datasets.Features({"image": datasets.Image()}).arrow_schema, check_metadata=True
  )

  cache = str(tmp_path / "hf_cache")
  loaded = datasets.Dataset.from_parquet(with_masks.shards, cache_dir=cache)
  assert loaded.features == expected
  # Decoded, an image has no path: the undecoded rows say which row is which file.
  raw = loaded.cast(
    datasets.Features(
      {"image": datasets.Image(decode=False), "label": datasets.Image(decode=False)}
    )
  )
  by_path = {row["image"]["path"]: i for i, row in enumerate(raw)}
  pet = loaded[by_path["pet1.jpg"]]
  assert isinstance(pet["image"], Image.Image) and pet["image"].size == (31, 24)
  assert isinstance(pet["label"], Image.Image) and pet["label"].size == (31, 24)
  assert raw[by_path["pet1.jpg"]]["label"]["path"] == "pet1.png"
  unmasked = loaded[by_path["no_extension"]]
  assert unmasked["image"].size == (20, 30) and unmasked["label"] is None
  assert sorted(p for p, i in by_path.items() if raw[i]["label"] is None) == [
    "bad_header.jpg",
    "no_extension",
    "not_a_photo.png",
  ]
  alone_loaded = datasets.Dataset.from_parquet(alone.shards, cache_dir=cache)
  assert list(alone_loaded.features) == ["image"] and len(alone_loaded) == 7


@pytest.mark.parametrize(("num_shards", "row_groups"), [(1, [100, 100, 50]), (2, [100, 25])])
def test_parquet_row_groups_hold_at_most_100_images(tmp_path, num_shards, row_groups):
  images = tmp_path / "images"
  images.mkdir()
  for i in range(250):
    (images / f"{i:03d}.png").write_bytes(synthetic.encode(synthetic.pet_scene(4, 4, i)[0], "PNG"))
  packed = pack.pack(
    str(images), str(tmp_path / "pets"), num_shards=num_shards, shard_format="parquet"
  )
  for shard in packed.shards:
    metadata = pq.ParquetFile(shard).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == row_groups
  paths = [row["image"]["path"] for s in packed.shards for row in pq.read_table(s).to_pylist()]
  assert sorted(paths) == [f"{i:03d}.png" for i in range(250)]


def test_parquet_row_groups_are_cut_by_bytes_too_so_many_shards_hold_little(tmp_path, monkeypatch):
  """Round-robin fills every shard's row group at once: together they hold at most
  PARQUET_BUFFER_BYTES, and an image each, until written."""
  images = tmp_path / "images"
  images.mkdir()
  sizes = {}
  for i in range(40):
    data = synthetic.encode(synthetic.pet_scene(24, 24, i)[0], "PNG")
    sizes[f"{i:02d}.png"] = len(data)
    (images / f"{i:02d}.png").write_bytes(data)
  budget = 4 * max(sizes.values()) * 4  # four shards: four images' worth each
  monkeypatch.setattr(pack, "PARQUET_BUFFER_BYTES", budget)
  packed = pack.pack(str(images), str(tmp_path / "pets"), num_shards=4, shard_format="parquet")
  for shard in packed.shards:
    groups = [
      pq.ParquetFile(shard).read_row_group(i).column("image").to_pylist()
      for i in range(pq.ParquetFile(shard).num_row_groups)
    ]
    assert sum(len(group) for group in groups) == 10
    for group in groups:
      # Cut at the first image that reaches the shard's share of the budget.
      assert sum(sizes[row["path"]] for row in group[:-1]) < budget // 4
      assert len(group) < 10


# WebDataset: tar samples.


def _tar_members(shard):
  with tarfile.open(shard, "r:") as tar:
    return tar.getmembers()


def test_webdataset_samples_have_keys_and_members_as_readers_split_them(tmp_path):
  images, masks = tmp_path / "images", tmp_path / "masks"
  images.mkdir()
  masks.mkdir()
  scene = [synthetic.pet_scene(20 + i, 16, i) for i in range(6)]
  files = {
    "a.b.jpg": synthetic.encode(scene[0][0], "JPEG"),  # a dot in the stem
    "UPPER.JPG": synthetic.encode(scene[1][0], "JPEG"),
    "raw": synthetic.encode(scene[2][0], "JPEG"),  # no extension: sniffed
    "scan.dat": synthetic.encode(scene[3][0], "PNG"),  # not named as an image: sniffed
    "x" * 150 + ".png": synthetic.encode(scene[4][0], "PNG"),  # past ustar's 100 bytes
    "plain.gif": synthetic.encode(scene[5][0], "GIF"),
  }
  mask_files = {
    "a.b.png": synthetic.encode(scene[0][1], "PNG"),
    "UPPER.BMP": synthetic.encode(scene[1][1], "BMP"),
    "raw": synthetic.encode(scene[2][1], "PNG"),
  }
  for name, data in files.items():
    (images / name).write_bytes(data)
  for name, data in mask_files.items():
    (masks / name).write_bytes(data)
  packed = pack.pack(
    str(images), str(tmp_path / "pets"), masks_dir=str(masks), shard_format="webdataset"
  )
  assert (packed.images, packed.with_mask) == (6, 3)
  samples = {
    s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
    for s in _samples(packed.shards)
  }
  assert samples == {
    "a_b": {"jpg": files["a.b.jpg"], "seg.png": mask_files["a.b.png"]},
    "UPPER": {"jpg": files["UPPER.JPG"], "seg.bmp": mask_files["UPPER.BMP"]},
    "raw": {"jpg": files["raw"], "seg.png": mask_files["raw"]},
    "scan": {"png": files["scan.dat"]},
    "x" * 150: {"png": files["x" * 150 + ".png"]},
    "plain": {"gif": files["plain.gif"]},
  }
  # Members of a sample consecutive, in the images' order; no trace of who packed them when.
  members = _tar_members(packed.shards[0])
  assert [m.name for m in members] == [
    "UPPER.jpg",
    "UPPER.seg.bmp",
    "a_b.jpg",
    "a_b.seg.png",
    "plain.gif",
    "raw.jpg",
    "raw.seg.png",
    "scan.png",
    "x" * 150 + ".png",
  ]
  assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname, m.isreg()) for m in members} == {
    (0, 0o644, 0, 0, "", "", True)
  }
  again = pack.pack(
    str(images), str(tmp_path / "again"), masks_dir=str(masks), shard_format="webdataset"
  )
  assert open(again.shards[0], "rb").read() == open(packed.shards[0], "rb").read()


@pytest.mark.parametrize(
  ("names", "key"), [(["a.jpg", "a.png"], "a"), (["a.b.jpg", "a_b.jpg"], "a_b")]
)
def test_images_of_one_webdataset_key_are_refused_and_packed_in_other_formats(
  tmp_path, capsys, names, key
):
  images = tmp_path / "images"
  images.mkdir()
  for name in names:
    (images / name).write_bytes(synthetic.encode(synthetic.pet_scene(8, 8, 0)[0], "PNG"))
  prefix = str(tmp_path / "pets")
  argv = ["pack", "--images", str(images), "--output", prefix]
  assert cli.main(argv + ["--format", "webdataset"]) == 2
  assert capsys.readouterr().err.strip() == (
    f"segbeam pack: two images for the WebDataset key {key!r}: {names[0]} and {names[1]} "
    f"in {images}; rename one"
  )
  assert sorted(os.listdir(tmp_path)) == ["images"]
  for shard_format in ("tfrecord", "parquet"):
    assert cli.main(argv + ["--format", shard_format]) == 0
    shard = f"{prefix}-00000-of-00001.{EXTENSION[shard_format]}"
    assert sorted(_stored([shard], shard_format)) == names


@pytest.mark.usefixtures("gcs_emulator")  # sets STORAGE_EMULATOR_HOST
def test_every_format_packs_from_and_into_gs(awkward_folder, tmp_path):
  """Parquet's and tar's writers on the stream Beam's GCS file system gives: whole shards, and
  only those, under the prefix."""
  images, masks = awkward_folder
  os.remove(os.path.join(images, "stream.jpg"))  # (no FIFO in an object store)
  gcs_emulator.upload_folder(images, "segbeam-test", "pack/images")
  gcs_emulator.upload_folder(masks, "segbeam-test", "pack/masks")
  root = "gs://segbeam-test/pack"
  for shard_format in FORMATS:
    packed = pack.pack(
      f"{root}/images",
      f"{root}/{shard_format}/pets",
      masks_dir=f"{root}/masks",
      num_shards=2,
      shard_format=shard_format,
    )
    assert (packed.images, packed.with_mask, packed.not_images) == (7, 4, ["notes.txt"])
    listed = sorted(
      m.path for m in FileSystems.match([f"{root}/{shard_format}/*"])[0].metadata_list
    )
    assert listed == packed.shards
    local = []
    for shard in packed.shards:
      local.append(str(tmp_path / f"{shard_format}-{len(local)}"))
      with FileSystems.open(shard) as source, open(local[-1], "wb") as target:
        target.write(source.read())
    stored = _stored(local, shard_format)
    assert sorted(stored) == _stored_names(awkward_folder)[shard_format]
    assert stored["pet0.jpg"] == (
      open(os.path.join(images, "pet0.jpg"), "rb").read(),
      open(os.path.join(masks, "pet0.png"), "rb").read(),
    )
