"""`segbeam run` from the command line: exit codes, one-line reasons, the report."""

import glob
import json
import os
import pathlib
import re
import shutil

import pytest

from segbeam import cli
from segbeam.commands import run as run_command
from tests import accounting
from tests import synthetic


@pytest.fixture()
def one_image(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "cat.png").write_bytes(synthetic.encode(synthetic.pet_scene(30, 20, 0)[0], "PNG"))
  return str(folder)


def _run(capsys, *argv):
  code = cli.main(["run", *argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err.strip()


def test_runs_and_reports(tiny_export, one_image, tmp_path, capsys):
  export_dir, _ = tiny_export
  output = str(tmp_path / "out")
  code, out, _ = _run(
    capsys,
    "--input",
    one_image + "/*.png",
    "--output",
    output,
    "--model",
    export_dir,
    "--direct_num_workers=1",
  )  # a Beam option passes through
  assert code == 0
  assert "1 inputs, 1 segmented, 0 failed" in out and "cat.png" in out
  assert f"output: {output}/segments/*.parquet, errors/*.parquet, manifest.json" in out
  assert os.path.exists(os.path.join(output, "manifest.json"))
  accounting.assert_accounted_for(output, inputs_seen=1)

  code, _, err = _run(
    capsys, "--input", one_image + "/*.png", "--output", output, "--model", export_dir
  )
  assert code == 2 and "already holds a run" in err and len(err.splitlines()) == 1
  code, out, _ = _run(
    capsys,
    "--input",
    one_image + "/*.png",
    "--output",
    output,
    "--model",
    export_dir,
    "--overwrite",
    "--mask-files",
  )
  assert code == 0 and "errors/*.parquet, masks/*.png, manifest.json" in out


@pytest.mark.parametrize(
  "case,words",
  [
    ("no_input", "no input matched"),
    ("bad_model", "model unreadable"),
    ("bad_output", "output not writable"),
    ("bad_batch", "--batch-size must be at least 1"),
    ("folder_input", "is a folder: give a glob"),
  ],
)
def test_bad_invocations_exit_2_with_one_line(
  case, words, tiny_export, one_image, tmp_path, capsys
):
  export_dir, _ = tiny_export
  blocker = tmp_path / "file"
  blocker.write_text("a file where a folder should be")
  argv = {
    "input": one_image + "/*.png",
    "output": str(tmp_path / "out"),
    "model": export_dir,
    "batch-size": "4",
  }
  if case == "no_input":
    argv["input"] = str(tmp_path / "nothing" / "*.jpg")
  elif case == "bad_model":
    argv["model"] = str(tmp_path)
  elif case == "bad_output":
    argv["output"] = str(blocker / "out")
  elif case == "folder_input":
    argv["input"] = one_image  # the folder, not its files
  else:
    argv["batch-size"] = "0"
  code, _, err = _run(capsys, *[x for k, v in argv.items() for x in (f"--{k}", v)])
  assert code == 2
  assert err.startswith("segbeam run:") and words in err and len(err.splitlines()) == 1


def test_an_unquoted_glob_the_shell_expanded_is_refused_not_run_on_its_first_file(
  tiny_export, tmp_path, capsys
):
  folder = tmp_path / "in"
  folder.mkdir()
  for name in ("a.png", "b.png", "c.png"):
    (folder / name).write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "PNG"))
  expanded = sorted(str(path) for path in folder.iterdir())  # what bash makes of in/*.png
  output = tmp_path / "out"
  code, out, err = _run(
    capsys, "--input", *expanded, "--output", str(output), "--model", tiny_export[0]
  )
  assert code == 2 and out == ""
  assert err == (
    f"segbeam run: --input is followed by 3 paths ({', '.join(expanded)}): the "
    "shell expanded an unquoted glob into its files; quote the pattern so that "
    "segbeam expands it, e.g. --input 'photos/*.jpg'"
  )
  assert not output.exists()


def test_a_pattern_without_a_folder_matches_in_the_current_one(
  tiny_export, one_image, tmp_path, capsys, monkeypatch
):
  monkeypatch.chdir(one_image)
  output = str(tmp_path / "out")
  code, out, _ = _run(capsys, "--input", "*.png", "--output", output, "--model", tiny_export[0])
  assert code == 0 and "1 inputs, 1 segmented, 0 failed" in out
  accounting.assert_accounted_for(output, inputs_seen=1)


def test_demo_on_the_default_model(tmp_path, capsys):
  """The README's first command: sample photos through the embedded model."""
  import glob

  import pyarrow.parquet as pq

  output = str(tmp_path / "demo")
  assert cli.main(["demo", "--output", output]) == 0
  out = capsys.readouterr().out
  assert "0 failed" in out and "images with the most pet:" in out
  accounting.assert_accounted_for(output)
  rows = {
    r["image_id"]: r for r in pq.read_table(glob.glob(f"{output}/segments/*.parquet")).to_pylist()
  }
  assert len(rows) >= 20
  # The one cat among scikit-image's photos: the default model must see a pet there.
  assert rows["chelsea.png"]["coverage_pet"] > 0.3


def test_demo_help_is_the_demos_own(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["demo", "--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: segbeam demo [--output DIR]") and "scikit-image" in out
  assert "segmenting" not in out and "segbeam run [-h]" not in out


@pytest.mark.parametrize("left_behind", ["killed_run", "segments_temp", "errors", "masks"])
def test_an_unfinished_run_is_never_mixed_with_a_new_one(
  left_behind, small_run, tiny_export, one_image, tmp_path, capsys
):
  """What a run killed half way leaves (no manifest: it is written last) is refused like a
  completed run, and left as it was."""
  output = tmp_path / "out"
  if left_behind == "killed_run":
    shutil.copytree(small_run, output)
    os.remove(output / "manifest.json")
  elif left_behind == "segments_temp":  # WriteToParquet's temporary files, nothing final yet
    (output / "segments" / "beam-temp-part-1234").mkdir(parents=True)
    (output / "segments" / "beam-temp-part-1234" / "5678.parquet").write_bytes(b"PAR1")
  else:
    (output / left_behind).mkdir(parents=True)
    (output / left_behind / "x").write_bytes(b"")
  before = sorted(str(p.relative_to(output)) for p in output.rglob("*"))
  code, _, err = _run(
    capsys, "--input", one_image + "/*.png", "--output", str(output), "--model", tiny_export[0]
  )
  assert code == 2 and "already holds a run" in err and len(err.splitlines()) == 1
  assert sorted(str(p.relative_to(output)) for p in output.rglob("*")) == before


def test_a_failed_run_exits_1_and_its_output_reads_as_incomplete(
  small_run, tiny_export, one_image, tmp_path, capsys
):
  # A previous output whose segments file is damaged: the run fails while reading it.
  damaged = tmp_path / "damaged"
  shutil.copytree(small_run, damaged)
  for path in glob.glob(str(damaged / "segments" / "*.parquet")):
    with open(path, "wb") as f:
      f.write(b"not parquet")
  output = str(tmp_path / "out")
  argv = [
    "--input",
    one_image + "/*.png",
    "--output",
    output,
    "--model",
    tiny_export[0],
    "--skip-existing",
    str(damaged),
  ]
  code, out, err = _run(capsys, *argv)
  assert code == 1 and "the run failed, no manifest was written" in err.splitlines()[-1]
  assert "segmented" not in out
  assert not os.path.exists(os.path.join(output, "manifest.json"))
  for command in (
    ["summary", output],
    ["query", output, "SELECT 1"],
    ["report", output, "--out", str(tmp_path / "r.html")],
  ):
    assert cli.main(command) == 2
    assert "did not complete" in capsys.readouterr().err
  code, _, err = _run(capsys, *argv)
  assert code == 2 and "is claimed by run" in err and "--resume" in err


# Ctrl-C: a real SIGINT to a real run, sent by the run itself at its third inference batch so
# that it lands mid-run on every machine.
_INTERRUPTED_RUN = """
import os, signal, sys
from segbeam.pipeline import inference
batches = []
run_inference = inference.IsolatingModelHandler.run_inference
def interrupting(handler, batch, model, inference_args=None):
  batches.append(len(batch))
  if len(batches) == 3:
    os.kill(os.getpid(), signal.SIGINT)
  return run_inference(handler, batch, model, inference_args)
inference.IsolatingModelHandler.run_inference = interrupting
from segbeam import cli
code = cli.main(["run"] + sys.argv[1:])
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)
"""


def test_ctrl_c_mid_run_exits_130_with_one_line_and_no_traceback(tiny_export, tmp_path):
  import subprocess
  import sys

  folder = tmp_path / "in"
  folder.mkdir()
  for i in range(12):
    (folder / f"pet{i}.png").write_bytes(
      synthetic.encode(synthetic.pet_scene(30 + i, 20, i)[0], "PNG")
    )
  output = tmp_path / "out"
  run = subprocess.run(
    [
      sys.executable,
      "-c",
      _INTERRUPTED_RUN,
      "--input",
      str(folder / "*.png"),
      "--output",
      str(output),
      "--model",
      tiny_export[0],
      "--batch-size",
      "2",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 130, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1] == (
    f"segbeam run: interrupted; {output} holds an unfinished run (no manifest.json): "
    f"{run_command.RESUME_HINT}"
  )
  assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr
  assert run.stdout == ""  # no report of a run that did not finish
  assert not (output / "manifest.json").exists()


def test_what_an_interruption_message_says_of_the_output(small_run, tmp_path):
  assert run_command.interruption_message(small_run) == f"interrupted; {small_run} is as it was"
  unfinished = tmp_path / "unfinished"
  (unfinished / "segments").mkdir(parents=True)
  assert f"holds an unfinished run (no manifest.json): {run_command.RESUME_HINT}" in (
    run_command.interruption_message(str(unfinished))
  )
  assert run_command.interruption_message(str(tmp_path / "not_yet")) == (
    "interrupted before anything was written"
  )


def test_an_interrupt_is_told_from_a_failure_through_beams_re_raise():
  def raised_while_handling(first: BaseException, then: Exception) -> Exception:
    try:
      try:
        raise first
      except BaseException:
        raise then  # noqa: B904  # as Beam's _reraise_augmented does: no `from`
    except Exception as error:
      return error

  beam_wrapped = raised_while_handling(
    KeyboardInterrupt(), RuntimeError("KeyboardInterrupt [while running 'x']")
  )
  assert run_command.interrupted(beam_wrapped)
  assert run_command.interrupted(KeyboardInterrupt())
  assert not run_command.interrupted(raised_while_handling(ValueError("bad"), RuntimeError("x")))
  looped = RuntimeError("loop")
  looped.__context__ = RuntimeError("back")
  looped.__context__.__context__ = looped
  assert not run_command.interrupted(looped)


def test_ctrl_c_outside_a_run_is_one_line_too(monkeypatch, capsys):
  def interrupted_parser(*unused):
    raise KeyboardInterrupt

  monkeypatch.setattr(cli, "build_parser", interrupted_parser)
  assert cli.main(["model", "list"]) == 130
  assert capsys.readouterr().err == "segbeam model: interrupted\n"


def _tree(folder) -> dict[str, bytes]:
  return {
    str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b""
    for p in sorted(folder.rglob("*"))
  }


@pytest.mark.parametrize("where", ["absolute", "climbing"])
def test_an_unsafe_run_id_is_refused_and_nothing_is_written_outside_the_output(
  where, tiny_export, one_image, tmp_path, capsys
):
  escape = tmp_path / "escaped"
  run_id = str(escape / "x") if where == "absolute" else "../../escaped/x"
  output = tmp_path / "a" / "out"
  code, out, err = _run(
    capsys,
    *("--input", one_image + "/*.png", "--output", str(output), "--model", tiny_export[0]),
    *("--run-id", run_id),
  )
  assert code == 2 and out == "" and len(err.splitlines()) == 1
  assert err.startswith("segbeam run: --run-id") and "letters, digits" in err
  assert not escape.exists() and not output.exists()


def test_overwrite_refuses_a_dataset_folder_and_deletes_nothing(
  tiny_export, one_image, tmp_path, capsys
):
  """A dataset's own masks/ and manifest.json are not a run's: --overwrite leaves them."""
  dataset = tmp_path / "dataset"
  (dataset / "masks").mkdir(parents=True)
  (dataset / "masks" / "cat.png").write_bytes(b"a trimap")
  (dataset / "manifest.json").write_text('{"name": "pets", "files": 7}')
  (dataset / "README").write_text("the pets")
  before = _tree(dataset)
  code, out, err = _run(
    capsys,
    *("--input", one_image + "/*.png", "--output", str(dataset), "--model", tiny_export[0]),
    "--overwrite",
  )
  assert code == 2 and out == "" and len(err.splitlines()) == 1, err
  assert "segbeam did not write" in err
  assert "manifest.json" in err and "masks" in err and "README" in err
  assert _tree(dataset) == before


def test_overwrite_replaces_a_run_but_refuses_files_beside_it(
  small_run, tiny_export, one_image, tmp_path, capsys
):
  output = tmp_path / "out"
  shutil.copytree(small_run, output)
  (output / "notes.txt").write_text("mine")
  argv = ["--input", one_image + "/*.png", "--output", str(output), "--model", tiny_export[0]]
  before = _tree(output)
  code, _, err = _run(capsys, *argv, "--overwrite")
  assert code == 2 and len(err.splitlines()) == 1 and "notes.txt" in err, err
  assert _tree(output) == before
  os.remove(output / "notes.txt")
  code, out, _ = _run(capsys, *argv, "--overwrite")  # an earlier run alone: replaced
  assert code == 0 and "1 inputs, 1 segmented, 0 failed" in out
  accounting.assert_accounted_for(str(output), inputs_seen=1)


def test_the_input_folder_as_output_is_refused(tiny_export, one_image, capsys):
  before = _tree(pathlib.Path(one_image))
  code, out, err = _run(
    capsys, "--input", one_image + "/*", "--output", one_image, "--model", tiny_export[0]
  )
  assert code == 2 and out == "" and len(err.splitlines()) == 1, err
  assert "--output" in err and "input folder" in err
  assert _tree(pathlib.Path(one_image)) == before


def test_an_output_inside_the_inputs_reach_never_reads_its_own_files(
  tiny_export, one_image, capsys
):
  """--input 'in/**' --output in/out: the run's claim, journal and tables are not inputs."""
  output = os.path.join(one_image, "out")
  code, out, err = _run(
    capsys,
    *("--input", one_image + "/**", "--output", output, "--model", tiny_export[0]),
    "--mask-files",
  )
  assert code == 0, err
  assert "1 inputs, 1 segmented, 0 failed" in out
  accounting.assert_accounted_for(output, inputs_seen=1)


def test_segments_files_is_never_more_than_the_inputs(tiny_export, tmp_path, capsys):
  folder = tmp_path / "in"
  folder.mkdir()
  for name in ("a.png", "b.png"):
    (folder / name).write_bytes(synthetic.encode(synthetic.pet_scene(20, 16, 0)[0], "PNG"))
  output = tmp_path / "out"
  argv = ["--input", str(folder / "*.png"), "--output", str(output), "--model", tiny_export[0]]
  code, _, err = _run(capsys, *argv, "--segments-files", "100000")
  assert code == 2 and len(err.splitlines()) == 1 and "--segments-files must be at most" in err
  assert not output.exists()
  code, out, err = _run(capsys, *argv, "--segments-files", "50")
  assert code == 0, err
  manifest = accounting.assert_accounted_for(str(output), inputs_seen=2)
  assert len(os.listdir(output / "segments")) == len(manifest["files"]["segments"]) == 2


@pytest.mark.parametrize("linked", ["output", "input root"])
def test_a_link_does_not_hide_the_output_in_the_input(
  linked, tiny_export, one_image, tmp_path, capsys
):
  """The input folder reached through a link is still the input folder, and the run's own
  files under the pattern's reach are still its own, however either path is spelled."""
  link = tmp_path / "link"
  link.symlink_to(one_image)
  if linked == "output":
    same, deeper, pattern = str(link), str(link / "out"), one_image + "/**"
  else:
    same, deeper, pattern = one_image, os.path.join(one_image, "out"), str(link) + "/**"
  model = ("--model", tiny_export[0])
  code, _, err = _run(capsys, "--input", pattern.replace("**", "*"), "--output", same, *model)
  assert code == 2 and "is the input folder" in err
  code, out, err = _run(capsys, "--input", pattern, "--output", deeper, *model, "--mask-files")
  assert code == 0, err
  assert "1 inputs, 1 segmented, 0 failed" in out
  accounting.assert_accounted_for(deeper, inputs_seen=1)


@pytest.mark.parametrize("folder_part", ["?n", "[i]n", "*", "**"])
def test_an_output_the_patterns_folder_part_matches_is_refused(
  folder_part, tiny_export, one_image, tmp_path, capsys
):
  """--input 'phot?s/*.png' --output photos: the pattern's folder part, read as Beam reads it,
  names the output folder itself, though the part before its first glob character does not."""
  before = _tree(pathlib.Path(one_image))
  pattern = str(tmp_path / folder_part / "*.png")
  code, out, err = _run(
    capsys, "--input", pattern, "--output", one_image, "--model", tiny_export[0]
  )
  assert code == 2 and out == "" and len(err.splitlines()) == 1, err
  assert "--output" in err and "input folder" in err
  assert _tree(pathlib.Path(one_image)) == before


def test_a_new_output_in_a_recursive_patterns_reach_is_not_an_input_folder(
  tiny_export, one_image, tmp_path, capsys
):
  """--input 'data/**/*.png' --output data/out: the folder part matches data/out, but a new
  folder holds no input; the run's own files there are never read."""
  data = tmp_path / "data"
  shutil.copytree(one_image, data / "cats")
  output = str(data / "out")
  argv = ["--input", f"{data}/**/*.png", "--output", output, "--model", tiny_export[0]]
  code, out, err = _run(capsys, *argv, "--mask-files")
  assert code == 0, err
  assert "1 inputs, 1 segmented, 0 failed" in out
  code, out, err = _run(capsys, *argv, "--mask-files", "--overwrite")  # its masks are its own
  assert code == 0 and "1 inputs, 1 segmented, 0 failed" in out, err
  accounting.assert_accounted_for(output, inputs_seen=1)


CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")


def test_names_are_printed_with_their_control_characters_escaped(tiny_export, tmp_path, capsys):
  """An image whose name holds terminal escapes and a carriage return: the report shows them
  escaped, never raw."""
  folder = tmp_path / "in"
  folder.mkdir()
  name = "\x1b]0;pwned\x07cat\r\u202e.png"
  (folder / name).write_bytes(synthetic.encode(synthetic.pet_scene(30, 20, 0)[0], "PNG"))
  output = str(tmp_path / "out")
  code, out, err = _run(
    capsys, "--input", str(folder / "*.png"), "--output", output, "--model", tiny_export[0]
  )
  assert code == 0, err
  assert "1 inputs, 1 segmented" in out
  assert r"\x1b]0;pwned\x07cat\r\u202e.png" in out
  assert not CONTROL.search(out) and not CONTROL.search(err), (out, err)
  # A query's table prints the ids alike.
  assert cli.main(["query", output, "SELECT image_id FROM segments"]) == 0
  shown = capsys.readouterr().out
  assert r"\x1b]0;pwned" in shown and not CONTROL.search(shown), shown


def test_a_refusal_quoting_a_planted_claim_escapes_its_control_characters(
  tiny_export, one_image, tmp_path, capsys
):
  output = tmp_path / "out"
  output.mkdir()
  (output / "_claim.json").write_text(
    json.dumps(
      {
        "run_id": "r\x1b[2J\rowned",
        "started": "\x1b[31mnow",
        "host": "h\x07",
        "pid": 1,
        "command": [],
        "fingerprint": {},
        "attempts": [],
      }
    )
  )
  code, out, err = _run(
    capsys, "--input", one_image + "/*.png", "--output", str(output), "--model", tiny_export[0]
  )
  assert code == 2 and len(err.splitlines()) == 1, err
  assert r"run r\x1b[2J\rowned" in err and not CONTROL.search(err), err


def test_a_tiled_run_accounts_for_every_image(tiny_export, one_image, tmp_path, capsys):
  folder = pathlib.Path(one_image)
  large = synthetic.encode(synthetic.pet_scene(200, 150, 1)[0], "PNG")
  (folder / "large.png").write_bytes(large)
  (folder / "cut.png").write_bytes(large[: len(large) // 2])  # its pixels cut short
  output = str(tmp_path / "out")
  tiles = ["--tile", "64", "--tile-blend", "gaussian"]
  code, out, _ = _run(
    capsys, "--input", f"{one_image}/*.png", "--output", output, "--model", tiny_export[0], *tiles
  )
  assert code == 0 and "3 inputs, 2 segmented, 1 failed" in out
  accounting.assert_accounted_for(output, inputs_seen=3)
  with open(os.path.join(output, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["options"]["tile"] == "64" and manifest["options"]["tile_blend"] == "gaussian"


@pytest.mark.parametrize(
  "extra, words",
  [
    (["--tile", "48"], "--tile 48: the model takes tiles of any multiple of 32"),
    (["--tile", "auto", "--tile-overlap", "32"], "--tile-overlap 32 must be smaller than the tile"),
    (["--scale", "0.5"], "--scale is for tiles: it needs --tile"),
    (["--tile", "64", "--tile-overlap", "-1"], "--tile-overlap must be 0 or more"),
  ],
)
def test_tiles_no_model_can_take_exit_2_before_the_output_is_claimed(
  extra, words, tiny_export, one_image, tmp_path, capsys
):
  output = str(tmp_path / "out")
  code, _, err = _run(
    capsys, "--input", one_image + "/*.png", "--output", output, "--model", tiny_export[0], *extra
  )
  assert code == 2
  assert err.startswith("segbeam run:") and words in err and len(err.splitlines()) == 1
  assert not os.path.exists(output)


def test_an_earlier_run_that_made_masks_another_way_is_neither_skipped_nor_resumed(
  tiny_export, one_image, tmp_path, capsys
):
  """--skip-existing of a run without tiles in a tiled run would keep its resized masks; a
  completed run resumed with other tiles would report what this command did not make."""
  base = ["--input", one_image + "/*.png", "--model", tiny_export[0]]
  earlier = str(tmp_path / "earlier")
  assert _run(capsys, *base, "--output", earlier)[0] == 0
  code, _, err = _run(
    capsys, *base, "--output", str(tmp_path / "new"), "--tile", "auto", "--skip-existing", earlier
  )
  assert code == 2 and len(err.splitlines()) == 1
  assert "its masks were made with --tile None (this run: 'auto')" in err
  code, _, err = _run(capsys, *base, "--output", earlier, "--resume", "--tile", "auto")
  assert code == 2 and len(err.splitlines()) == 1
  assert f"--resume refused: {earlier} holds a completed run, made with --tile None" in err
  code, out, _ = _run(capsys, *base, "--output", earlier, "--resume")
  assert code == 0 and "nothing to resume" in out + _
