"""The whole pipeline on the real DirectRunner engine with a tiny real export."""

import glob
import io
import json
import logging
import os
import tracemalloc

import apache_beam as beam
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from PIL import Image

from segbeam import options as options_lib
from segbeam.commands import pack
from segbeam.pipeline import inference
from segbeam.pipeline import schema
from segbeam.run import job
from tests import accounting
from tests import synthetic

GOOD = {  # name -> (width, height, format, PIL mode)
  "a.jpg": (40, 30, "JPEG", None),
  "b.png": (25, 50, "PNG", "RGBA"),
  "c.gif": (33, 33, "GIF", None),
  "d.bmp": (64, 16, "BMP", None),
  "e.png": (31, 29, "PNG", "L"),
  "gif_named.jpg": (20, 22, "GIF", None),
}


def _add_run(pipeline, *argv: str):
  """`segbeam run`'s whole run with these arguments added to `pipeline`; its manifest."""
  return job.add_to(pipeline, options_lib.parse_args(list(argv))[0])


@pytest.fixture()
def mixed_folder(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  for i, (name, (width, height, fmt, mode)) in enumerate(GOOD.items()):
    (folder / name).write_bytes(
      synthetic.encode(synthetic.pet_scene(width, height, i)[0], fmt, mode)
    )
  jpeg = synthetic.encode(synthetic.pet_scene(200, 150, 9)[0], "JPEG")
  (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # header fine, data cut
  (folder / "notes.jpg").write_bytes(b"this is text, not a photo")
  return str(folder)


def _counts(manifest):
  counts = manifest["counts"]
  return (
    counts["inputs_seen"],
    counts["segmented"],
    counts["failed"],
    tuple(sorted(counts["failed_by_stage"].items())),
    manifest["conservation"]["holds"],
  )


def test_a_corrupt_image_fails_alone_and_everything_is_accounted_for(
  tiny_export, mixed_folder, tmp_path
):
  export_dir, metadata = tiny_export
  output = str(tmp_path / "out")
  p = TestPipeline()
  manifest = _add_run(
    p,
    "--input",
    mixed_folder + "/*",
    "--output",
    output,
    "--model",
    export_dir,
    "--batch-size",
    "16",
    "--mask-files",
  )
  assert_that(
    manifest | beam.Map(_counts), equal_to([(8, 6, 2, (("decode", 1), ("validate", 1)), True)])
  )
  result = p.run()
  result.wait_until_finish()
  accounting.assert_accounted_for(output, inputs_seen=8)

  counters = {
    m.key.metric.name: m.committed
    for m in result.metrics().query(MetricsFilter().with_namespace("segbeam"))["counters"]
  }
  assert counters["inputs_seen"] == 8 and counters["segmented"] == 6
  assert counters["failed"] == 1 and counters["failed_validate"] == 1

  segments = pq.read_table(glob.glob(f"{output}/segments/*.parquet"))
  assert segments.schema.equals(schema.segments_schema(metadata.class_names))
  rows = {r["image_id"]: r for r in segments.to_pylist()}
  assert sorted(rows) == sorted(GOOD)
  for name, (width, height, fmt, _) in GOOD.items():
    row = rows[name]
    assert (row["width"], row["height"]) == (width, height)
    assert row["format"] == ("gif" if fmt == "GIF" else fmt.lower())
    mask = np.asarray(Image.open(io.BytesIO(row["mask_png"])))
    assert mask.shape == (height, width)
    assert sum(row[f"coverage_{c}"] for c in ("pet", "background", "border")) == pytest.approx(1)
    assert row["model_version"] == metadata.version
  errors = {
    r["image_id"]: r for r in pq.read_table(glob.glob(f"{output}/errors/*.parquet")).to_pylist()
  }
  assert errors["truncated.jpg"]["stage"] == "decode"
  assert "JPEG" in errors["truncated.jpg"]["message"]
  assert errors["notes.jpg"]["stage"] == "validate"
  assert len(os.listdir(f"{output}/masks")) == 6
  with open(f"{output}/manifest.json") as f:
    written = json.load(f)
  assert written["files"]["masks"] == 6 and written["model"]["version"] == metadata.version


def test_tfrecord_shards_end_to_end_and_duckdb_reads_the_output(tiny_export, pet_folder, tmp_path):
  export_dir, _ = tiny_export
  images, masks, names = pet_folder
  prefix = str(tmp_path / "pets")
  pack.pack(images, prefix, masks_dir=masks, num_shards=3)
  output = str(tmp_path / "out")
  p = TestPipeline()
  manifest = _add_run(
    p,
    "--input",
    prefix + "-*",
    "--output",
    output,
    "--model",
    export_dir,
    "--inference-handler",
    "saved-model",
  )
  assert_that(manifest | beam.Map(_counts), equal_to([(6, 6, 0, (), True)]))
  p.run().wait_until_finish()
  accounting.assert_accounted_for(output, inputs_seen=6)
  con = duckdb.connect()
  filenames, total = con.execute(
    f"SELECT list(filename ORDER BY filename), sum(coverage_pet + coverage_background + "
    f"coverage_border) FROM read_parquet('{output}/segments/*.parquet')"
  ).fetchone()
  assert filenames == sorted(n + ".jpg" for n in names) and total == pytest.approx(6)
  assert con.execute(
    f"SELECT count(*) FROM read_parquet('{output}/errors/*.parquet')"
  ).fetchone() == (0,)


def test_the_same_input_twice_gives_the_same_rows(tiny_export, pet_folder, tmp_path):
  """Everything but the run id (the rows hold no times) is equal, though Reshuffle orders the
  inputs differently each time and the batch size differs, so batches are made up differently."""
  images, masks, _ = pet_folder
  folder = tmp_path / "in"
  folder.mkdir()
  pack.pack(images, str(folder / "pets"), masks_dir=masks, num_shards=1)
  for index, (width, height) in enumerate([(45, 31), (20, 60), (64, 48)]):
    (folder / f"photo_{index}.png").write_bytes(
      synthetic.encode(synthetic.pet_scene(width, height, seed=20 + index)[0], "PNG")
    )
  (folder / "notes.png").write_bytes(b"not an image")
  tables, manifests = [], []
  for attempt, batch_size in enumerate(("4", "3")):
    output = str(tmp_path / f"out{attempt}")
    p = TestPipeline()
    _add_run(
      p,
      "--input",
      str(folder / "*"),
      "--output",
      output,
      "--model",
      tiny_export[0],
      "--batch-size",
      batch_size,
    )
    p.run().wait_until_finish()
    manifests.append(accounting.assert_accounted_for(output, inputs_seen=10))
    tables.append(
      {
        name: pq.read_table(glob.glob(f"{output}/{name}/*.parquet"))
        .sort_by("image_id")
        .drop_columns(["run_id"])
        for name in ("segments", "errors")
      }
    )
  first, second = tables
  assert first["segments"].num_rows == 9 and first["errors"].num_rows == 1
  assert first["segments"].column("gt_pixels").null_count == 3  # the shard carries labels
  for name in ("segments", "errors"):
    assert first[name].equals(second[name]), name
  assert manifests[0]["run_id"] != manifests[1]["run_id"]
  assert manifests[0]["counts"] == manifests[1]["counts"]


class _TraceOnceTheModelIsLoaded(logging.Handler):
  """Starts tracemalloc when a worker logs that it loaded the model: the load is large, fixed
  and slow to trace, and the images come after it."""

  def emit(self, record):
    if record.getMessage().startswith("loaded model") and not tracemalloc.is_tracing():
      tracemalloc.start()


def test_memory_is_bounded_by_the_batch_not_by_the_image_count(tiny_export, tmp_path):
  """Peak Python heap (tracemalloc: Beam's buffers, image bytes, numpy arrays; not
  TensorFlow's or Arrow's own allocators) from the model's load to the end of a run, for 20
  and then 200 images of 256 KB each: if images were held anywhere until the end (a buffer, a
  side input, a list), the second peak would be 45 MB higher; measured, both are ~20 MB.
  Images are a tiny PNG plus padding after its end, which decoders ignore: heavy to carry,
  cheap to decode and infer. Peak RSS at scale is measured in bench/ (BENCHMARKS.md)."""
  padding = 256 << 10
  rng = np.random.default_rng(0)
  png = synthetic.encode(synthetic.pet_scene(24, 20, seed=0)[0], "PNG")
  logger = logging.getLogger(inference.__name__)
  handler, level = _TraceOnceTheModelIsLoaded(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  peaks = {}
  try:
    for count in (20, 200):
      folder = tmp_path / f"in{count}"
      folder.mkdir()
      for index in range(count):
        (folder / f"img_{index:03d}.png").write_bytes(png + rng.bytes(padding))
      output = str(tmp_path / f"out{count}")
      p = TestPipeline()
      _add_run(
        p,
        "--input",
        str(folder / "*.png"),
        "--output",
        output,
        "--model",
        tiny_export[0],
        "--batch-size",
        "4",
      )
      try:
        p.run().wait_until_finish()
        assert tracemalloc.is_tracing(), "the model was never loaded"
        peaks[count] = tracemalloc.get_traced_memory()[1]
      finally:
        tracemalloc.stop()
      accounting.assert_accounted_for(output, inputs_seen=count)
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  extra_input = (200 - 20) * (len(png) + padding)
  assert peaks[200] - peaks[20] < 0.25 * extra_input, (peaks, extra_input)


def test_nothing_before_the_rows_waits_for_a_pass_over_the_whole_input(tiny_export, tmp_path):
  """From the listing to the segments rows no stage waits on every input: no side input, and
  no GroupByKey but the reshuffle of the file listing. Label files join the rows after."""
  from apache_beam.portability import common_urns
  from apache_beam.portability.api import beam_runner_api_pb2

  (tmp_path / "a.jpg").write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "JPEG"))
  (tmp_path / "a.png").write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[1], "PNG"))
  pipeline = beam.Pipeline()
  _add_run(
    pipeline,
    *("--input", str(tmp_path / "*.jpg"), "--ground-truth", str(tmp_path / "*.png")),
    *("--output", str(tmp_path / "out"), "--model", tiny_export[0]),
  )
  transforms = pipeline.to_runner_api().components.transforms.values()
  upstream = [
    t
    for t in transforms
    if t.unique_name.startswith(("Read/", "Segment/"))
    and not t.unique_name.startswith("Segment/GroundTruth/")
  ]
  assert any(t.unique_name.startswith("Segment/RunInference/") for t in upstream)
  side_inputs = [
    t.unique_name
    for t in upstream
    if t.spec.urn == common_urns.primitives.PAR_DO.urn
    and beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs
  ]
  groupings = [
    t.unique_name for t in upstream if t.spec.urn == common_urns.primitives.GROUP_BY_KEY.urn
  ]
  assert side_inputs == []
  assert groupings and all(name.startswith("Read/Reshuffle/") for name in groupings), groupings


def test_segments_files_sets_how_many_files_the_segments_table_has(
  tiny_export, pet_folder, tmp_path
):
  images, _, names = pet_folder
  output = str(tmp_path / "out")
  manifest = accounting.run_and_account(
    ["--input", images + "/*.jpg", "--output", output, "--model", tiny_export[0]]
    + ["--segments-files", "3"],
    inputs_seen=len(names),
  )
  files = sorted(glob.glob(f"{output}/segments/*.parquet"))
  assert [os.path.basename(f) for f in manifest["files"]["segments"]] == [
    os.path.basename(f) for f in files
  ]
  assert len(files) == 3
  assert sum(pq.read_metadata(f).num_rows for f in files) == len(names)
