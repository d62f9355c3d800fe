"""`segbeam summary` of an unfinished folder whose claim was planted: what it prints is safe to
print, and its resume hint hands over no trust the user did not choose."""

import json
import re

from segbeam import cli
from segbeam.pipeline import layout
from segbeam.results import output as output_lib

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")


def _plant(output, command) -> None:
  output.mkdir()
  (output / layout.CLAIM_FILE).write_text(
    json.dumps(
      {
        "run_id": "r\x1b[2J\x1b[H",
        "started": "now\r",
        "host": "h\x1b]0;title\x07",
        "pid": 1,
        "command": command,
        "fingerprint": {},
        "attempts": [{"run_id": "r", "started": "now"}],
      }
    )
  )


def test_summary_of_a_planted_claim_prints_no_control_character(tmp_path, capsys):
  output = tmp_path / "out"
  _plant(output, ["segbeam", "run", "--input", "in/\x1b[8m*.png", "--output", "out\r"])
  assert cli.main(["summary", str(output)]) == 2
  text = capsys.readouterr()
  assert not CONTROL.search(text.out + text.err), text
  assert r"run r\x1b[2J\x1b[H, started now\r on h\x1b]0;title\x07" in text.out, text.out
  assert r"in/\x1b[8m*.png" in text.out


def test_the_resume_hint_leaves_trust_model_to_the_user_and_says_so(tmp_path, capsys):
  output = tmp_path / "out"
  model = "/tmp/attacker/model"
  _plant(output, ["segbeam", "run", "--output", str(output), "--model", model, "--trust-model"])
  left = output_lib.unfinished(str(output))
  assert "--trust-model" not in left.resume_command()
  assert model in left.resume_command() and "--resume" in left.resume_command()
  assert cli.main(["summary", str(output)]) == 2
  lines = capsys.readouterr().out.splitlines()
  (hint,) = [line for line in lines if line.startswith("continue it with:")]
  assert "--trust-model" not in hint and hint.endswith("--resume"), hint
  assert any("--trust-model" in line and "not checked" in line for line in lines), lines
