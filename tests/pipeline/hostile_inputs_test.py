"""A generated corpus of hostile inputs through `segbeam run`, in one real pipeline run.

Every case must end as exactly one row: a segments row with the expected size and EXIF
orientation, or an errors row naming the stage, the error type and the reason. No case may
crash or hang the run, and nothing may be read or written outside the input and output folders.
The table in docs/hostile-inputs.md lists the same cases and outcomes.
"""

from __future__ import annotations

import glob
import io
import os
import threading
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from PIL import Image

from segbeam import options as options_lib
from segbeam.pipeline import layout
from segbeam.run import job
from tests import accounting
from tests import synthetic
from tests.pipeline import hostile_corpus as corpus

HANG_LIMIT_SECONDS = 300


def _image(array: np.ndarray, mode: str | None = None) -> Image.Image:
  image = Image.fromarray(array)
  return image.convert(mode) if mode else image


def write_image_files(folder, expected: dict[str, tuple]) -> None:
  """Writes the hostile image files; `expected` gets what each must become, by image id:
  ("segmented", format, width, height, EXIF orientation) or ("failed", stage, error type,
  words of the message)."""

  def case(name: str, data: bytes, outcome: tuple) -> None:
    (folder / name).write_bytes(data)
    expected[name] = outcome

  scene = corpus.scene(40, 30)
  jpeg = corpus.encode(_image(scene), "JPEG")
  big = corpus.encode(_image(corpus.scene(200, 150)), "JPEG")
  case(
    "truncated.jpg",
    big[: len(big) // 2],  # the header whole, the pixel data cut
    ("failed", "decode", "InvalidArgumentError", "JPEG"),
  )
  case("empty.jpg", b"", ("failed", "validate", "UnsupportedFormat", "the file is empty"))
  case(
    "text.jpg",
    b"Dear diary, today I renamed a letter to .jpg",
    ("failed", "validate", "UnsupportedFormat", "not an image"),
  )
  case(
    "shard.jpg",
    corpus.shard([corpus.example("inside.jpg", jpeg)]),
    (
      "failed",
      "validate",
      "UnsupportedFormat",
      "--input-format tfrecord reads such files as shards",
    ),
  )
  case(
    "gif_inside.jpg",
    corpus.encode(_image(corpus.scene(20, 22), "P"), "GIF"),
    ("segmented", "gif", 20, 22, 1),
  )
  case(
    "png_inside.jpg",
    corpus.encode(_image(corpus.scene(24, 18)), "PNG"),
    ("segmented", "png", 24, 18, 1),
  )
  case("rgba.png", corpus.encode(_image(scene, "RGBA"), "PNG"), ("segmented", "png", 40, 30, 1))
  case("grayscale.png", corpus.encode(_image(scene, "L"), "PNG"), ("segmented", "png", 40, 30, 1))
  case("palette.png", corpus.encode(_image(scene, "P"), "PNG"), ("segmented", "png", 40, 30, 1))
  case("palette.bmp", corpus.encode(_image(scene, "P"), "BMP"), ("segmented", "bmp", 40, 30, 1))
  wide = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
  case("16bit.png", corpus.encode(Image.fromarray(wide), "PNG"), ("segmented", "png", 40, 30, 1))
  case("cmyk.jpg", corpus.encode(_image(scene, "CMYK"), "JPEG"), ("segmented", "jpeg", 40, 30, 1))
  # Stored 40 wide and 30 high; orientation 6 shows it turned a quarter clockwise: 30 x 40.
  case(
    "rotated.jpg",
    corpus.encode(_image(scene), "JPEG", exif=corpus.exif_bytes(6)),
    ("segmented", "jpeg", 30, 40, 6),
  )
  case(
    "one_pixel.png",
    corpus.encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    ("segmented", "png", 1, 1, 1),
  )
  case(
    "one_pixel.jpg",
    corpus.encode(Image.new("RGB", (1, 1), (200, 10, 10)), "JPEG"),
    ("segmented", "jpeg", 1, 1, 1),
  )
  case(
    "bomb.png",
    corpus.png_bomb(40_000, 40_000),
    ("failed", "validate", "PixelCapExceeded", "header declares 40000x40000"),
  )
  # 40 frames of 1000 x 1000: 40 M pixels for a decoder that reads every frame.
  case("animated.gif", corpus.animated_gif(1000, 1000, 40), ("segmented", "gif", 1000, 1000, 1))
  # Headers that lie: a PNG claiming more rows than its data holds fails to decode; a GIF whose
  # canvas claims 65535 x 65535 is refused before; a JPEG claiming twice its size is decoded as
  # viewers show it, at the claimed size, the missing part filled in.
  case(
    "lying.png",
    corpus.png_with_size(corpus.encode(_image(scene), "PNG"), 40, 300),
    ("failed", "decode", "InvalidArgumentError", "PNG"),
  )
  case(
    "lying.gif",
    corpus.gif_with_screen(corpus.encode(_image(scene, "P"), "GIF"), 65535, 65535),
    ("failed", "validate", "PixelCapExceeded", "65535x65535"),
  )
  case("lying.jpg", corpus.jpeg_with_size(jpeg, 80, 60), ("segmented", "jpeg", 80, 60, 1))
  # Not regular files: a FIFO would block the read forever, /dev/zero never end it.
  os.mkfifo(folder / "fifo.jpg")
  expected["fifo.jpg"] = ("failed", "read", "NotARegularFile", "not a regular file")
  os.symlink("/dev/zero", folder / "zero.jpg")
  expected["zero.jpg"] = ("failed", "read", "NotARegularFile", "not a regular file")


def write_shards(folder, outside, expected: dict[str, tuple]) -> dict[str, Optional[str]]:
  """Writes hostile TFRecord shards; `expected` gets what each record must become. Returns
  each record's id -> the filename its row must carry (as data only: ids are places)."""
  jpeg = corpus.encode(_image(corpus.scene(24, 16)), "JPEG")
  png = corpus.encode(_image(corpus.scene(16, 24)), "PNG")
  escaping = {
    "../../escaped.jpg": jpeg,
    str(outside / "absolute.jpg"): png,
    "nul\x00byte.jpg": jpeg,
    "n" * 1000 + ".jpg": png,
  }
  records = [corpus.example(name, data) for name, data in escaping.items()]
  filenames: dict[str, Optional[str]] = {}
  for index, (name, data) in enumerate(escaping.items()):
    expected[f"ids.tfrecord#{index}"] = (
      "segmented",
      "jpeg" if data is jpeg else "png",
      *((24, 16) if data is jpeg else (16, 24)),
      1,
    )
    filenames[f"ids.tfrecord#{index}"] = name
  records += [
    corpus.example("dup.jpg", jpeg),
    corpus.example("dup.jpg", png),
    corpus.example("noimage.jpg", None),
    corpus.example("payload.jpg", b"GIF? no."),
    corpus.example(None, jpeg),
  ]
  # A repeated filename is two rows with their own ids.
  expected["ids.tfrecord#4"] = ("segmented", "jpeg", 24, 16, 1)
  expected["ids.tfrecord#5"] = ("segmented", "png", 16, 24, 1)
  expected["ids.tfrecord#6"] = ("failed", "read", "MissingImage", "no bytes feature")
  expected["ids.tfrecord#7"] = ("failed", "validate", "UnsupportedFormat", "not an image")
  expected["ids.tfrecord#8"] = ("segmented", "jpeg", 24, 16, 1)
  filenames.update(
    {
      "ids.tfrecord#4": "dup.jpg",
      "ids.tfrecord#5": "dup.jpg",
      "ids.tfrecord#6": "noimage.jpg",
      "ids.tfrecord#7": "payload.jpg",
      "ids.tfrecord#8": None,
    }
  )
  (folder / "ids.tfrecord").write_bytes(corpus.shard(records))

  good = tfrecord_frames(
    [
      # Named like the record above: a name, not an id.
      corpus.example("ids.tfrecord#8", png),
      b"ignored",
      corpus.example("kept.jpg", jpeg),
      b"\x08\x96\x01not an Example",
      corpus.example("cut.jpg", jpeg),
    ]
  )
  (folder / "corrupt.tfrecord").write_bytes(
    b"".join([good[0], corpus.with_bad_data_crc(good[1]), good[2], good[3], good[4][:30]])
  )
  expected["corrupt.tfrecord#0"] = ("segmented", "png", 16, 24, 1)
  expected["corrupt.tfrecord#1"] = (
    "failed",
    "read",
    "CorruptRecord",
    "data checksum mismatch in record 1",
  )
  expected["corrupt.tfrecord#2"] = ("segmented", "jpeg", 24, 16, 1)
  expected["corrupt.tfrecord#3"] = ("failed", "read", "NotAnExample", "not a tf.train.Example")
  expected["corrupt.tfrecord#4"] = (
    "failed",
    "read",
    "CorruptRecord",
    "shard truncated inside record 4",
  )
  filenames.update({"corrupt.tfrecord#0": "ids.tfrecord#8", "corrupt.tfrecord#2": "kept.jpg"})

  frames = tfrecord_frames(
    [
      corpus.example("first.jpg", jpeg),
      corpus.example("lost.jpg", jpeg),
      corpus.example("lost_too.jpg", jpeg),
    ]
  )
  broken_length = bytearray(frames[1])
  broken_length[0] ^= 0x40  # the length no longer matches its checksum: framing is lost
  (folder / "bad_length.tfrecord").write_bytes(frames[0] + bytes(broken_length) + frames[2])
  expected["bad_length.tfrecord#0"] = ("segmented", "jpeg", 24, 16, 1)
  expected["bad_length.tfrecord#1"] = (
    "failed",
    "read",
    "CorruptRecord",
    "length checksum mismatch at record 1",
  )
  filenames["bad_length.tfrecord#0"] = "first.jpg"
  return filenames


def tfrecord_frames(payloads: list[bytes]) -> list[bytes]:
  return [corpus.shard([payload]) for payload in payloads]


def _snapshot(root: str, skip: str) -> set[str]:
  found = set()
  for folder, _, names in os.walk(root):
    if not os.path.abspath(folder).startswith(os.path.abspath(skip)):
      found.update(os.path.join(folder, name) for name in names)
  return found


def _source_file(source: str) -> str:
  """The file behind a row's source: the shard of '<shard>#<record index>'."""
  path, sep, index = source.rpartition("#")
  return path if sep and index.isdigit() else source


def _unblock_if_stuck(
  fifo: str, stuck: threading.Event, done: threading.Event, limit: float = HANG_LIMIT_SECONDS
) -> None:
  """After `limit` seconds, opens the FIFO for writing and closes it, so that a reader stuck
  on it gets an empty file and the run ends with a wrong row instead of hanging CI."""
  if done.wait(limit):
    return
  stuck.set()
  try:
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
  except OSError:  # nobody is reading it: stuck elsewhere
    pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks (POSIX)")
def _rows(output: str, table: str) -> dict[str, dict]:
  """A run's rows of `table`, by image id."""
  rows = pq.read_table(glob.glob(f"{output}/{table}/*.parquet")).to_pylist()
  return {row["image_id"]: row for row in rows}


# Tiled, the images larger than 32 pixels are decoded whole, cut and stitched instead.
@pytest.mark.parametrize("tiles", [[], ["--tile", "32"]], ids=["whole", "tiled"])
def test_every_hostile_input_ends_as_exactly_one_row_with_a_precise_reason(
  tiny_export, tmp_path, tiles
):
  export_dir, _ = tiny_export
  inputs, outside = tmp_path / "in", tmp_path / "outside"
  inputs.mkdir()
  outside.mkdir()
  expected: dict[str, tuple] = {}
  write_image_files(inputs, expected)
  filenames = write_shards(inputs, outside, expected)
  output = str(tmp_path / "run" / "out")
  before = _snapshot(str(tmp_path), output)

  stuck, done = threading.Event(), threading.Event()
  threading.Thread(
    target=_unblock_if_stuck, args=(str(inputs / "fifo.jpg"), stuck, done), daemon=True
  ).start()
  pipeline = TestPipeline()
  job.add_to(
    pipeline,
    options_lib.parse_args(
      ["--input", f"{inputs}/*", "--output", output, "--model", export_dir, "--mask-files"] + tiles
    )[0],
  )
  pipeline.run().wait_until_finish()
  done.set()
  assert not stuck.is_set(), "the run hung on the FIFO"

  # Every input seen is in exactly one row, and the masks are exactly one per segments row.
  manifest = accounting.assert_accounted_for(output, inputs_seen=len(expected))
  segments, errors = _rows(output, "segments"), _rows(output, "errors")
  assert sorted(segments) == sorted(i for i, e in expected.items() if e[0] == "segmented")
  assert sorted(errors) == sorted(i for i, e in expected.items() if e[0] == "failed")
  rows = {**segments, **errors}
  assert {i: rows[i]["filename"] for i in filenames} == filenames
  for image_id, outcome in expected.items():
    if outcome[0] == "segmented":
      row = segments[image_id]
      _, image_format, width, height, orientation = outcome
      assert (row["format"], row["width"], row["height"], row["exif_orientation"]) == (
        image_format,
        width,
        height,
        orientation,
      ), image_id
      mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
      assert mask.shape == (height, width), image_id
    else:
      row = errors[image_id]
      _, stage, error_type, words = outcome
      assert (row["stage"], row["error_type"]) == (stage, error_type), (image_id, row)
      assert words in row["message"], (image_id, row["message"])
  assert manifest["counts"]["failed_by_stage"] == {
    stage: sum(1 for e in expected.values() if e[0] == "failed" and e[1] == stage)
    for stage in ("decode", "read", "validate")
  }

  # Nothing was read but the files the pattern names, nothing written outside the output.
  named = {str(path) for path in inputs.iterdir()}
  sources = {_source_file(row["source"]) for row in [*segments.values(), *errors.values()]}
  assert sources <= named, sources - named
  assert _snapshot(str(tmp_path), output) == before
  masks = os.listdir(os.path.join(output, layout.MASKS_DIR))
  assert sorted(masks) == sorted(layout.mask_file_name(i) for i in segments)
  assert all(
    os.path.dirname(os.path.realpath(os.path.join(output, layout.MASKS_DIR, m)))
    == os.path.realpath(os.path.join(output, layout.MASKS_DIR))
    for m in masks
  )


ODD_NAMES = [
  "back\\slash.png",
  "ends in a backslash.png\\",
  "\\",
  "new\nline.png",
  "hash#1.png",
  "percent%20.png",
  "question?.png",
  "star*.png",
  "[bracket].png",
  "ünïcødé ☃.png",
  "-leading-dash.png",
  " spaces around .png ",
  "..dots.png",
  "no extension",
]


@pytest.mark.parametrize("spread_files", [True, False])
def test_every_matched_file_is_a_row_whatever_its_name(tiny_export, tmp_path, spread_files):
  """Each file the glob matches ends as a segments row or an error row, under its own name:
  none is taken for a folder (a name ending in a backslash) or otherwise left out."""
  inputs = tmp_path / "in"
  (inputs / "sub\\dir").mkdir(parents=True)
  png = corpus.encode(_image(corpus.scene(12, 10)), "PNG")
  for name in ODD_NAMES:
    (inputs / name).write_bytes(png)
  (inputs / "sub\\dir" / "inner\\.png").write_bytes(b"not an image")
  expected = sorted([*ODD_NAMES, "sub\\dir/inner\\.png"])
  output = str(tmp_path / "out")
  argv = ["--input", f"{inputs}/**", "--output", output, "--model", tiny_export[0], "--mask-files"]
  options = options_lib.parse_args(argv)[0]
  pipeline = TestPipeline()
  job.add_to(pipeline, options, distributed=spread_files)
  pipeline.run().wait_until_finish()
  accounting.assert_accounted_for(output, inputs_seen=len(expected))
  segments = pq.read_table(glob.glob(f"{output}/segments/*.parquet")).to_pylist()
  errors = pq.read_table(glob.glob(f"{output}/errors/*.parquet")).to_pylist()
  assert sorted(row["image_id"] for row in segments + errors) == expected
  assert [row["image_id"] for row in errors] == ["sub\\dir/inner\\.png"]


def _undecodable(name: bytes) -> str:
  """A file name holding bytes that are not UTF-8, as Python lists it (surrogate-escaped)."""
  return os.fsdecode(name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks (POSIX)")
@pytest.mark.parametrize("spread_files", [True, False])
def test_hostile_names_links_and_label_files_never_crash_hang_or_vanish(
  tiny_export, tmp_path, spread_files
):
  """One real run with --ground-truth over names that are not UTF-8, dangling and looping
  links, and label files that are FIFOs, devices, too large, doubled or dangling: every name
  the glob matches is one row (a fine image under an odd name is segmented under an id that
  encodes), and every bad label is that row's gt_error, never read."""
  inputs, labels = tmp_path / "in", tmp_path / "labels"
  inputs.mkdir()
  labels.mkdir()
  image, trimap = synthetic.pet_scene(12, 10, 0)
  png, label = synthetic.encode(image, "PNG"), synthetic.encode(trimap, "PNG")
  segmented = ["ok.png", "caf\\xe9.png", "fifo_label.png", "two.png", "big.png", "zero.png"]
  segmented += ["dangling_label.png"]
  for name in ["ok.png", "fifo_label.png", "two.png", "big.png", "zero.png", "dangling_label.png"]:
    (inputs / name).write_bytes(png)
  (inputs / _undecodable(b"caf\xe9.png")).write_bytes(png)
  os.symlink(str(tmp_path / "nowhere.png"), inputs / "dangling.png")
  os.symlink("loop.png", inputs / "loop.png")
  os.symlink(str(tmp_path / "nowhere.png"), inputs / _undecodable(b"gone\xff.png"))
  failed = {"dangling.png", "loop.png", "gone\\xff.png"}
  (labels / "ok.png").write_bytes(label)
  os.mkfifo(labels / "fifo_label.png")
  (labels / "two.png").write_bytes(label)
  (labels / _undecodable(b"two.\xff")).write_bytes(label)
  (labels / "big.png").write_bytes(label + b"\0" * 5000)  # over --max-file-bytes
  os.symlink("/dev/zero", labels / "zero.png")
  os.symlink(str(tmp_path / "nowhere.png"), labels / "dangling_label.png")
  output = str(tmp_path / "out")

  stuck, done = threading.Event(), threading.Event()
  threading.Thread(
    target=_unblock_if_stuck,
    args=(str(labels / "fifo_label.png"), stuck, done, 60),
    daemon=True,
  ).start()
  argv = ["--input", f"{inputs}/*", "--output", output, "--model", tiny_export[0], "--mask-files"]
  argv += ["--ground-truth", f"{labels}/*", "--max-file-bytes", "4000"]
  pipeline = TestPipeline()
  job.add_to(pipeline, options_lib.parse_args(argv)[0], distributed=spread_files)
  pipeline.run().wait_until_finish()
  done.set()
  assert not stuck.is_set(), "the run hung on the FIFO label"

  accounting.assert_accounted_for(output, inputs_seen=len(segmented) + len(failed))
  segments, errors = _rows(output, "segments"), _rows(output, "errors")
  assert sorted(segments) == sorted(segmented)
  assert sorted(errors) == sorted(failed)
  odd = segments["caf\\xe9.png"]
  assert (odd["filename"], odd["source"]) == ("caf\\xe9.png", f"{inputs}/caf\\xe9.png")
  for image_id in failed:
    row = errors[image_id]
    assert (row["stage"], row["error_type"]) == ("read", "NotARegularFile"), row
    assert row["source"].endswith(image_id) and "cannot stat" in row["message"], row
  assert "\\xff" in errors["gone\\xff.png"]["message"]
  assert segments["ok.png"]["gt_pixels"] == 120 and segments["ok.png"]["gt_error"] is None
  gt_errors = {
    "fifo_label.png": "is not a regular file",
    "zero.png": "is not a regular file",
    "dangling_label.png": "cannot stat",
    "two.png": "2 label files match this image",
    "big.png": "over the 4000-byte file limit",
  }
  for image_id, words in gt_errors.items():
    row = segments[image_id]
    assert row["gt_pixels"] is None and words in (row["gt_error"] or ""), (image_id, row)
  assert "two.\\xff" in segments["two.png"]["gt_error"]
