"""`segbeam run` reading images and the model from gs:// and writing its output there, against a
real GCS HTTP emulator (PyPI gcp-storage-emulator): Beam's own GCS file system, no mocks.

Beam looks for Google credentials once per process and, finding none here, retries for about
20 s before it connects anonymously: the first gs:// access in a test session is that slow.
"""

from __future__ import annotations

import filecmp
import logging
import os
import threading

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from segbeam import constants
from segbeam.commands import pack
from segbeam.commands import run as run_command
from segbeam.pipeline import inference
from segbeam.pipeline import model_files
from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord
from segbeam.results import output as output_lib
from tests import accounting
from tests import gcs_emulator as helper
from tests import synthetic

BUCKET = "segbeam-test"
ROOT = f"gs://{BUCKET}/e2e"
SIZES = [(40, 30), (64, 64), (33, 57), (50, 20)]

pytestmark = pytest.mark.usefixtures("gcs_emulator")  # sets STORAGE_EMULATOR_HOST


@pytest.fixture(scope="module")
def gcs_inputs(gcs_emulator, tiny_export, tmp_path_factory):
  """Generated PNGs plus one text file under e2e/images/, the tiny export under e2e/model/."""
  del gcs_emulator
  images = tmp_path_factory.mktemp("gcs_images")
  for index, (width, height) in enumerate(SIZES):
    image, _ = synthetic.pet_scene(width, height, seed=index)
    (images / f"pet_{index}.png").write_bytes(synthetic.encode(image, "PNG"))
  (images / "notes.png").write_bytes(b"not an image")
  helper.upload_folder(str(images), BUCKET, "e2e/images")
  helper.upload_folder(tiny_export[0], BUCKET, "e2e/model")
  return f"{ROOT}/images", f"{ROOT}/model"


def test_segbeam_run_reads_and_writes_gs(gcs_inputs, tiny_export, capsys):
  images, model = gcs_inputs
  output = f"{ROOT}/out"
  assert run_command.main(["--input", f"{images}/*.png", "--output", output, "--model", model]) == 0
  assert "5 inputs, 4 segmented, 1 failed" in capsys.readouterr().out
  accounting.assert_accounted_for(output, inputs_seen=5)

  run = output_lib.RunOutput(output)  # pyarrow's GCS file system, not Beam's
  counts = run.manifest["counts"]
  assert (counts["inputs_seen"], counts["segmented"], counts["failed"]) == (5, 4, 1)
  assert counts["failed_by_stage"] == {"validate": 1}
  assert run.manifest["conservation"]["holds"]
  assert run.manifest["model"]["path"] == model
  assert run.manifest["model"]["version"] == tiny_export[1].version
  assert all(path.startswith(f"{output}/segments/") for path in run.manifest["files"]["segments"])
  rows = run.dataset("segments").to_table().to_pylist()
  assert sorted((r["image_id"], r["width"], r["height"], r["source"]) for r in rows) == sorted(
    (f"pet_{i}.png", w, h, f"{images}/pet_{i}.png") for i, (w, h) in enumerate(SIZES)
  )
  errors = run.dataset("errors").to_table().to_pylist()
  assert [(e["image_id"], e["stage"]) for e in errors] == [("notes.png", "validate")]


def test_a_gs_folder_named_without_a_glob_is_a_bad_invocation(gcs_inputs, capsys):
  images, model = gcs_inputs
  assert (
    run_command.main(["--input", images, "--output", f"{ROOT}/folder-out", "--model", model]) == 2
  )
  assert f"input '{images}' is a folder: give a glob" in capsys.readouterr().err


def test_a_gs_shard_named_without_extension_is_read_as_a_shard(tmp_path):
  shards = tmp_path / "shards"
  shards.mkdir()
  image = synthetic.encode(synthetic.pet_scene(20, 16, seed=3)[0], "PNG")
  (shards / "train-00000-of-00001").write_bytes(
    tfrecord.encode_record(pack.make_example("a.png", image))
    + tfrecord.encode_record(pack.make_example("b.png", image))
  )
  helper.upload_folder(str(shards), BUCKET, "e2e/shards")
  pipeline = TestPipeline()
  out = pipeline | sources.ReadImages(f"{ROOT}/shards/*")
  assert_that(
    out.rows | beam.Map(lambda r: (r.image_id, r.filename, r.data == image)),
    equal_to(
      [("train-00000-of-00001#0", "a.png", True), ("train-00000-of-00001#1", "b.png", True)]
    ),
    label="records",
  )
  assert_that(out.failures, equal_to([]), label="no failures")
  pipeline.run().wait_until_finish()


def test_pack_reads_and_writes_gs_and_leaves_only_whole_shards(gcs_inputs):
  images, _ = gcs_inputs
  packed = pack.pack(images, f"{ROOT}/packed/pets", num_shards=2)
  assert (packed.images, packed.not_images) == (5, [])  # notes.png is packed: named an image
  listed = sorted(m.path for m in FileSystems.match([f"{ROOT}/packed/*"])[0].metadata_list)
  assert (
    listed
    == packed.shards
    == [
      f"{ROOT}/packed/pets-00000-of-00002.tfrecord",
      f"{ROOT}/packed/pets-00001-of-00002.tfrecord",
    ]
  )
  pipeline = TestPipeline()
  out = pipeline | sources.ReadImages(f"{ROOT}/packed/pets-*")
  assert_that(
    out.rows | beam.Map(lambda r: r.filename),
    equal_to(["notes.png"] + [f"pet_{i}.png" for i in range(len(SIZES))]),
    label="records",
  )
  pipeline.run().wait_until_finish()


def test_model_metadata_is_read_from_gs_through_beam(gcs_inputs, tiny_export):
  _, model = gcs_inputs
  assert model_files.read_metadata(model) == tiny_export[1]
  with pytest.raises(FileNotFoundError, match="not a segbeam export"):
    model_files.read_metadata(f"{ROOT}/images")


@pytest.mark.parametrize("handler_name", constants.HANDLERS)
def test_both_handlers_load_the_model_from_gs(gcs_inputs, tiny_export, handler_name):
  _, model = gcs_inputs
  image = synthetic.encode(synthetic.pet_scene(24, 18, seed=7)[0], "PNG")
  results = {}
  for model_dir in (model, tiny_export[0]):
    handler = pickler.loads(
      pickler.dumps(inference.create_handler(handler_name, model_dir, max_batch_size=2))
    )
    [(_, result)] = handler.run_inference([("a", image)], handler.load_model())
    results[model_dir] = inference.outputs_as_arrays(result)
  remote, local = results[model], results[tiny_export[0]]
  assert (int(remote["width"]), int(remote["height"])) == (24, 18)
  assert (remote["probabilities"] == local["probabilities"]).all()


def test_a_remote_model_is_copied_once_per_process(tmp_path, caplog):
  # Files shaped like an export's, with a folder placeholder object and a name that must not
  # be decompressed on the way.
  source = tmp_path / "source"
  (source / "variables").mkdir(parents=True)
  (source / "saved_model.pb").write_bytes(os.urandom(3000))
  (source / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(70000))
  (source / "notes.txt.gz").write_bytes(b"not gzip at all")
  helper.upload_folder(str(source), BUCKET, "copy-test/model")
  helper.storage_client().bucket(BUCKET).blob("copy-test/model/assets/").upload_from_string(b"")
  remote = f"gs://{BUCKET}/copy-test/model/"  # a trailing slash names the same model

  copies, errors = [], []

  def localize():
    try:
      copies.append(model_files.local_model_dir(remote))
    except Exception as error:  # reported below
      errors.append(error)

  with caplog.at_level(logging.INFO, logger=model_files.__name__):
    threads = [threading.Thread(target=localize) for _ in range(4)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    copies.append(model_files.local_model_dir(remote.rstrip("/")))
  assert not errors
  assert len(set(copies)) == 1 and len(copies) == 5
  assert sum("copied model" in record.getMessage() for record in caplog.records) == 1
  local = copies[0]
  assert os.path.isdir(os.path.join(local, "assets"))
  comparison = filecmp.dircmp(str(source), local)
  assert comparison.left_only == [] and comparison.right_only == ["assets"]
  for name in ("saved_model.pb", "notes.txt.gz", "variables/variables.data-00000-of-00001"):
    assert filecmp.cmp(source / name, os.path.join(local, name), shallow=False)


def test_local_and_missing_model_paths(tmp_path):
  assert model_files.local_model_dir(str(tmp_path)) == str(tmp_path)
  assert model_files.local_model_dir(f"file://{tmp_path}") == f"file://{tmp_path}"
  with pytest.raises(FileNotFoundError, match="no files under"):
    model_files.local_model_dir(f"gs://{BUCKET}/no-such-model")
  with pytest.raises(ValueError, match="glob characters"):
    model_files.local_model_dir(f"gs://{BUCKET}/models/v[1]")
