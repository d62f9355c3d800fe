"""The same run, the same accounted output, on every Beam runner that runs here.

Dataflow itself cannot run here, so the whole pipeline (through `segbeam run`'s own entry)
runs on Beam's local engines, each scheduling and fusing it differently: nothing in segbeam
may depend on one of them. (The PortableRunner, with its own job service and worker pool, is
portable_runner_test's.)
"""

from __future__ import annotations

import os
import shutil

import pytest

from segbeam.commands import run as run_command
from tests import accounting

# runner -> (Beam options, runs)
RUNNERS = {
  "FnApiRunner": ([], 1),
  "FnApiRunner, two worker processes": (
    ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    1,
  ),
  "FnApiRunner, two threads": (
    ["--runner=DirectRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=2"],
    1,
  ),
  # Its scheduling once ran the manifest step before a step over the Parquet file names had
  # run (WriteManifest's docstring): four runs in five failed, so three runs here.
  "BundleBasedDirectRunner": (["--runner=BundleBasedDirectRunner"], 3),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pet_folder):
  """The six generated pets and one broken JPEG."""
  images, _, _ = pet_folder
  folder = tmp_path_factory.mktemp("runner_inputs")
  for name in os.listdir(images):
    shutil.copy(os.path.join(images, name), folder / name)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
  return str(folder)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_every_local_runner_gives_the_same_accounted_output(runner, inputs, tmp_path, capsys):
  """With the embedded default model: the tiny one infers so fast that the
  BundleBasedDirectRunner's failing order did not come up with it."""
  beam_args, runs = RUNNERS[runner]
  for attempt in range(runs):
    output = str(tmp_path / f"out{attempt}")
    argv = ["--input", os.path.join(inputs, "*"), "--output", output, *beam_args]
    assert run_command.main(argv) == 0, capsys.readouterr().err
    manifest = accounting.assert_accounted_for(output, inputs_seen=7)
    assert (manifest["counts"]["segmented"], manifest["counts"]["failed"]) == (6, 1)
