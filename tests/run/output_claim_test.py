"""One output folder, one run: the claim is atomic locally and on gs:// (the GCS emulator,
with GCS's generation preconditions), and a second run is refused naming the first."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segbeam import exits
from segbeam import options as options_lib
from segbeam.pipeline import layout
from segbeam.results import output as output_lib
from segbeam.run import job
from segbeam.run import output_claim
from tests import accounting

SEGBEAM = [sys.executable, "-m", "segbeam"]


def _claim(run_id: str, earlier=None) -> output_claim.Claim:
  return output_claim.new_claim(run_id, "t", ("segbeam", "run"), {"--input": "x"}, earlier)


@pytest.fixture(params=["local", "gs"])
def output(request, tmp_path):
  if request.param == "local":
    return str(tmp_path / "out")
  request.getfixturevalue("gcs_emulator")
  return f"gs://segbeam-test/claims/{os.path.basename(str(tmp_path))}"


def test_only_the_first_claim_is_taken_and_the_second_names_it(output):
  output_claim.claim(output, _claim("first"))
  with pytest.raises(output_claim.ClaimedError, match="claimed by run first"):
    output_claim.claim(output, _claim("second"))
  held, _ = output_claim.read_claim(output)
  assert held.run_id == "first" and held.fingerprint == {"--input": "x"}
  output_claim.release(output)
  assert output_claim.read_claim(output) == (None, None)


def test_of_many_runs_taking_over_one_claim_at_once_one_does(output):
  output_claim.claim(output, _claim("killed"))
  held, token = output_claim.read_claim(output)

  def take(i: int) -> bool:
    try:
      output_claim.take_over(output, token, _claim(f"taker{i}", earlier=held))
      return True
    except output_claim.ClaimedError:
      return False

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    taken = list(pool.map(take, range(8)))
  assert taken.count(True) == 1, taken
  now, _ = output_claim.read_claim(output)
  assert now.run_id == f"taker{taken.index(True)}"
  assert [a["run_id"] for a in now.attempts] == ["killed", now.run_id]
  # A take-over of the version already replaced fails too.
  with pytest.raises(output_claim.ClaimedError):
    output_claim.take_over(output, token, _claim("late"))


def test_launchers_preparing_one_output_at_once_one_claims_it(output, tiny_export, tmp_path):
  """What `segbeam run`, and `segbeam submit` for a Dataflow job, do before anything is built:
  of four started together on one output (local, or gs://), one claims it; the others are
  refused naming it, not failed on the folder they all create."""
  inputs = tmp_path / "in"
  inputs.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "a.png")

  def prepare(i: int):
    argv = ["--input", str(inputs / "*.png"), "--output", output, "--model", tiny_export[0]]
    options, _ = options_lib.parse_args([*argv, "--run-id", f"job{i}"])
    try:
      return job.prepare(options).attempts
    except exits.InvocationError as error:
      return str(error)

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(prepare, range(4)))
  claimed = [r for r in results if not isinstance(r, str)]
  assert len(claimed) == 1, results
  holder = claimed[0][0]["run_id"]
  for refusal in (r for r in results if isinstance(r, str)):
    assert f"claimed by run {holder}" in refusal, results


def _photos(folder, count: int, colour) -> str:
  folder.mkdir()
  for i in range(count):
    Image.fromarray(np.full((20 + i % 5, 24, 3), colour, np.uint8)).save(folder / f"{i:03d}.png")
  return str(folder / "*.png")


def test_two_runs_started_together_into_one_folder_one_is_refused_nothing_lost(
  tiny_export, tmp_path
):
  output = str(tmp_path / "out")
  bengal = _photos(tmp_path / "bengal", 60, (200, 120, 40))
  abyssinian = _photos(tmp_path / "abyssinian", 50, (150, 90, 60))
  runs = [
    subprocess.Popen(
      [*SEGBEAM, "run", "--input", pattern, "--output", output, "--model", tiny_export[0]],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for pattern in (bengal, abyssinian)
  ]
  results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
  codes = sorted(code for code, _ in results)
  assert codes == [0, 2], results
  (winner,) = [i for i, (code, _) in enumerate(results) if code == 0]
  refusal = results[1 - winner][1].strip().splitlines()[-1]
  assert output in refusal and ("claimed by run" in refusal or "already holds a run" in refusal)
  manifest = accounting.assert_accounted_for(output, inputs_seen=(60, 50)[winner])
  assert manifest["input"].endswith(("bengal", "abyssinian")[winner] + "/*.png")


def test_a_killed_runs_claim_refuses_a_new_run_until_resume_or_overwrite(
  tiny_export, tmp_path, capsys
):
  from segbeam.commands import run as run_command

  output = str(tmp_path / "out")
  pattern = _photos(tmp_path / "in", 5, (10, 200, 10))
  argv = ["--input", pattern, "--output", output, "--model", tiny_export[0], "--quiet"]
  gone = subprocess.Popen(["true"])
  gone.wait()
  # What a killed run leaves, before any row: its process is no more.
  output_claim.claim(output, dataclasses.replace(_claim("killed-run"), pid=gone.pid))
  assert run_command.main(argv) == 2
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert "claimed by run killed-run" in line and "no longer running" in line
  assert "--resume" in line and "--overwrite" in line
  assert run_command.main([*argv, "--overwrite"]) == 0
  manifest = accounting.assert_accounted_for(output, inputs_seen=5)
  assert [a["run_id"] for a in manifest["attempts"]] == [manifest["run_id"]]
  assert not os.path.exists(os.path.join(output, layout.CLAIM_FILE))
  # --resume of a completed run: nothing to do, the report again.
  assert run_command.main([*argv, "--resume"]) == 0
  assert "nothing to resume" in capsys.readouterr().err
  assert output_lib.RunOutput(output).manifest["run_id"] == manifest["run_id"]


def _write(path: str, data: bytes) -> None:
  from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

  if "://" not in path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with FileSystems.create(path) as f:
    f.write(data)


def test_what_overwrite_may_not_delete_is_told_locally_and_on_gs(output):
  """A dataset's masks/ and manifest.json are no run's; beside a run's claim they are, and
  anything else never is."""
  _write(f"{output}/masks/cat.png", b"trimap")
  _write(f"{output}/manifest.json", b'{"name": "pets"}')
  _write(f"{output}/README", b"the pets")
  _write(f"{output}/deep/er/x.jpg", b"x")
  assert output_claim.entries(output) == ["README", "deep", "manifest.json", "masks"]
  assert output_claim.not_written_by_segbeam(output, claimed=False) == [
    "README",
    "deep",
    "manifest.json",
    "masks",
  ]
  output_claim.claim(output, _claim("killed"))
  _write(f"{output}/_journal/segments/killed-0.parquet", b"PAR1")
  _write(f"{output}/segments/beam-temp-part-1/x.parquet", b"PAR1")
  assert output_claim.not_written_by_segbeam(output, claimed=True) == ["README", "deep"]
  assert output_claim.not_written_by_segbeam(output, claimed=False) == ["README", "deep"]
  assert output_claim.entries(f"{output}/nothing-here") == []


@pytest.fixture(scope="module")
def harmless_export(tmp_path_factory):
  from tests import unsafe_exports  # noqa: PLC0415

  return unsafe_exports.write_export(str(tmp_path_factory.mktemp("harmless") / "export"))


@pytest.mark.parametrize(
  "entry",
  [layout.MASKS_DIR, f"{layout.JOURNAL_DIR}/{layout.ERRORS_DIR}", "manifest.json"],
)
def test_a_link_among_the_outputs_entries_refuses_every_run_in_one_line(
  entry, harmless_export, tmp_path, capsys
):
  """A segbeam entry of --output (or a journal table folder) that is a link, to a folder or
  file outside or to nothing: a fresh run, --overwrite and --resume are refused naming it, and
  nothing is written or deleted through it."""
  from segbeam.commands import run as run_command  # noqa: PLC0415

  output = tmp_path / "out"
  (output / layout.JOURNAL_DIR).mkdir(parents=True)
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "keep.txt").write_bytes(b"precious")
  pattern = _photos(tmp_path / "in", 2, (10, 200, 10))
  argv = ["--input", pattern, "--output", str(output), "--model", harmless_export, "--quiet"]
  for target in (outside, outside / "keep.txt", tmp_path / "nothing"):
    (output / entry).symlink_to(target)
    for how in ([], ["--overwrite"], ["--resume"]):
      assert run_command.main([*argv, "--mask-files", *how]) == 2, how
      err = capsys.readouterr().err.strip()
      assert len(err.splitlines()) == 1 and f"{output / entry} is a link" in err, (how, err)
      assert sorted(os.listdir(outside)) == ["keep.txt"]
      assert (outside / "keep.txt").read_bytes() == b"precious"
      assert (output / entry).is_symlink()
    os.remove(output / entry)
