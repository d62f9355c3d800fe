"""Parquet files and WebDataset tar shards as `segbeam run` inputs, end to end.

The shards are written by the tools people make them with (Hugging Face `datasets`,
`webdataset.TarWriter`; TFRecord by `segbeam pack`), never imitated by hand, and run through
`segbeam run` as a user runs it (`cli.main`).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset

from segbeam import cli
from segbeam.commands import pack
from segbeam.pipeline import progress
from segbeam.results import output as output_lib
from tests import accounting
from tests import gcs_emulator as helper
from tests import synthetic
from tests.pipeline import hostile_corpus
from tests.run import crash_resume_test

PHOTOS = (
  "Abyssinian_1",
  "Abyssinian_10",
  "Bengal_10",
  "Bengal_100",
  "american_bulldog_10",
  "american_bulldog_100",
)
# Besides these, the same photo's row must be the same whatever its input format.
VARYING = ("image_id", "source", "run_id")


def _run(capsys, *argv: str) -> tuple[int, str]:
  """`segbeam run ARGV` as the command line runs it: (exit code, stdout and stderr)."""
  code = cli.main(["run", *argv])
  captured = capsys.readouterr()
  return code, captured.out + captured.err


def _rows(output: str, table: str = "segments") -> list[dict]:
  return output_lib.RunOutput(output).dataset(table).to_table().to_pylist()


def _by_id(output: str, table: str = "segments") -> dict[str, dict]:
  return {row["image_id"]: row for row in _rows(output, table)}


def _hf_image(data: bytes, path: str | None) -> dict:
  return {"bytes": data, "path": path}


def _write_hf_parquet(path: str, columns: dict[str, list], images=("image",), **kwargs) -> None:
  """A Parquet file as Hugging Face `datasets` writes one: `images` columns cast to its Image
  feature ({bytes, path} structs)."""
  dataset = datasets.Dataset.from_dict(columns)
  for name in images:
    dataset = dataset.cast_column(name, datasets.Image())
  dataset.to_parquet(path, **kwargs)


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory):
  """Real pet photos with their trimaps, and two generated ones: (images dir, masks dir,
  {stem: (image bytes, mask bytes)})."""
  root = tmp_path_factory.mktemp("photos")
  images, masks = root / "images", root / "masks"
  images.mkdir()
  masks.mkdir()
  found = {}
  for stem in PHOTOS:
    shutil.copy(os.path.join(shared_data, "images", f"{stem}.jpg"), images / f"{stem}.jpg")
    shutil.copy(os.path.join(shared_data, "trimaps", f"{stem}.png"), masks / f"{stem}.png")
  for index, (width, height) in enumerate([(64, 48), (41, 77)]):
    image, trimap = synthetic.pet_scene(width, height, seed=index)
    (images / f"scene_{index}.jpg").write_bytes(synthetic.encode(image, "JPEG"))
    (masks / f"scene_{index}.png").write_bytes(synthetic.encode(trimap, "PNG"))
  for name in sorted(os.listdir(images)):
    stem = name[: -len(".jpg")]
    found[stem] = ((images / name).read_bytes(), (masks / f"{stem}.png").read_bytes())
  return str(images), str(masks), found


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
  """The photos and their trimaps as TFRecord (pets-*.tfrecord, by `segbeam pack`), Parquet
  (pets.parquet, by Hugging Face `datasets`) and WebDataset (pets.tar, by TarWriter): the
  folder."""
  images, masks, found = photos
  folder = tmp_path_factory.mktemp("shards")
  pack.pack(images, str(folder / "pets"), masks_dir=masks, num_shards=2)
  names = sorted(found)
  _write_hf_parquet(
    str(folder / "pets.parquet"),
    {
      "image": [_hf_image(found[s][0], f"{s}.jpg") for s in names],
      "label": [_hf_image(found[s][1], f"{s}.png") for s in names],
    },
    images=("image", "label"),
  )
  with webdataset.TarWriter(str(folder / "pets.tar")) as tar:
    for stem in names:
      tar.write({"__key__": stem, "jpg": found[stem][0], "seg.png": found[stem][1]})
  return folder


@pytest.fixture(scope="module")
def format_runs(photos, shards, tiny_export, tmp_path_factory):
  """The photos run as files (with --ground-truth) and as each kind of shard: {kind: output}."""
  images, masks, found = photos
  inputs = {
    "files": [f"{images}/*.jpg", "--ground-truth", f"{masks}/*.png"],
    "tfrecord": [str(shards / "pets-*.tfrecord")],
    "parquet": [str(shards / "pets.parquet")],
    "webdataset": [str(shards / "pets.tar")],
  }
  root = tmp_path_factory.mktemp("format_runs")
  outputs = {}
  for kind, given in inputs.items():
    outputs[kind] = str(root / kind)
    code = cli.main(
      ["run", "--input", *given, "--output", outputs[kind], "--model", tiny_export[0]]
    )
    assert code == 0, kind
    accounting.assert_accounted_for(outputs[kind], inputs_seen=len(found))
  return outputs


def _comparable(output: str, key: str = "filename") -> dict[str, dict]:
  """A run's segments rows by `key`, without the columns that say where and when it ran."""
  return {row[key]: {k: v for k, v in row.items() if k not in VARYING} for row in _rows(output)}


def test_every_format_gives_the_same_rows_for_the_same_photos(photos, format_runs):
  names = sorted(photos[2])
  tables = {}
  for kind, output in format_runs.items():
    assert _rows(output, "errors") == [], kind
    tables[kind] = _comparable(output)
  assert sorted(tables["files"]) == [f"{s}.jpg" for s in names]
  assert all(row["gt_pixels"] > 0 for row in tables["files"].values())
  for kind in ("tfrecord", "parquet", "webdataset"):
    for filename, row in tables["files"].items():
      assert tables[kind][filename] == row, (kind, filename)
  ids = {kind: sorted(_by_id(output)) for kind, output in format_runs.items()}
  assert ids["parquet"] == [f"pets.parquet#{i}" for i in range(len(names))]
  assert ids["webdataset"] == [f"pets.tar#{s}" for s in names]


def _scene(width: int, height: int, seed: int, fmt: str = "JPEG") -> tuple[bytes, bytes]:
  """A generated image and its trimap, encoded."""
  image, trimap = synthetic.pet_scene(width, height, seed=seed)
  return synthetic.encode(image, fmt), synthetic.encode(trimap, "PNG")


def test_parquet_rows_their_ids_and_the_rows_that_have_no_usable_image(
  shared_data, tiny_export, tmp_path, capsys
):
  folder = tmp_path / "parquet"
  folder.mkdir()
  scenes = [_scene(30 + i, 20 + i, seed=i) for i in range(6)]
  large = open(os.path.join(shared_data, "images", "Bengal_10.jpg"), "rb").read()
  limit = 100_000
  assert len(large) > limit > max(len(image) for image, _ in scenes)
  # Rows 0-2 and 7-8 have images; 3 is null, 4 a path only (never to be opened), 5 bytes that
  # are no image, 6 an image over --max-file-bytes; in row groups of 3.
  images = [_hf_image(image, f"scene_{i}.jpg") for i, (image, _) in enumerate(scenes[:3])]
  images += [
    None,
    _hf_image(None, "/etc/passwd"),
    _hf_image(b"not an image at all", "notes.jpg"),
    _hf_image(large, "Bengal_10.jpg"),
  ]
  images += [_hf_image(image, f"scene_{i}.jpg") for i, (image, _) in enumerate(scenes[3:5], 3)]
  labels = [_hf_image(scenes[i][1], None) for i in range(3)] + [None] * 4
  labels += [_hf_image(scenes[i][1], None) for i in (3, 4)]
  _write_hf_parquet(
    str(folder / "a.parquet"), {"image": images, "label": labels}, ("image", "label"), batch_size=3
  )
  assert pq.ParquetFile(folder / "a.parquet").metadata.num_row_groups == 3
  # A second file, its one image column named otherwise: found without a flag.
  _write_hf_parquet(
    str(folder / "b.parquet"), {"picture": [_hf_image(scenes[5][0], "last.jpg")] * 2}, ("picture",)
  )
  # A third with two image columns, neither named image nor label: which is the image?
  named = {
    "photo": [_hf_image(image, None) for image, _ in scenes[:4]],
    "annotation": [_hf_image(label, None) for _, label in scenes[:4]],
    "name": ["cat", "dog", None, "cat"],
  }
  _write_hf_parquet(str(folder / "c.parquet"), named, ("photo", "annotation"))

  output = str(tmp_path / "out")
  argv = ["--input", f"{folder}/*.parquet", "--model", tiny_export[0]]
  code, text = _run(capsys, *argv, "--output", output, "--max-file-bytes", str(limit))
  assert code == 0, text
  # Every row of a and b is an input, c.parquet one: the file, whose rows cannot be read.
  accounting.assert_accounted_for(output, inputs_seen=9 + 2 + 1)
  # The progress total came from the footers, before any row was read: c.parquet's 4 rows are
  # one input, as its columns are chosen there too, so the total is what the run sees.
  assert progress.tally()[progress.LISTED] == 9 + 2 + 1
  segments, errors = _by_id(output), _by_id(output, "errors")
  assert {i: (r["filename"], r["width"]) for i, r in segments.items()} == {
    **{f"a.parquet#{i}": (f"scene_{i}.jpg", 30 + i) for i in range(3)},
    **{f"a.parquet#{i + 4}": (f"scene_{i}.jpg", 30 + i) for i in (3, 4)},
    "b.parquet#0": ("last.jpg", 35),
    "b.parquet#1": ("last.jpg", 35),
  }
  # Each row's label is its own over the row groups: one of another size could not be used.
  for image_id, row in segments.items():
    has_label = image_id.startswith("a.parquet")
    assert (row["gt_pixels"] is not None) == has_label, image_id
    assert row["gt_error"] is None, row["gt_error"]
  expected = {
    "a.parquet#3": ("read", "MissingImage", "row 3: its image is null", None),
    "a.parquet#4": ("read", "MissingImage", "'/etc/passwd'", "/etc/passwd"),
    "a.parquet#5": ("validate", "UnsupportedFormat", "not an image", "notes.jpg"),
    "a.parquet#6": (
      "read",
      "FileTooLarge",
      f"row 6: its image's {len(large)} bytes",
      "Bengal_10.jpg",
    ),
    "c.parquet": ("read", "NoImageColumn", "say which with --image-column", "c.parquet"),
  }
  assert sorted(errors) == sorted(expected)
  for image_id, (stage, error_type, words, filename) in expected.items():
    row = errors[image_id]
    assert (row["stage"], row["error_type"]) == (stage, error_type), row
    assert words in row["message"], row
    assert row["filename"] == filename, row
    file, _, index = image_id.partition("#")
    assert row["source"] == str(folder / file) + (f"#{index}" if index else ""), row

  # Told which columns: ids from the name column (FILE#VALUE, its value the filename), the
  # annotation the ground truth; a null and a repeated name are error rows.
  output = str(tmp_path / "named")
  code, text = _run(
    capsys,
    *["--input", str(folder / "c.parquet"), "--model", tiny_export[0], "--output", output],
    *["--image-column", "photo", "--label-column", "annotation", "--id-column", "name"],
  )
  assert code == 0, text
  accounting.assert_accounted_for(output, inputs_seen=4)
  segments, errors = _by_id(output), _by_id(output, "errors")
  assert {i: (r["filename"], r["width"]) for i, r in segments.items()} == {
    "c.parquet#cat": ("cat", 30),
    "c.parquet#dog": ("dog", 31),
  }
  assert all(row["gt_pixels"] > 0 and row["gt_error"] is None for row in segments.values())
  assert {i: (r["error_type"], r["filename"]) for i, r in errors.items()} == {
    "c.parquet#row 2": ("MissingId", None),
    "c.parquet#row 3": ("DuplicateId", "cat"),
  }


def _tar(samples: list[dict], **kwargs) -> bytes:
  """A WebDataset shard of `samples` as `webdataset.TarWriter` writes it."""
  stream = io.BytesIO()
  with webdataset.TarWriter(stream, **kwargs) as writer:
    for sample in samples:
      writer.write(sample)
  return stream.getvalue()


def _member(shard: bytes, name: str) -> tarfile.TarInfo:
  """Where `name` is in `shard` (Python's tarfile reading the shard whole)."""
  with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
    return tar.getmember(name)


def _snapshot(root: str, skip: str) -> set[str]:
  """Every file and folder under `root`, but `skip` and what it holds."""
  found = set()
  for folder, folders, files in os.walk(root):
    found.update(os.path.join(folder, name) for name in folders + files)
  return {path for path in found if os.path.commonpath([path, skip]) != skip}


def test_webdataset_samples_their_ids_and_the_samples_that_have_no_usable_image(
  shared_data, tiny_export, tmp_path, capsys
):
  folder, outside = tmp_path / "wds", tmp_path / "outside"
  folder.mkdir()
  outside.mkdir()
  output = tmp_path / "run" / "out"
  output.parent.mkdir()
  jpgs = [_scene(30 + i, 20 + i, seed=i) for i in range(8)]
  png, _ = _scene(17, 13, seed=9, fmt="PNG")
  large = open(os.path.join(shared_data, "images", "Bengal_10.jpg"), "rb").read()
  limit = 100_000
  # Keys with folders, a sample with a png and a jpg (--image-key png;jpg: the png), one with no
  # image, one over --max-file-bytes, names that would leave any folder they were extracted to.
  escaping = ["../../../escaped", f"{outside}/absolute"]
  samples = [
    {"__key__": "cats/0001", "jpg": jpgs[0][0], "seg.png": jpgs[0][1]},
    {"__key__": "dogs/big/0002", "jpg": jpgs[1][0]},
    {"__key__": "both", "jpg": jpgs[2][0], "png": png},
    {"__key__": "no_image", "seg.png": jpgs[3][1], "txt": "a caption"},
    {"__key__": "large", "jpg": large},
    *({"__key__": key, "jpg": jpgs[4][0], "seg.png": jpgs[4][1]} for key in escaping),
  ]
  (folder / "a.tar").write_bytes(_tar(samples))
  (folder / "b.tar.gz").write_bytes(_tar([{"__key__": "gz", "jpg": jpgs[5][0]}], compress=True))
  # Cut in the middle of the second sample's image: the first is a row, the second an error.
  cut = _tar([{"__key__": f"cut{i}", "jpg": jpgs[i][0], "seg.png": jpgs[i][1]} for i in (6, 7)])
  member = _member(cut, "cut7.jpg")
  (folder / "c.tar").write_bytes(cut[: member.offset_data + member.size // 2])
  # The header naming the middle sample's image damaged (the one before its data; TarWriter
  # writes a pax header before it): the sample is lost, and its neighbours (either could have
  # lost a member to the damaged bytes) are error rows; what follows is still read.
  damaged = bytearray(_tar([{"__key__": f"d{i}", "jpg": jpgs[i][0]} for i in range(5)]))
  header = _member(bytes(damaged), "d2.jpg").offset_data - tarfile.BLOCKSIZE
  damaged[header : header + 64] = b"\xff" * 64
  (folder / "d.tar").write_bytes(bytes(damaged))
  before = _snapshot(str(tmp_path), str(output))

  code, text = _run(
    capsys,
    *["--input", f"{folder}/*", "--output", str(output), "--model", tiny_export[0]],
    *["--image-key", "png;jpg", "--max-file-bytes", str(limit), "--mask-files"],
  )
  assert code == 0, text
  # Every sample is a row, the masks are in output/masks only, nothing is written elsewhere.
  accounting.assert_accounted_for(str(output), inputs_seen=7 + 1 + 2 + 5)
  assert _snapshot(str(tmp_path), str(output)) == before
  segments, errors = _by_id(str(output)), _by_id(str(output), "errors")
  assert {i: (r["filename"], r["width"], r["gt_pixels"] is None) for i, r in segments.items()} == {
    "a.tar#cats/0001": ("cats/0001.jpg", 30, False),
    "a.tar#dogs/big/0002": ("dogs/big/0002.jpg", 31, True),
    "a.tar#both": ("both.png", 17, True),
    **{f"a.tar#{key}": (f"{key}.jpg", 34, False) for key in escaping},
    "b.tar.gz#gz": ("gz.jpg", 35, True),
    "c.tar#cut6": ("cut6.jpg", 36, False),
    "d.tar#d0": ("d0.jpg", 30, True),
    "d.tar#d4": ("d4.jpg", 34, True),
  }
  labelled = [row for row in segments.values() if row["gt_pixels"] is not None]
  assert all(row["gt_pixels"] > 0 and row["gt_error"] is None for row in labelled)
  expected = {
    "a.tar#no_image": ("MissingImage", "has no member png;jpg (--image-key); it has seg.png, txt"),
    "a.tar#large": ("FileTooLarge", f"'large.jpg' is {len(large)} bytes"),
    "c.tar#cut7": ("TruncatedShard", "the shard ends inside member cut7.jpg"),
    f"d.tar#@{header}.damage": ("DamagedShard", f"a damaged tar header at byte {header}"),
    "d.tar#d1": ("DamagedShard", f"a damaged tar header at byte {header}"),
    "d.tar#d3": ("DamagedShard", f"a damaged tar header at byte {header}"),
  }
  assert {i: r["error_type"] for i, r in errors.items()} == {
    i: error_type for i, (error_type, _) in expected.items()
  }
  for image_id, (_, words) in expected.items():
    row = errors[image_id]
    assert row["stage"] == "read" and words in row["message"], row
    shard, _, where = image_id.partition("#")
    assert row["source"] == f"{folder / shard}#{where}", row


def test_ids_are_stable_so_a_later_run_skips_every_row_and_sample(
  shards, format_runs, tiny_export, tmp_path, capsys
):
  earlier = [format_runs["parquet"], format_runs["webdataset"]]
  output = str(tmp_path / "again")
  code, text = _run(
    capsys,
    *["--input", str(shards / "pets.*"), "--output", output, "--model", tiny_export[0]],
    *["--skip-existing", earlier[0], "--skip-existing", earlier[1]],
  )
  assert code == 0, text
  manifest = accounting.assert_accounted_for(output, inputs_seen=16)
  counts = manifest["counts"]
  assert (counts["segmented"], counts["failed"], counts["skipped_existing"]) == (0, 0, 16)


def test_a_killed_run_resumes_keeping_its_rows(tiny_export, tmp_path):
  """A real `segbeam run` process over a Parquet file and a WebDataset shard, SIGKILLed once
  some rows are durable; `--resume` keeps them (their ids are the same) and does the rest."""
  folder = tmp_path / "in"
  folder.mkdir()
  count = 100
  scenes = [_scene(16 + i % 7, 16 + i % 5, seed=i)[0] for i in range(count)]
  _write_hf_parquet(
    str(folder / "many.parquet"),
    {"image": [_hf_image(image, None) for image in scenes]},
    batch_size=10,
  )
  (folder / "many.tar").write_bytes(
    _tar([{"__key__": f"s/{i:03d}", "png": image} for i, image in enumerate(scenes)])
  )
  output = str(tmp_path / "out")
  argv = [sys.executable, "-m", "segbeam", "run", "--input", f"{folder}/many.*"]
  argv += ["--output", output, "--model", tiny_export[0], "--batch-size", "8", "--quiet"]
  durable = crash_resume_test._run_until_killed(argv, output, count // 2)
  assert durable < 2 * count, "the run ended before it was killed"
  done = crash_resume_test._resume(argv)
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = accounting.assert_accounted_for(output, inputs_seen=2 * count)
  assert manifest["counts"]["from_earlier_attempts"] == durable
  assert sorted(_by_id(output)) == sorted(
    [f"many.parquet#{i}" for i in range(count)] + [f"many.tar#s/{i:03d}" for i in range(count)]
  )


def test_parquet_and_webdataset_shards_on_gs(
  gcs_emulator, shards, format_runs, tiny_export, tmp_path
):
  """Both kinds of shard read from gs:// (the GCS emulator) and the output written there: the
  same rows as the local runs, sources on gs://."""
  del gcs_emulator  # running; STORAGE_EMULATOR_HOST points at it
  bucket, prefix = "segbeam-test", "shard-formats"
  for name in ("pets.parquet", "pets.tar"):
    shutil.copy(shards / name, tmp_path / name)
  helper.upload_folder(str(tmp_path), bucket, f"{prefix}/in")
  root = f"gs://{bucket}/{prefix}"
  output = f"{root}/out"
  code = cli.main(
    ["run", "--input", f"{root}/in/pets.*", "--output", output, "--model", tiny_export[0]]
  )
  assert code == 0
  accounting.assert_accounted_for(output, inputs_seen=16)
  rows = _rows(output)
  assert all(row["source"].startswith(f"{root}/in/pets.") for row in rows)
  local = {
    **_comparable(format_runs["parquet"], "image_id"),
    **_comparable(format_runs["webdataset"], "image_id"),
  }
  assert _comparable(output, "image_id") == local


def test_an_image_inside_a_shard_meets_the_same_checks_as_a_file(tiny_export, tmp_path, capsys):
  """The pixel cap, damaged pixels and disguised bytes, inside a Parquet row and a tar member:
  the same error rows, at the same stages, as the same bytes in files; the shard's other
  images are segmented."""
  good, _ = _scene(40, 30, 1)
  hostile = {
    "bomb": hostile_corpus.png_bomb(),
    "cut": good[: len(good) // 2],
    "text": b"Dear diary, not a photo",
  }
  folder = tmp_path / "in"
  folder.mkdir()
  names = ["good", *hostile]
  data = [good, *hostile.values()]
  for name, value in zip(names, data):
    (folder / f"{name}.png").write_bytes(value)
  _write_hf_parquet(
    str(folder / "all.parquet"), {"image": [_hf_image(d, f"{n}.png") for n, d in zip(names, data)]}
  )
  (folder / "all.tar").write_bytes(_tar([{"__key__": n, "png": d} for n, d in zip(names, data)]))
  outcomes = {}
  for kind, pattern in (("files", "*.png"), ("parquet", "all.parquet"), ("tar", "all.tar")):
    output = str(tmp_path / kind)
    code, text = _run(
      capsys, "--input", f"{folder}/{pattern}", "--output", output, "--model", tiny_export[0]
    )
    assert code == 0, text
    accounting.assert_accounted_for(output, inputs_seen=len(names))
    assert [row["filename"] for row in _rows(output)] == ["good.png"]
    outcomes[kind] = {
      row["filename"]: (row["stage"], row["error_type"]) for row in _rows(output, "errors")
    }
  assert outcomes["files"]["bomb.png"] == ("validate", "PixelCapExceeded")
  assert set(outcomes["files"]) == {"bomb.png", "cut.png", "text.png"}
  assert outcomes["parquet"] == outcomes["tar"] == outcomes["files"]


def test_a_damaged_row_group_costs_its_rows_one_error_row_each(tiny_export, tmp_path, capsys):
  """A page of the second of three row groups damaged (its checksum fails): its three rows are
  three error rows naming file and row, the other six are segmented, and the progress total
  from the footer is what the run saw."""
  scenes = [_scene(30 + i, 20, i)[0] for i in range(9)]
  path = tmp_path / "in" / "damaged.parquet"
  path.parent.mkdir()
  table = pa.table({"image": scenes})
  pq.write_table(table, str(path), row_group_size=3, write_page_checksum=True, use_dictionary=False)
  column = pq.ParquetFile(str(path)).metadata.row_group(1).column(0)
  data = bytearray(path.read_bytes())
  data[column.data_page_offset + column.total_compressed_size - 100] ^= 0xFF  # in an image
  path.write_bytes(bytes(data))
  output = str(tmp_path / "out")
  code, text = _run(capsys, "--input", str(path), "--output", output, "--model", tiny_export[0])
  assert code == 0, text
  accounting.assert_accounted_for(output, inputs_seen=9)
  assert progress.tally()[progress.LISTED] == 9
  assert sorted(_by_id(output)) == [f"damaged.parquet#{i}" for i in (0, 1, 2, 6, 7, 8)]
  errors = _by_id(output, "errors")
  assert sorted(errors) == [f"damaged.parquet#{i}" for i in (3, 4, 5)]
  for row in errors.values():
    assert (row["stage"], row["error_type"]) == ("read", "UnreadableRows")
    assert "rows 3 to 5 of the file: row group 1" in row["message"]
