"""--skip-existing: images segmented before with the same model version are skipped, never
decoded, and accounted for; failed ones are tried again; another model version skips none."""

import glob
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from segbeam import cli
from segbeam import options as options_lib
from segbeam.commands import pack
from segbeam.pipeline import layout
from segbeam.run import job
from tests import accounting
from tests import synthetic


def _run(argv):
  """A real run; returns (manifest, the job's segbeam counters)."""
  pipeline = TestPipeline()
  job.add_to(pipeline, options_lib.parse_args(argv)[0])
  result = pipeline.run()
  result.wait_until_finish()
  output = argv[argv.index("--output") + 1]
  counters = {}
  for metric in result.metrics().query(MetricsFilter())["counters"]:
    name = metric.key.metric.name
    counters[name] = counters.get(name, 0) + metric.committed
  return accounting.assert_accounted_for(output), counters


def _segmented_ids(output):
  return sorted(
    pq.read_table(os.path.join(output, layout.SEGMENTS_DIR), columns=["image_id"])
    .column("image_id")
    .to_pylist()
  )


def _counts(manifest):
  counts = manifest["counts"]
  return counts["inputs_seen"], counts["segmented"], counts["failed"], counts["skipped_existing"]


@pytest.fixture()
def inputs(pet_folder, tmp_path):
  """The six generated pets and one text file named .jpg, in a folder of their own."""
  images, _, _ = pet_folder
  folder = tmp_path / "inputs"
  shutil.copytree(images, folder)
  (folder / "notes.jpg").write_bytes(b"not an image")
  return folder


def test_resume_skips_what_was_segmented_with_the_same_model(tiny_export, inputs, tmp_path, capsys):
  export_dir, _ = tiny_export
  pattern = str(inputs / "*.jpg")
  first, again, more, other = (str(tmp_path / name) for name in ("first", "again", "more", "other"))
  common = ["--input", pattern, "--model", export_dir, "--batch-size", "4"]
  manifest, counters = _run([*common, "--output", first])
  assert _counts(manifest) == (7, 6, 1, 0)
  assert counters["num_inferences"] == 6  # RunInference's own counter

  # Everything segmented before is skipped, before validation: nothing decoded, nothing
  # inferred; the text file failed before, so it is tried (and fails) again.
  manifest, counters = _run([*common, "--output", again, "--skip-existing", first])
  assert _counts(manifest) == (7, 0, 1, 6)
  assert manifest["options"]["skip_existing"] == [first]
  assert counters["skipped_existing"] == 6 and counters["inputs_seen"] == 7
  assert counters.get("num_inferences", 0) == 0 and "segmented" not in counters
  assert cli.main(["summary", again]) == 0
  assert "7 seen, 0 segmented, 1 failed, 6 skipped" in capsys.readouterr().out

  # New images: only they are segmented. A run that skipped everything can be named too.
  for index in (10, 11):
    image, _ = synthetic.pet_scene(36, 28, seed=index)
    (inputs / f"new_{index}.jpg").write_bytes(synthetic.encode(image, "JPEG"))
  manifest, _ = _run(
    [*common, "--output", more, "--skip-existing", again, "--skip-existing", first]
  )
  assert _counts(manifest) == (9, 2, 1, 6)
  assert _segmented_ids(more) == ["new_10.jpg", "new_11.jpg"]

  # Another model version (an export whose metadata says so, as a retrained one's would):
  # nothing was segmented with it, so nothing is skipped.
  retrained = tmp_path / "retrained"
  shutil.copytree(export_dir, retrained)
  metadata_path = retrained / "segbeam_model.json"
  metadata = json.loads(metadata_path.read_text())
  metadata["version"] = "sha256:0123456789abcdef"
  metadata_path.write_text(json.dumps(metadata))
  manifest, _ = _run(
    [
      "--input",
      pattern,
      "--model",
      str(retrained),
      "--output",
      other,
      "--skip-existing",
      first,
      "--skip-existing",
      more,
    ]
  )
  assert _counts(manifest) == (9, 8, 1, 0)


def test_an_output_of_the_filename_ids_skips_the_same_records(tiny_export, pet_folder, tmp_path):
  """Before segbeam 0.2.0 a tf.Example's id was its filename. Such an output, pointed at by
  --skip-existing, still skips the records it segmented: their sources give their places."""
  images, _, names = pet_folder
  prefix = str(tmp_path / "shards" / "pets")
  os.makedirs(os.path.dirname(prefix))
  pack.pack(images, prefix, num_shards=2)
  common = ["--input", prefix + "-*", "--model", tiny_export[0]]
  old, again = str(tmp_path / "old"), str(tmp_path / "again")
  manifest, _ = _run([*common, "--output", old])
  assert _counts(manifest) == (len(names), len(names), 0, 0)
  # Rewrite the output as 0.1.0 wrote it: filenames as ids, no filename column.
  (path,) = glob.glob(os.path.join(old, layout.SEGMENTS_DIR, "*.parquet"))
  table = pq.read_table(path)
  ids = table.column("filename")
  table = table.drop_columns(["filename"]).set_column(0, "image_id", ids)
  pq.write_table(table, path)
  assert sorted(_segmented_ids(old)) == sorted(n + ".jpg" for n in names)

  manifest, _ = _run([*common, "--output", again, "--skip-existing", old])
  assert _counts(manifest) == (len(names), 0, 0, len(names))


@pytest.mark.parametrize(
  "case,words",
  [("no_manifest", "holds no completed run"), ("same_as_output", "is the --output folder itself")],
)
def test_skip_existing_must_name_another_completed_run(
  case, words, tiny_export, inputs, tmp_path, capsys
):
  killed = tmp_path / "killed"
  (killed / layout.SEGMENTS_DIR).mkdir(parents=True)  # a run killed before its manifest
  output = tmp_path / "out"
  previous = killed if case == "no_manifest" else output
  code = cli.main(
    [
      "run",
      "--input",
      str(inputs / "*.jpg"),
      "--model",
      tiny_export[0],
      "--output",
      str(output),
      "--skip-existing",
      str(previous),
      "--overwrite",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and words in err and len(err.splitlines()) == 1
  assert not output.exists() or not (output / layout.MANIFEST_FILE).exists()
