"""Reading image files and TFRecord shards into records, with stable unique ids."""

import io
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from segbeam import constants
from segbeam.commands import pack
from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord
from tests import synthetic

JPEG = synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "JPEG")
MASK = synthetic.encode(synthetic.pet_scene(20, 16, 0)[1], "PNG")


@pytest.mark.parametrize(
  "pattern,root",
  [
    ("/data/imgs/*.jpg", "/data/imgs/"),
    ("/data/**/a?.png", "/data/"),
    ("gs://b/x/[ab]*.jpg", "gs://b/x/"),
    ("/data/one.jpg", "/data/"),
    ("*.jpg", ""),
  ],
)
def test_pattern_root(pattern, root):
  assert sources.pattern_root(pattern) == root


TFR, PQ, WDS, IMG = (
  constants.FORMAT_TFRECORD,
  constants.FORMAT_PARQUET,
  constants.FORMAT_WEBDATASET,
  constants.FORMAT_IMAGES,
)


@pytest.mark.parametrize(
  "name,expected",
  [
    ("train.tfrecord", TFR),
    ("a.tfrecords", TFR),
    ("x-00001-of-00010.tfrecord", TFR),
    ("train.tfrecord-00001-of-00004", TFR),
    ("a.tfr", TFR),
    ("train-00000-of-00008.parquet", PQ),
    ("a.PQ", PQ),
    ("shard-000001.tar", WDS),
    ("shard.tar.gz", WDS),
    ("shard.tgz", WDS),
    ("cat.jpg", IMG),
    ("tfrecord_cat.png", IMG),
    ("parquet.jpeg", IMG),
  ],
)
def test_format_detection_by_name(name, expected):
  def never_opened():
    raise AssertionError("a name that says what the file is decides without opening it")

  assert sources.input_kind(f"/d/{name}", constants.FORMAT_AUTO, open_file=never_opened) == expected
  for given in (TFR, PQ, WDS, IMG):  # --input-format decides alone
    assert sources.input_kind(f"/d/{name}", given, open_file=never_opened) == given


def _tar_bytes(compress: bool = False) -> bytes:
  import gzip
  import tarfile

  stream = io.BytesIO()
  with tarfile.open(fileobj=stream, mode="w") as tar:
    info = tarfile.TarInfo("k.jpg")
    info.size = len(JPEG)
    tar.addfile(info, io.BytesIO(JPEG))
  return gzip.compress(stream.getvalue()) if compress else stream.getvalue()


def _parquet_bytes() -> bytes:
  import pyarrow as pa
  import pyarrow.parquet as pq

  stream = io.BytesIO()
  pq.write_table(pa.table({"image": [JPEG]}), stream)
  return stream.getvalue()


@pytest.mark.parametrize(
  "contents,expected",
  [
    (tfrecord.encode_record(b"x"), TFR),
    (_parquet_bytes(), PQ),
    (_tar_bytes(), WDS),
    (_tar_bytes(compress=True), WDS),
    (JPEG, IMG),
    (b"\x1f\x8b" + b"not gzip", IMG),
    (b"", IMG),
  ],
)
def test_a_name_that_does_not_say_is_decided_by_the_first_bytes(contents, expected):
  name = "/d/train-00000-of-01024"
  opened = sources.input_kind(name, constants.FORMAT_AUTO, open_file=lambda: io.BytesIO(contents))
  assert opened == expected
  assert sources.input_kind(name, constants.FORMAT_AUTO) == IMG  # nothing to open it with


def test_a_file_that_cannot_be_opened_to_tell_is_read_as_an_image():
  def unreadable():
    raise OSError("permission denied")

  assert sources.input_kind("/d/data-1", constants.FORMAT_AUTO, open_file=unreadable) == IMG


def _read(pattern, **kwargs):
  p = TestPipeline()
  out = p | sources.ReadImages(pattern, **kwargs)
  return p, out


def test_image_files_get_ids_relative_to_the_pattern_root(tmp_path):
  (tmp_path / "cats").mkdir()
  (tmp_path / "cats" / "felix.jpg").write_bytes(JPEG)
  (tmp_path / "dog.jpg").write_bytes(JPEG)
  (tmp_path / "huge.jpg").write_bytes(JPEG + b"\0" * 5000)
  p, out = _read(str(tmp_path) + "/**", max_file_bytes=4000)
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.data == JPEG)),
    equal_to([("cats/felix.jpg", True), ("dog.jpg", True)]),
    label="records",
  )
  assert_that(
    out.failures | beam.Map(lambda f: (f.image_id, f.error_type)),
    equal_to([("huge.jpg", "FileTooLarge")]),
    label="failures",
  )
  p.run().wait_until_finish()


def _shard(path, examples):
  with open(path, "wb") as f:
    for example in examples:
      f.write(tfrecord.encode_record(example))


# Without the reshuffle (runs in one process) the ids and failures are the same.
@pytest.mark.parametrize("spread_files", [True, False])
def test_tfrecord_ids_labels_and_bad_records(tmp_path, spread_files):
  import tensorflow as tf

  no_image = tf.train.Example(
    features=tf.train.Features(
      feature={
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"lost.jpg"]))
      }
    )
  )
  _shard(
    tmp_path / "a.tfrecord",
    [
      pack.make_example("x.jpg", JPEG, MASK),
      pack.make_example("x.jpg", JPEG),  # repeated in the shard
      pack.make_example("", JPEG),  # no filename
      b"\x08\x96\x01garbage that is no Example",  # not an Example
      no_image.SerializeToString(),
    ],
  )
  with open(tmp_path / "a.tfrecord", "ab") as f:  # truncated last record
    f.write(tfrecord.encode_record(pack.make_example("cut.jpg", JPEG))[:40])
  _shard(
    tmp_path / "b.tfrecord", [pack.make_example("y.jpg", JPEG), pack.make_example("x.jpg", JPEG)]
  )  # repeated across shards
  p, out = _read(str(tmp_path / "*.tfrecord"), spread_files=spread_files)
  # Ids are places; filenames, repeated or missing, are only carried along.
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.filename, r.label == MASK, r.source[-2:])),
    equal_to(
      [
        ("a.tfrecord#0", "x.jpg", True, "#0"),
        ("a.tfrecord#1", "x.jpg", False, "#1"),
        ("a.tfrecord#2", None, False, "#2"),
        ("b.tfrecord#0", "y.jpg", False, "#0"),
        ("b.tfrecord#1", "x.jpg", False, "#1"),
      ]
    ),
    label="records",
  )
  assert_that(
    out.failures | beam.Map(lambda f: (f.image_id, f.filename, f.error_type)),
    equal_to(
      [
        ("a.tfrecord#3", None, "NotAnExample"),
        ("a.tfrecord#4", "lost.jpg", "MissingImage"),
        ("a.tfrecord#5", None, "CorruptRecord"),
      ]
    ),
    label="failures",
  )
  p.run().wait_until_finish()


@pytest.mark.parametrize("spread_files", [True, False])
def test_a_record_named_like_an_image_file_keeps_its_place_as_id(tmp_path, spread_files):
  (tmp_path / "pet.jpg").write_bytes(JPEG)
  (tmp_path / "cats").mkdir()
  (tmp_path / "cats" / "felix.jpg").write_bytes(JPEG)
  _shard(
    tmp_path / "mixed.tfrecord",
    [
      pack.make_example("pet.jpg", JPEG),
      pack.make_example("cats/felix.jpg", JPEG),
      pack.make_example("own.jpg", JPEG),
    ],
  )
  p, out = _read(str(tmp_path) + "/**", spread_files=spread_files)
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.filename)),
    equal_to(
      [
        ("pet.jpg", "pet.jpg"),
        ("cats/felix.jpg", "cats/felix.jpg"),
        ("mixed.tfrecord#0", "pet.jpg"),
        ("mixed.tfrecord#1", "cats/felix.jpg"),
        ("mixed.tfrecord#2", "own.jpg"),
      ]
    ),
    label="unique ids",
  )
  p.run().wait_until_finish()


@pytest.mark.parametrize("spread_files", [True, False])
def test_files_whose_names_do_not_say_are_read_by_what_they_hold(tmp_path, spread_files):
  """TensorFlow's usual shard names ('train-00000-of-01024') have no extension; nor may photos."""
  _shard(
    tmp_path / "train-00000-of-00002",
    [pack.make_example("x.jpg", JPEG), pack.make_example("y.jpg", JPEG)],
  )
  _shard(tmp_path / "train-00001-of-00002", [pack.make_example("x.jpg", JPEG)])  # x repeated
  (tmp_path / "photo").write_bytes(JPEG)
  # Named as an image, so read as one, whole: validation then says what it is.
  (tmp_path / "shard.jpg").write_bytes(tfrecord.encode_record(pack.make_example("z.jpg", JPEG)))
  p, out = _read(str(tmp_path / "*"), spread_files=spread_files)
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.data == JPEG)),
    equal_to(
      [
        ("train-00000-of-00002#0", True),
        ("train-00000-of-00002#1", True),
        ("train-00001-of-00002#0", True),
        ("photo", True),
        ("shard.jpg", False),
      ]
    ),
    label="records",
  )
  p.run().wait_until_finish()


def test_pack_writes_shards_the_reader_reads(tmp_path, pet_folder):
  images, masks, names = pet_folder
  prefix = str(tmp_path / "shards" / "pets")
  os.makedirs(os.path.dirname(prefix))
  paths = pack.pack(images, prefix, masks_dir=masks, num_shards=2).shards
  assert [os.path.basename(x) for x in paths] == [
    "pets-00000-of-00002.tfrecord",
    "pets-00001-of-00002.tfrecord",
  ]
  p, out = _read(prefix + "-*")
  assert_that(
    out.rows | beam.Map(lambda r: (r.filename, r.label is not None)),
    equal_to([(n + ".jpg", True) for n in names]),
  )
  p.run().wait_until_finish()
  example = __import__("tensorflow").train.Example.FromString(
    next(r for _, r in tfrecord.read_records(open(paths[0], "rb")))
  )
  features = example.features.feature
  assert features["image/format"].bytes_list.value == [b"jpeg"]
  assert features["image/height"].int64_list.value == [40]
  assert np.array_equal(features["image/width"].int64_list.value, [48])


def test_reads_stop_at_the_size_limit_whatever_size_a_file_is_listed_at(tmp_path):
  import gzip

  # Listed at a few hundred bytes, read (decompressed, as Beam reads .gz) at 300 KB.
  (tmp_path / "bomb.jpg.gz").write_bytes(gzip.compress(JPEG + b"\0" * 300_000))
  (tmp_path / "small.jpg.gz").write_bytes(gzip.compress(JPEG))
  _shard(
    tmp_path / "s.tfrecord",
    [pack.make_example("big.jpg", JPEG + b"\0" * 200_000), pack.make_example("next.jpg", JPEG)],
  )
  p, out = _read(str(tmp_path / "*"), max_file_bytes=100_000)
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.data == JPEG)),
    equal_to([("small.jpg.gz", True), ("s.tfrecord#1", True)]),
    label="records",
  )
  limit_named = ("more than 100000 bytes read", "over the 100000-byte limit")
  assert_that(
    out.failures
    | beam.Map(
      lambda f: (f.image_id, f.error_type, any(words in f.message for words in limit_named))
    ),
    equal_to([("bomb.jpg.gz", "FileTooLarge", True), ("s.tfrecord#0", "RecordTooLarge", True)]),
    label="failures",
  )
  p.run().wait_until_finish()


@pytest.mark.parametrize(
  "path,folder",
  [
    ("/photos/out/manifest.json", "/photos/out"),
    ("/photos/out/masks/cat.jpg.1a2b3c4d5e6f.png", "/photos/out"),
    ("/photos/out/segments/part-00000-of-00001.parquet", "/photos/out"),
    ("gs://bucket/runs/a/errors/part-00000-of-00001.parquet", "gs://bucket/runs/a"),
    ("/photos/cat.jpg", None),
    ("/photos/masks_old/cat.png", None),
    ("manifest.json", None),
  ],
)
def test_where_a_file_would_belong_to_a_segbeam_output(path, folder):
  assert sources.output_folder_candidate(path) == folder


def test_a_previous_runs_files_under_the_glob_are_error_rows_not_photos(small_run, tmp_path):
  """Its mask PNGs would be segmented as photos; a dataset's own manifest.json and masks
  folder are inputs like any other file."""
  import shutil

  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "cat.jpg").write_bytes(JPEG)
  shutil.copytree(small_run, photos / "run1")
  (photos / "run1" / "masks").mkdir()
  (photos / "run1" / "masks" / "cat.jpg.0123456789ab.png").write_bytes(JPEG)
  (photos / "manifest.json").write_text('{"dataset": "my pets"}')
  (photos / "masks").mkdir()
  (photos / "masks" / "cat.png").write_bytes(JPEG)
  run_files = sorted(
    str(p.relative_to(photos)) for p in (photos / "run1").rglob("*") if p.is_file()
  )
  assert "run1/manifest.json" in run_files and len(run_files) >= 4
  p, out = _read(str(photos) + "/**")
  assert_that(
    out.rows | beam.Map(lambda r: r.image_id),
    equal_to(["cat.jpg", "manifest.json", "masks/cat.png"]),
    label="records",
  )
  assert_that(
    out.failures
    | beam.Map(lambda f: (f.image_id, f.stage, f.error_type, str(photos / "run1") in f.message)),
    equal_to([(name, "read", "SegbeamOutput", True) for name in run_files]),
    label="failures",
  )
  p.run().wait_until_finish()


def test_a_glob_rooted_inside_a_previous_output_asks_for_its_files(small_run, tmp_path):
  import shutil

  shutil.copytree(small_run, tmp_path / "run1")
  (tmp_path / "run1" / "masks").mkdir()
  (tmp_path / "run1" / "masks" / "cat.jpg.0123456789ab.png").write_bytes(JPEG)
  p, out = _read(str(tmp_path / "run1" / "masks") + "/*.png")
  assert_that(
    out.rows | beam.Map(lambda r: r.image_id),
    equal_to(["cat.jpg.0123456789ab.png"]),
    label="records",
  )
  assert_that(out.failures, equal_to([]), label="no failures")
  p.run().wait_until_finish()


@pytest.mark.parametrize(
  "pattern", ["*.jpg", "**/*.jpg", "**", "sub/[ab]*.jpg", "sub/a?.jpg", "top.jpg", "nothing*"]
)
def test_files_are_listed_one_by_one_as_beam_matches_them(tmp_path, pattern):
  for name in ("top.jpg", "other.png", "sub/a1.jpg", "sub/b2.jpg", "sub/c3.jpg", "sub/d/e.jpg"):
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    (tmp_path / name).write_bytes(b"x")
  from apache_beam.io.filesystems import FileSystems

  full = str(tmp_path / pattern)
  (expected,) = FileSystems.match([full])
  listed = sources.iter_matches(full)
  assert not isinstance(listed, list)
  assert sorted((m.path, m.size_in_bytes) for m in listed) == sorted(
    (m.path, m.size_in_bytes) for m in expected.metadata_list
  )


def test_links_that_cannot_be_sized_are_listed_with_size_zero_not_dropped(tmp_path):
  """Beam's local listing drops a dangling link or a link loop unsaid; every name a glob
  matches must be a row, so they are listed (size 0) for `ReadFile` to refuse."""
  (tmp_path / "ok.jpg").write_bytes(b"xy")
  (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
  (tmp_path / "loop.jpg").symlink_to("loop.jpg")
  (tmp_path / "sub").symlink_to(tmp_path / "sub")  # a folder loop: listed as a name too
  listed = sorted((m.path, m.size_in_bytes) for m in sources.iter_matches(f"{tmp_path}/*.jpg"))
  assert listed == [
    (f"{tmp_path}/dangling.jpg", 0),
    (f"{tmp_path}/loop.jpg", 0),
    (f"{tmp_path}/ok.jpg", 2),
  ]
  assert sources.not_a_regular_file(f"{tmp_path}/loop.jpg").startswith("cannot stat")


def test_names_that_are_not_utf8_make_ids_that_encode():
  assert sources.relative_id(os.fsdecode(b"/in/sub/caf\xe9.png"), "/in/") == "sub/caf\\xe9.png"
  assert sources.relative_id(os.fsdecode(b"/in\xff/a.png"), os.fsdecode(b"/in\xff/")) == "a.png"
  assert sources.encodable("plain ünïcødé\\name") == "plain ünïcødé\\name"
  assert sources.encodable("\ud800") == "\\ud800"


def test_a_tar_shards_rows_never_share_an_id(tmp_path):
  """A member with no extension is told by its place, not its name: 'README' next to a sample
  keyed 'README' (from README.txt); a key seen twice is told by where it came again; and no
  key can spell those ids ('@0.member' has a dot in its last part, a key never has)."""
  import tarfile

  stream = io.BytesIO()
  with tarfile.open(fileobj=stream, mode="w") as tar:
    for name, data in (
      ("README", b"notes"),
      ("README.txt", b"more notes"),
      ("k.jpg", JPEG),
      ("other.jpg", JPEG),
      ("k.jpg", JPEG),
      ("@0.jpg", JPEG),  # a key spelled like a place
    ):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  (tmp_path / "s.tar").write_bytes(stream.getvalue())
  with tarfile.open(tmp_path / "s.tar") as tar:
    again = tar.getmembers()[-2].offset  # the second k.jpg's header
  p, out = _read(str(tmp_path / "*.tar"))
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.filename, r.data == JPEG)),
    equal_to(
      [
        ("s.tar#k", "k.jpg", True),
        ("s.tar#other", "other.jpg", True),
        ("s.tar#@0", "@0.jpg", True),
      ]
    ),
    label="records",
  )
  assert_that(
    out.failures | beam.Map(lambda f: (f.image_id, f.error_type)),
    equal_to(
      [
        ("s.tar#@0.member", "NotASampleMember"),
        ("s.tar#README", "MissingImage"),
        (f"s.tar#k@{again}.again", "DuplicateKey"),
      ]
    ),
    label="failures",
  )
  p.run()
