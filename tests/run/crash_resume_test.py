"""A run killed at any moment loses only the images in flight: `segbeam run --resume` ends
with the very tables an uninterrupted run writes.

Real `segbeam run` processes over a few hundred generated images (and a few broken files, for
the errors table), killed with SIGKILL at points a fixed seed picks from the rows made durable
so far (early, middle, and once all are, during the final write), then resumed with the same
command; once on gs:// against the GCS emulator.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segbeam import cli
from segbeam.pipeline import layout
from segbeam.results import output as output_lib
from segbeam.run import build
from tests import accounting
from tests import unsafe_exports

IMAGES = 240
BROKEN = 4
SEED = 24  # picks the kill points
SEGBEAM = [sys.executable, "-m", "segbeam"]
# Besides the run ids, what differs between two runs of the same rows: nothing else.
VARYING = ("run_id",)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """IMAGES small PNGs of different sizes and BROKEN files that are no images."""
  folder = tmp_path_factory.mktemp("crash_inputs")
  rng = np.random.default_rng(0)
  for i in range(IMAGES):
    pixels = rng.integers(0, 256, (16 + i % 17, 16 + i % 13, 3), np.uint8)
    Image.fromarray(pixels).save(folder / f"img_{i:04d}.png")
  for i in range(BROKEN):
    (folder / f"broken_{i}.png").write_bytes(b"not a png" * (i + 1))
  return str(folder)


def _argv(inputs: str, output: str, model: str, *extra: str, pattern: str = "*.png") -> list[str]:
  return [
    *SEGBEAM,
    "run",
    "--input",
    os.path.join(inputs, pattern),
    "--output",
    output,
    "--model",
    model,
    "--batch-size",
    "8",
    "--quiet",
    *extra,
  ]


def _journaled_rows(output: str) -> int:
  """Rows in the output's journal so far, locally or on the emulator (`segbeam summary`'s
  count, from the journal files' footers)."""
  left = output_lib.unfinished(output)
  return left.segments_rows + left.errors_rows if left else 0


def _run_until_killed(argv: list[str], output: str, rows: int) -> int:
  """Starts `argv` and SIGKILLs it once the journal holds `rows` rows; returns the rows
  journaled then. Fails if the run ended before."""
  process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    while _journaled_rows(output) < rows:
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
  finally:
    process.kill()
    process.wait()
  return _journaled_rows(output)


def _resume(argv: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600)


def _table(output: str, table: str) -> list[dict]:
  run = output_lib.RunOutput(output)
  rows = run.dataset(table).to_table().to_pylist()
  return sorted(
    ({k: v for k, v in row.items() if k not in VARYING} for row in rows),
    key=lambda row: row["image_id"],
  )


@pytest.fixture(scope="module")
def uninterrupted(inputs, tiny_export, tmp_path_factory):
  output = str(tmp_path_factory.mktemp("uninterrupted") / "out")
  subprocess.run(_argv(inputs, output, tiny_export[0]), check=True, capture_output=True)
  accounting.assert_accounted_for(output, inputs_seen=IMAGES + BROKEN)
  return {table: _table(output, table) for table in output_lib.TABLES}


def test_killed_three_times_then_resumed_ends_as_an_uninterrupted_run(
  inputs, tiny_export, uninterrupted, tmp_path
):
  output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0])
  total = IMAGES + BROKEN
  rng = random.Random(SEED)
  kill_at = [
    rng.randint(total // 20, total // 5),  # early
    rng.randint(2 * total // 5, 3 * total // 5),  # middle
    total,  # every row durable: the sinks and the manifest are being written
  ]
  journaled = []
  for attempt, rows in enumerate(kill_at):
    command = argv if attempt == 0 else [*argv, "--resume"]
    journaled.append(_run_until_killed(command, output, rows))
    assert not os.path.exists(os.path.join(output, layout.MANIFEST_FILE))
    with pytest.raises(output_lib.IncompleteOutputError):
      output_lib.RunOutput(output)
  assert journaled == sorted(journaled) and journaled[-1] == total, journaled

  done = _resume(argv)
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = accounting.assert_accounted_for(output, inputs_seen=total)
  assert [a["run_id"] for a in manifest["attempts"]][-1] == manifest["run_id"]
  assert len(manifest["attempts"]) == 4
  # The last attempt decoded and inferred nothing: every row came from the journal.
  assert manifest["counts"]["from_earlier_attempts"] == total
  assert manifest["conservation"]["resumed"] == total
  for table in output_lib.TABLES:
    assert _table(output, table) == uninterrupted[table], table
  assert not os.path.exists(os.path.join(output, layout.JOURNAL_DIR))
  assert not os.path.exists(os.path.join(output, layout.CLAIM_FILE))


@pytest.mark.parametrize("where", ["local", "gs"])
def test_killed_once_the_resume_redoes_only_what_was_not_durable(
  where, inputs, tiny_export, uninterrupted, tmp_path, request
):
  if where == "gs":
    request.getfixturevalue("gcs_emulator")
    output = "gs://segbeam-test/crash/out"
  else:
    output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0])
  durable = _run_until_killed(argv, output, (IMAGES + BROKEN) // 2)
  done = _resume(argv)
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = accounting.assert_accounted_for(output, inputs_seen=IMAGES + BROKEN)
  assert manifest["counts"]["from_earlier_attempts"] == durable
  for table in output_lib.TABLES:
    assert _table(output, table) == uninterrupted[table], table


def test_a_resume_with_another_model_or_input_is_refused_in_one_line(
  inputs, tiny_export, tiny_model, tiny_config, tmp_path
):
  import keras

  from segbeam.model import export
  from segbeam.model import labels

  output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0])
  _run_until_killed(argv, output, IMAGES // 4)
  other = keras.models.clone_model(tiny_model)
  other.set_weights([w + 0.01 for w in tiny_model.get_weights()])
  other_dir = str(tmp_path / "other_export")
  export.export_model(
    other, tiny_config, other_dir, label_map=labels.OXFORD_PET_TRIMAP, name="tiny"
  )

  refused = _resume(_argv(inputs, output, other_dir))
  assert refused.returncode == 2
  (line,) = refused.stderr.strip().splitlines()[-1:]
  assert "--resume refused" in line and "--model" in line and "this run" in line, line

  elsewhere = _resume(_argv(inputs, output, tiny_export[0], pattern="img_*.png"))
  assert elsewhere.returncode == 2 and "--input" in elsewhere.stderr.strip().splitlines()[-1]
  # Refusals change nothing: the same command still resumes.
  done = _resume(argv)
  assert done.returncode == 0, done.stderr[-3000:]
  accounting.assert_accounted_for(output, inputs_seen=IMAGES + BROKEN)


def test_summary_of_an_unfinished_folder_says_how_far_it_got_and_how_to_resume(
  inputs, tiny_export, tmp_path, capsys
):
  output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0])
  durable = _run_until_killed(argv, output, IMAGES // 3)
  assert cli.main(["summary", output]) == 2
  text = capsys.readouterr()
  lines = (text.out + text.err).strip().splitlines()
  assert any(f"rows durable so far: {durable:,} " in line for line in lines), lines
  assert any("--resume" in line and "--output" in line for line in lines), lines


def test_a_kill_while_the_manifest_is_written_leaves_no_manifest(tmp_path):
  """The manifest goes to a temporary '.manifest.json.<random>.partial', then is renamed: a
  process killed while writing it leaves a folder that reads as unfinished."""
  output = tmp_path / "out"
  (output / layout.SEGMENTS_DIR).mkdir(parents=True)
  script = (
    "import sys; from segbeam.pipeline import sinks; "
    "sinks.write_file(sys.argv[1], b'{' + b' ' * (1 << 30) + b'}')"
  )
  process = subprocess.Popen([sys.executable, "-c", script, str(output / layout.MANIFEST_FILE)])
  pattern = str(output / f".{layout.MANIFEST_FILE}.*{layout.PARTIAL_SUFFIX}")
  try:
    while not any(os.path.getsize(p) > 0 for p in glob.glob(pattern)):
      assert process.poll() is None
      time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
  finally:
    process.kill()
    process.wait()
  assert not (output / layout.MANIFEST_FILE).exists()
  with pytest.raises(output_lib.IncompleteOutputError):
    output_lib.RunOutput(str(output))


def test_the_distributed_graph_resumes_alike(inputs, tiny_export, uninterrupted, tmp_path):
  """The graph a Dataflow job gets (input reshuffled, replayed rows made one per image by a
  CoGroupByKey), run here on the FnApiRunner."""
  from apache_beam.testing.test_pipeline import TestPipeline

  from segbeam import options as options_lib
  from segbeam.run import job

  output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0])
  durable = _run_until_killed(argv, output, (IMAGES + BROKEN) // 3)
  options, _ = options_lib.parse_args([*argv[argv.index("run") + 1 :], "--resume"])
  prepared = job.prepare(options)
  assert len(prepared.attempts) == 2
  pipeline = TestPipeline()
  build.build_pipeline(
    pipeline,
    options,
    prepared.metadata,
    prepared.model_dir,
    distributed=True,
    attempts=prepared.attempts,
  )
  pipeline.run().wait_until_finish()
  manifest = accounting.assert_accounted_for(output, inputs_seen=IMAGES + BROKEN)
  assert manifest["counts"]["from_earlier_attempts"] == durable
  for table in output_lib.TABLES:
    assert _table(output, table) == uninterrupted[table], table


def _journal_files(output: str, table: str = layout.SEGMENTS_DIR) -> list[str]:
  return sorted(glob.glob(os.path.join(output, layout.JOURNAL_DIR, table, "*.parquet")))


def _killed_early(argv: list[str], output: str) -> str:
  """Runs `argv` until its journal holds a few rows, kills it; returns one journal file."""
  _run_until_killed(argv, output, 8)
  return _journal_files(output)[0]


def test_journal_rows_of_another_model_or_run_are_refused_in_one_line(
  inputs, tiny_export, uninterrupted, tmp_path
):
  """Journal files left in or planted in _journal/ under the name of one of the claim's
  attempts: of another model, of another run, of an earlier run with the same run id (one an
  --overwrite replaced), whose rows say so or only whose stamp does. Each refuses the resume in
  one line naming the file and what differs; nothing of them reaches the tables."""
  output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0], "--run-id", "nightly")
  _run_until_killed(argv, output, IMAGES // 4)
  harmless = unsafe_exports.write_export(str(tmp_path / "harmless"))
  other_model = _killed_early(
    _argv(inputs, str(tmp_path / "b"), harmless, "--run-id", "nightly"), str(tmp_path / "b")
  )
  earlier_run = _killed_early(
    _argv(inputs, str(tmp_path / "c"), tiny_export[0], "--run-id", "nightly", pattern="img_00*"),
    str(tmp_path / "c"),
  )
  # One of this output's own journal files with its rows' run id changed: the file's stamp is
  # this attempt's, its rows are not.
  own = pq.read_table(_journal_files(output)[0])
  other_rows = str(tmp_path / "other_rows.parquet")
  pq.write_table(
    own.set_column(
      own.schema.get_field_index("run_id"), "run_id", pa.array(["another-run"] * own.num_rows)
    ),
    other_rows,
  )
  cases = [
    (other_model, "'harmless'"),
    (earlier_run, "another run"),
    (other_rows, "'another-run'"),
  ]
  for source, what in cases:
    name = f"nightly-{uuid.uuid4().hex}.parquet"
    planted = os.path.join(output, layout.JOURNAL_DIR, layout.SEGMENTS_DIR, name)
    shutil.copy(source, planted)
    refused = _resume(argv)
    assert refused.returncode == 2, (source, refused.stderr[-3000:])
    line = refused.stderr.strip().splitlines()[-1]
    assert "--resume refused" in line and name in line and what in line, line
    os.remove(planted)

  # Refusals change nothing: without the planted files the same command resumes, and the
  # tables hold exactly what an uninterrupted run of this model writes.
  done = _resume(argv)
  assert done.returncode == 0, done.stderr[-3000:]
  accounting.assert_accounted_for(output, inputs_seen=IMAGES + BROKEN)
  for table in output_lib.TABLES:
    assert _table(output, table) == uninterrupted[table], table


def test_an_input_deleted_after_the_kill_keeps_its_row_and_the_resume_finishes(
  inputs, tiny_export, tmp_path, capsys
):
  folder = tmp_path / "inputs"
  shutil.copytree(inputs, folder)
  output = str(tmp_path / "out")
  argv = _argv(str(folder), output, tiny_export[0])
  _run_until_killed(argv, output, (IMAGES + BROKEN) // 2)
  journaled = {
    table: sorted(
      row["image_id"]
      for path in _journal_files(output, table)
      for row in pq.read_table(path, columns=["image_id"]).to_pylist()
    )
    for table in output_lib.TABLES
  }
  # Two segmented inputs, and a failed one where the journal holds one, deleted since the kill.
  gone = journaled[layout.SEGMENTS_DIR][:2] + journaled[layout.ERRORS_DIR][:1]
  for image_id in gone:
    os.remove(folder / image_id)

  done = _resume(argv)
  assert done.returncode == 0, done.stderr[-3000:]
  total = IMAGES + BROKEN
  manifest = accounting.assert_accounted_for(output, inputs_seen=total - len(gone))
  counts, conservation = manifest["counts"], manifest["conservation"]
  assert counts["resumed_inputs_gone"] == conservation["resumed_inputs_gone"] == len(gone)
  assert counts["segmented"] + counts["failed"] == total
  # Their rows are kept: each was made while its input existed.
  kept = {row["image_id"] for t in output_lib.TABLES for row in _table(output, t)}
  assert set(gone) <= kept
  assert cli.main(["summary", output]) == 0
  assert f"images {total - len(gone)} seen" in capsys.readouterr().out


@pytest.mark.parametrize(
  "linked", [layout.MASKS_DIR, f"{layout.JOURNAL_DIR}/{layout.SEGMENTS_DIR}"]
)
def test_a_resume_into_a_folder_linked_outside_is_refused_and_writes_nothing_there(
  linked, inputs, tiny_export, tmp_path
):
  """A killed --mask-files run's masks/ (or a journal table folder) replaced by a link to a
  folder outside --output: the resume is refused in one line naming it, before writing."""
  output = str(tmp_path / "out")
  argv = _argv(inputs, output, tiny_export[0], "--mask-files", pattern="img_00*")
  _run_until_killed(argv, output, 8)
  outside = tmp_path / "outside"
  outside.mkdir()
  shutil.rmtree(os.path.join(output, linked))
  os.symlink(outside, os.path.join(output, linked))
  refused = _resume(argv)
  assert refused.returncode == 2, refused.stderr[-3000:]
  lines = refused.stderr.strip().splitlines()
  assert f"{os.path.join(output, linked)} is a link" in lines[-1], lines[-1]
  assert os.listdir(outside) == []
  assert os.path.islink(os.path.join(output, linked))
