"""The `segbeam` command end to end on temporary folders."""

import json
import os
import shutil
import subprocess
import sys

from segbeam import cli


def test_console_script_lists_architectures():
  # The script installed beside this interpreter, as in the virtual environment's bin/.
  segbeam = shutil.which("segbeam", path=os.path.dirname(sys.executable))
  assert segbeam, "the segbeam console script is not installed"
  out = subprocess.run([segbeam, "model", "list"], check=True, capture_output=True, text=True)
  assert [line.split()[0] for line in out.stdout.splitlines()] == [
    "mobilenetv2",
    "resnet34",
    "vgg16",
  ]


def test_model_summary_answers_what_trains(capsys):
  assert cli.main(["model", "summary", "--encoder-trainable", "frozen", "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["keras"] == {"total": 6_504_227, "trainable": 4_660_323, "non_trainable": 1_843_904}
  assert any("fixed random feature extractor" in note for note in report["notes"])


def test_model_summary_of_an_export(tiny_export, capsys):
  export_dir, metadata = tiny_export
  assert cli.main(["model", "summary", "--model", export_dir]) == 0
  out = capsys.readouterr().out
  assert metadata.version in out and "decoder_block_4" in out


def test_train_then_evaluate(pet_folder, tmp_path, capsys):
  images, masks, _ = pet_folder
  output = tmp_path / "run"
  assert (
    cli.main(
      [
        "train",
        "--images",
        images,
        "--masks",
        masks,
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--val-fraction",
        "0.4",
        "--output",
        str(output),
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert (
    cli.main(
      [
        "evaluate",
        "--model",
        str(output / "export"),
        "--images",
        images,
        "--masks",
        masks,
        "--json",
      ]
    )
    == 0
  )
  result = json.loads(capsys.readouterr().out)
  assert result["images"] == 6 and 0.0 <= result["pixel_accuracy"] <= 1.0


def test_bad_invocation_is_one_line_and_exit_2(tmp_path, capsys):
  assert (
    cli.main(
      ["evaluate", "--model", str(tmp_path), "--images", str(tmp_path), "--masks", str(tmp_path)]
    )
    == 2
  )
  err = capsys.readouterr().err.strip()
  assert err.startswith("segbeam evaluate:") and "not a segbeam export" in err
  assert len(err.splitlines()) == 1


def test_help_runs_without_tensorflow():
  code = (
    "import sys; from segbeam import cli; cli.build_parser(); sys.exit('tensorflow' in sys.modules)"
  )
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0
