"""Loose image files read with their latency overlapped (--read-concurrency), against the GCS
emulator behind a proxy that adds latency to every request and records each one
(`tests.latency_proxy`). No timing asserts: the figures are bench/object_store_latency.py's."""

from __future__ import annotations

import os
from urllib.parse import unquote

import apache_beam as beam
import pytest
from apache_beam.io import filesystem
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from segbeam.commands import pack
from segbeam.commands import run as run_command
from segbeam.pipeline import elements
from segbeam.pipeline import sources
from segbeam.results import output as output_lib
from tests import accounting
from tests import gcs_emulator as helper
from tests import latency_proxy
from tests import synthetic

BUCKET = "segbeam-test"
ROOT = f"gs://{BUCKET}/concurrent"
COUNT = 12
CONCURRENCY = 6

pytestmark = pytest.mark.usefixtures("gcs_emulator")  # sets STORAGE_EMULATOR_HOST


@pytest.fixture(scope="module")
def photos(gcs_emulator, tmp_path_factory):
  """COUNT generated PNGs as loose objects under concurrent/images/ and packed into two
  shards under concurrent/shards/."""
  del gcs_emulator
  images = tmp_path_factory.mktemp("concurrent_images")
  for index in range(COUNT):
    image, _ = synthetic.pet_scene(30 + 3 * index, 40 - index, seed=index)
    (images / f"pet_{index:02d}.png").write_bytes(synthetic.encode(image, "PNG"))
  shards = tmp_path_factory.mktemp("concurrent_shards")
  pack.pack(str(images), str(shards / "pets"), num_shards=2)
  helper.upload_folder(str(images), BUCKET, "concurrent/images")
  helper.upload_folder(str(shards), BUCKET, "concurrent/shards")
  return images


@pytest.fixture
def proxy(gcs_emulator):
  """The emulator behind 20 ms of latency per request; gs:// goes through it."""
  with latency_proxy.running_proxy(gcs_emulator, 0.02) as running:
    with latency_proxy.emulator_host(running.url):
      yield running


def _rows_by_filename(output: str) -> dict:
  rows = output_lib.RunOutput(output).dataset("segments").to_table().to_pylist()
  return {
    row["filename"]: {k: v for k, v in row.items() if k not in ("image_id", "source", "run_id")}
    for row in rows
  }


def _run(pattern: str, output: str, model: str, *extra: str) -> None:
  args = ["--input", pattern, "--output", output, "--model", model, *extra]
  assert run_command.main(args) == 0


def test_loose_files_give_the_rows_of_shards_with_their_reads_overlapped(
  photos, proxy, tiny_export, tmp_path
):
  del photos
  model = tiny_export[0]
  loose_out = str(tmp_path / "loose")
  _run(f"{ROOT}/images/*.png", loose_out, model, "--read-concurrency", str(CONCURRENCY))
  accounting.assert_accounted_for(loose_out, inputs_seen=COUNT)
  loose_requests = proxy.requests()
  proxy.clear()
  shard_out = str(tmp_path / "shards")
  _run(f"{ROOT}/shards/*", shard_out, model)
  accounting.assert_accounted_for(shard_out, inputs_seen=COUNT)

  loose, shards = _rows_by_filename(loose_out), _rows_by_filename(shard_out)
  assert sorted(loose) == [f"pet_{i:02d}.png" for i in range(COUNT)]
  assert loose == shards  # masks, coverage, sizes: the same rows whichever way they were read

  image_requests = [r for r in loose_requests if "concurrent/images/" in unquote(r.path)]
  media = [r for r in image_requests if r.is_media]
  # One media request per image, and no metadata request: the listing gave path and size.
  assert len(media) == COUNT, [r.path for r in image_requests]
  assert [r.path for r in image_requests if r.is_object_metadata] == []
  assert 1 < proxy.max_in_flight(media) <= CONCURRENCY


def _read(metadata: list, read_concurrency: int, max_file_bytes: int = 1000) -> list:
  """The failures and (id, size) of the records ReadFile makes of `metadata`."""
  pipeline = TestPipeline()
  out = (
    pipeline
    | beam.Create(metadata)
    | beam.ParDo(sources.ReadMatches())
    | beam.ParDo(
      sources.ReadFile(
        root=f"{ROOT}/failures/",
        max_file_bytes=max_file_bytes,
        read_concurrency=read_concurrency,
      )
    ).with_outputs(elements.FAILURES, main="records")
  )
  return pipeline, out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_read_failures_are_todays_rows_with_reads_overlapped(gcs_emulator, proxy, tmp_path):
  bucket = helper.storage_client().bucket(BUCKET)
  bucket.blob("concurrent/failures/big.png").upload_from_string(b"a" * 3000)
  bucket.blob("concurrent/failures/grown.png").upload_from_string(b"g" * 3000)
  bucket.blob("concurrent/failures/regrown.png").upload_from_string(b"r" * 500)
  bucket.blob("concurrent/failures/empty.png").upload_from_string(b"")
  bucket.blob("concurrent/failures/small.png").upload_from_string(b"s" * 50)
  fifo = tmp_path / "fifo.png"
  os.mkfifo(fifo)
  metadata = [
    filesystem.FileMetadata(f"{ROOT}/failures/gone.png", 10, 0.0),  # deleted after listing
    filesystem.FileMetadata(f"{ROOT}/failures/big.png", 3000, 0.0),  # too large as listed
    filesystem.FileMetadata(f"{ROOT}/failures/grown.png", 10, 0.0),  # grew after listing
    # Grew after listing, within the limit: a pooled read holds at most its listed size + 1
    # byte, and the object is read again, whole, on the bundle's thread.
    filesystem.FileMetadata(f"{ROOT}/failures/regrown.png", 10, 0.0),
    filesystem.FileMetadata(f"{ROOT}/failures/empty.png", 0, 0.0),
    filesystem.FileMetadata(f"{ROOT}/failures/small.png", 50, 0.0),
    filesystem.FileMetadata(str(fifo), 0, 0.0),
  ]
  # What a read without overlap (and without the listing's size) reports: today's rows.
  gone_message = (
    f"404 GET {proxy.url}/storage/v1/b/{BUCKET}/o/concurrent%2Ffailures%2Fgone.png"
    "?projection=noAcl&prettyPrint=false: unknown error"
  )
  expected_failures = [
    ("gone.png", "NotFound", gone_message),
    ("big.png", "FileTooLarge", "3000 bytes is over the 1000-byte file limit"),
    (
      "grown.png",
      "FileTooLarge",
      "more than 1000 bytes read, over the file limit (listed as 10 bytes)",
    ),
    ("fifo.png", "NotARegularFile", f"{fifo} is not a regular file (mode prw-r--r--)"),
  ]
  for concurrency in (1, CONCURRENCY):
    pipeline, out = _read(metadata, concurrency)
    assert_that(
      out[elements.FAILURES] | beam.Map(lambda f: (f.image_id, f.stage, f.error_type, f.message)),
      equal_to([(i, elements.STAGE_READ, t, m) for i, t, m in expected_failures]),
      label="failures",
    )
    assert_that(
      out.records | beam.Map(lambda r: (r.image_id, r.data)),
      equal_to([("empty.png", b""), ("regrown.png", b"r" * 500), ("small.png", b"s" * 50)]),
      label="records",
    )
    pipeline.run().wait_until_finish()


@pytest.mark.parametrize(
  "path, pooled",
  [
    ("gs://b/photos/cat.jpg", True),
    ("s3://b/photos/cat.jpg", True),
    ("gs://b/photos/cat.jpg.gz", False),  # listed compressed, read decompressed
    ("gs://b/photos/cat.jpg.bz2", False),
    ("/data/photos/cat.jpg", False),
    ("file:///data/photos/cat.jpg", False),
  ],
)
def test_only_reads_bounded_by_their_listed_size_go_on_the_pool(path, pooled):
  assert sources._poolable(path) is pooled
