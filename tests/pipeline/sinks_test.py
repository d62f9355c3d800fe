"""Output sinks: safe mask names, the manifest's conservation check, retried bundles."""

import functools
import os
import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from segbeam.pipeline import elements
from segbeam.pipeline import layout
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import sinks
from segbeam.run import manifest as manifest_lib

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.[0-9a-f]{12}\.png$")


@pytest.mark.parametrize(
  "image_id",
  [
    "cat.jpg",
    "../../etc/passwd",
    "/abs/path/x.png",
    "a\0b.jpg",
    "x" * 1000,
    "",
    "..",
    "dir/sub/photo 1.jpg",
    "C:\\windows\\x.jpg",
    "émoji-🐱.png",
    "-rf",
    ".hidden",
  ],
)
def test_mask_file_names_never_leave_the_folder(image_id, tmp_path):
  name = layout.mask_file_name(image_id)
  assert SAFE.match(name), name
  assert len(name) <= 120
  target = os.path.realpath(tmp_path / name)
  assert os.path.dirname(target) == os.path.realpath(tmp_path)


def test_similar_ids_get_different_names():
  assert layout.mask_file_name("a/b.jpg") != layout.mask_file_name("a_b.jpg")
  assert layout.mask_file_name("a/b.jpg") == layout.mask_file_name("a/b.jpg")


def _manifest(**changes):
  counts = dict(
    seen=6,
    segmented=3,
    failures=[(("validate", "PixelCapExceeded"), 1), (("read", "CorruptRecord"), 1)],
    segment_files=["s2", "s1"],
    error_files=["e"],
    segments_rows=3,
    errors_rows=2,
    skipped_existing=1,
    masks_written=3,
    mask_files=True,
  )
  counts.update(changes)
  return manifest_lib.build_manifest({"run_id": "r"}, **counts)


def test_manifest_counts_and_conservation():
  manifest = _manifest()
  assert manifest["counts"]["failed"] == 2 and manifest["counts"]["skipped_existing"] == 1
  assert manifest["counts"]["failed_by_stage"] == {"read": 1, "validate": 1}
  assert manifest["conservation"] == {
    "inputs_seen": 6,
    "segmented": 3,
    "failed": 2,
    "skipped_existing": 1,
    "masks_written": 3,
    "resumed": 0,
    "resumed_inputs_gone": 0,
    "from_earlier_attempts": 0,
    "holds": True,
    "rule": manifest_lib.CONSERVATION_RULE,
  }
  assert manifest["files"] == {"segments": ["s1", "s2"], "errors": ["e"], "masks": 3}


@pytest.mark.parametrize(
  "changes",
  [
    {"seen": 7},  # an input lost
    {"skipped_existing": 0},  # a skipped input not counted
    {"segments_rows": 4, "seen": 7},  # a row doubled in the table, sums still add up
    {"errors_rows": 1, "seen": 5},  # an error row lost from the table
    {"masks_written": 4},  # a mask written twice
    {"masks_written": 3, "mask_files": False},
    {"resumed": 2, "replayed": 1},  # an earlier attempt's row lost in the resume
    # an input gone since the kill whose row was replayed twice
    {"seen": 5, "resumed_gone": 1, "replayed": 2, "segments_rows": 4, "segmented": 4},
    {"seen": 5, "resumed_gone": 1},  # an input gone since the kill, its row lost
  ],
)  # mask files nobody asked for
def test_conservation_fails_when_anything_is_lost_or_doubled(changes):
  assert not _manifest(**changes)["conservation"]["holds"]


def test_an_input_gone_since_the_kill_keeps_its_row_and_conservation_holds():
  """A resume replays a row whose input is no longer listed: 5 inputs seen, 6 rows."""
  manifest = _manifest(seen=5, resumed=1, resumed_gone=1, replayed=2)
  assert manifest["conservation"]["holds"], manifest["conservation"]
  assert manifest["counts"]["resumed_inputs_gone"] == 1
  assert manifest["counts"]["from_earlier_attempts"] == 2


def test_an_unbalanced_run_fails_and_writes_no_manifest(tmp_path):
  pipeline = TestPipeline()
  # 5 inputs seen, 3 segmented and 1 failed: one input is missing from both tables.
  counts = pipeline | "Counts" >> beam.Create(
    [
      ((manifest_lib.COUNT_RECORDS, "", ""), 4),
      ((manifest_lib.COUNT_READ_FAILURES, "", ""), 1),
      ((manifest_lib.COUNT_SEGMENTED, "", ""), 3),
      ((manifest_lib.COUNT_FAILED, "validate", "EmptyImage"), 1),
    ]
  )
  # The tables as written: 2 + 1 segments rows, 1 error row; the manifest reads their footers.
  paths = {}
  for name, sizes in [("segments", [2, 1]), ("errors", [1])]:
    paths[name] = []
    for index, rows in enumerate(sizes):
      path = str(tmp_path / f"{name}-{index}.parquet")
      pq.write_table(pa.table({"image_id": [f"img{i}" for i in range(rows)]}), path)
      paths[name].append(path)
  files = {name: pipeline | f"Files{name}" >> beam.Create(value) for name, value in paths.items()}
  _ = (
    pipeline
    | beam.Create([None])
    | beam.ParDo(
      manifest_lib.WriteManifest(str(tmp_path), {"options": {"mask_files": False}}),
      beam.pvalue.AsList(counts),
      beam.pvalue.AsList(files["segments"]),
      beam.pvalue.AsList(files["errors"]),
    )
  )
  with pytest.raises(Exception, match="inputs not accounted for"):
    pipeline.run().wait_until_finish()
  assert not os.path.exists(tmp_path / layout.MANIFEST_FILE)


class _DiesOnceAfterWriting(sinks.WriteMaskFile):
  """The real mask writer on a worker that is lost once, right after writing one image's mask
  and before its bundle commits: the runner runs the whole bundle again."""

  def __init__(self, output_dir: str, image_id: str, marker: str):
    super().__init__(output_dir)
    self._image_id = image_id
    self._marker = marker

  def process(self, row):
    yield from super().process(row)
    if row["image_id"] == self._image_id and not os.path.exists(self._marker):
      open(self._marker, "w").close()
      raise ConnectionError("worker lost after writing a mask")


class _DiesOnce(beam.DoFn):
  def __init__(self, image_id: str, marker: str):
    self._image_id = image_id
    self._marker = marker

  def process(self, row):
    if row["image_id"] == self._image_id and not os.path.exists(self._marker):
      open(self._marker, "w").close()
      raise ConnectionError("worker lost")
    yield row


def _sums_to(expected: int):
  def check(actual):
    if sum(actual) != expected:
      raise BeamAssertException(f"{list(actual)} does not sum to {expected}")

  return check


def test_a_retried_bundle_leaves_one_mask_and_one_row_per_image(tmp_path):
  """On Beam's BundleBasedDirectRunner, which retries a failed bundle (the FnApiRunner fails
  the job instead): masks are rewritten in place, Parquet rows of the failed attempt dropped,
  and no temporary file is left."""
  output = str(tmp_path / "out")
  rows = [
    {"image_id": image_id, "mask_png": f"mask of {image_id}".encode()}
    for image_id in ("a.jpg", "b/../c.jpg", "d.jpg", "e.jpg")
  ]
  masks_marker, rows_marker = str(tmp_path / "masks_died"), str(tmp_path / "rows_died")
  pipeline = TestPipeline(runner="BundleBasedDirectRunner")
  created = pipeline | beam.Create(rows)
  paths = created | "Masks" >> beam.ParDo(_DiesOnceAfterWriting(output, "d.jpg", masks_marker))
  table = (
    created
    | "DiesOnce" >> beam.ParDo(_DiesOnce("b/../c.jpg", rows_marker))
    | beam.io.WriteToParquet(
      os.path.join(output, layout.SEGMENTS_DIR, "part"),
      pa.schema([("image_id", pa.string()), ("mask_png", pa.binary())]),
      file_name_suffix=".parquet",
    )
  )
  masks_dir = os.path.join(output, layout.MASKS_DIR)
  assert_that(
    paths,
    equal_to([os.path.join(masks_dir, layout.mask_file_name(r["image_id"])) for r in rows]),
    label="OnePathPerImage",
  )
  assert_that(
    table | beam.Map(manifest_lib.parquet_rows), _sums_to(len(rows)), label="OneRowPerImage"
  )
  pipeline.run().wait_until_finish()

  assert os.path.exists(masks_marker) and os.path.exists(rows_marker)  # both did die once
  assert sorted(os.listdir(masks_dir)) == sorted(layout.mask_file_name(r["image_id"]) for r in rows)
  for row in rows:
    with open(os.path.join(masks_dir, layout.mask_file_name(row["image_id"])), "rb") as f:
      assert f.read() == row["mask_png"]
  table_rows = pq.read_table(os.path.join(output, layout.SEGMENTS_DIR)).to_pylist()
  assert sorted(r["image_id"] for r in table_rows) == sorted(r["image_id"] for r in rows)


def test_write_file_replaces_whole_files(tmp_path):
  path = str(tmp_path / "m.png")
  sinks.write_file(path, b"first")
  sinks.write_file(path, b"second")
  with open(path, "rb") as f:
    assert f.read() == b"second"
  assert os.listdir(tmp_path) == ["m.png"]


def test_counts_per_bundle_add_up_to_every_element():
  failures = [
    rows_lib.failure_row(
      elements.Failure(f"{i}.jpg", f"/in/{i}.jpg", stage, error_type, "why"), "r"
    )
    for i, (stage, error_type) in enumerate(
      [("read", "FileTooLarge"), ("validate", "CorruptHeader"), ("validate", "CorruptHeader")]
    )
  ]
  with TestPipeline() as pipeline:
    # Several bundles: a reshuffle splits the elements, and each bundle emits its own partials.
    values = pipeline | "Values" >> beam.Create(range(1000)) | beam.Reshuffle()
    counted = values | "CountValues" >> beam.ParDo(
      manifest_lib.CountPerBundle(
        functools.partial(manifest_lib.count_key, what=manifest_lib.COUNT_RECORDS)
      )
    )
    failed = (
      pipeline
      | "Failures" >> beam.Create(failures)
      | "CountFailures" >> beam.ParDo(manifest_lib.CountPerBundle(manifest_lib.error_count_key))
    )
    totals = (counted, failed) | beam.Flatten() | beam.CombinePerKey(sum)
    assert_that(
      totals,
      equal_to(
        [
          ((manifest_lib.COUNT_RECORDS, "", ""), 1000),
          ((manifest_lib.COUNT_FAILED, "read", "FileTooLarge"), 1),
          ((manifest_lib.COUNT_FAILED, "validate", "CorruptHeader"), 2),
        ]
      ),
    )


@pytest.mark.parametrize("planted", [".m.png.partial", "m.png"])
def test_write_file_never_writes_through_a_planted_link(planted, tmp_path):
  """A link planted under the temporary name segbeam used to use, or under the final name:
  the file is written beside it and replaces the link; what it points to stays as it was."""
  victim = tmp_path / "victim.txt"
  victim.write_bytes(b"precious")
  folder = tmp_path / "out"
  folder.mkdir()
  (folder / planted).symlink_to(victim)
  sinks.write_file(str(folder / "m.png"), b"mask")
  assert victim.read_bytes() == b"precious"
  assert not (folder / "m.png").is_symlink() and (folder / "m.png").read_bytes() == b"mask"


@pytest.mark.parametrize("entry", [layout.MASKS_DIR, layout.JOURNAL_DIR])
def test_delete_entries_removes_a_link_never_what_it_points_to(entry, tmp_path):
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "keep.txt").write_bytes(b"precious")
  output = tmp_path / "out"
  output.mkdir()
  (output / entry).symlink_to(outside)
  (output / layout.SEGMENTS_DIR).mkdir()
  (output / layout.SEGMENTS_DIR / "inner").symlink_to(outside)
  layout.delete_entries(str(output), [entry, layout.SEGMENTS_DIR])
  assert os.listdir(output) == []
  assert (outside / "keep.txt").read_bytes() == b"precious"


def test_remove_partials_removes_only_what_write_file_left_killed(tmp_path):
  """What a process killed inside `write_file` leaves: its temporary files, in the output
  folder (the manifest's) and in masks/; a resume removes them, and nothing else (a link
  among them is removed itself, never followed)."""
  output = tmp_path / "out"
  masks = output / layout.MASKS_DIR
  masks.mkdir(parents=True)
  victim = tmp_path / "victim.txt"
  victim.write_bytes(b"precious")
  left = [
    output / f".{layout.MANIFEST_FILE}.{'a' * 32}{layout.PARTIAL_SUFFIX}",
    masks / f".{layout.mask_file_name('x.png')}.{'b' * 32}{layout.PARTIAL_SUFFIX}",
  ]
  for path in left:
    path.write_bytes(b"half")
  (masks / f".m.png.{'c' * 32}{layout.PARTIAL_SUFFIX}").symlink_to(victim)
  kept = [output / "notes.partial", masks / layout.mask_file_name("y.png"), output / "x.png"]
  for path in kept:
    path.write_bytes(b"kept")
  layout.remove_partials(str(output))
  assert sorted(os.listdir(output)) == sorted(["masks", "notes.partial", "x.png"])
  assert os.listdir(masks) == [layout.mask_file_name("y.png")]
  assert victim.read_bytes() == b"precious"
