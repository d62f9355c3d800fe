"""Progress while a run goes: the figures' line, and a real local run reporting as it goes."""

import io
import re
import time

import pytest

from segbeam import options as options_lib
from segbeam.commands import run as run_command
from segbeam.pipeline import progress
from segbeam.pipeline import sources
from tests import synthetic


@pytest.mark.parametrize(
  "counts,rate,line",
  [
    (
      {"inputs_listed": 4500, "inputs_seen": 1300, "segmented": 1197, "failed": 1},
      85.1,
      "1,198 of 4,500 images (27%), 1 failed, 85.1 img/s, about 39 s left",
    ),
    (
      {"inputs_listed": 400_000, "inputs_seen": 10, "segmented": 4, "skipped_existing": 6},
      20.0,
      "10 of 400,000 images (0%), 0 failed, 20.0 img/s, about 5 h 33 min left",
    ),
    (
      {"inputs_listed": 10, "segmented": 9, "failed_validate": 1},
      50.0,
      "10 of 10 images (100%), 1 failed, 50.0 img/s",
    ),
    (
      {"inputs_seen": 700, "segmented": 600, "failed_read": 1, "failed_validate": 2},
      None,
      "603 images done of 700 read so far (the total is counted as they are read), 3 failed",
    ),
    (
      {"inputs_listed": 1, "inputs_seen": 1, "tiles_cut": 10_816, "tiles_inferred": 4_100},
      None,
      "0 of 1 images (0%), 0 failed, 4,100 of 10,816 tiles inferred",
    ),
  ],
)
def test_the_progress_line(counts, rate, line):
  assert progress.Figures.from_counts(counts, rate).line() == line


def _photos(folder, count):
  folder.mkdir()
  image, _ = synthetic.pet_scene(40, 30, seed=1)
  data = synthetic.encode(image, "JPEG")
  for i in range(count):
    (folder / f"photo_{i:03d}.jpg").write_bytes(data)
  (folder / "notes.jpg").write_bytes(b"not an image")
  return count + 1


def _listed(pattern, input_format="auto"):
  """(files listed, the total counted) by ListFiles, counting first and as it goes."""
  found = set()
  for count_first in (True, False):
    progress.reset_tally()
    files = list(sources.ListFiles(input_format, count_first=count_first).process(pattern))
    found.add((len(files), progress.tally().get(progress.LISTED)))
  (result,) = found  # the same both ways
  return result


def test_the_listing_gives_the_total_only_where_every_match_is_an_image(tmp_path):
  inputs = _photos(tmp_path / "in", 3)
  pattern = str(tmp_path / "in" / "*")
  assert _listed(pattern) == (inputs, inputs)
  (tmp_path / "in" / "train-00000-of-00001").write_bytes(b"")  # may be a shard: unknown
  assert _listed(pattern) == (inputs + 1, None)
  assert _listed(pattern, "images") == (inputs + 1, inputs + 1)
  assert _listed(str(tmp_path / "in" / "*.jpg"), "tfrecord") == (inputs, None)


def test_a_local_run_prints_its_progress_as_it_goes(tiny_export, tmp_path, monkeypatch, capsys):
  """`segbeam run` in this process, its stderr a pipe (not a terminal): a line every
  LOG_EVERY seconds, the images done growing to all of them; --quiet prints none."""
  inputs = _photos(tmp_path / "in", 150)
  monkeypatch.setattr(progress.Reporter, "LOG_EVERY", 0.2)
  argv = ["--input", str(tmp_path / "in" / "*.jpg"), "--model", tiny_export[0]]
  options, beam_args = options_lib.parse_args([*argv, "--output", str(tmp_path / "out")])
  assert run_command.run(options, beam_args) == 0
  lines = [
    line for line in capsys.readouterr().err.splitlines() if re.match(r"[\d,]+ of \d+ images", line)
  ]
  assert lines, "no progress line"
  done = [int(line.split(" of ")[0].replace(",", "")) for line in lines]
  assert done == sorted(done) and all(f" of {inputs} images" in line for line in lines)
  figures = progress.Figures.from_counts(progress.tally())
  assert (figures.total, figures.done, figures.seen, figures.failed) == (inputs, inputs, inputs, 1)

  options, beam_args = options_lib.parse_args(
    [*argv, "--output", str(tmp_path / "quiet"), "--quiet"]
  )
  assert run_command.run(options, beam_args) == 0
  assert not re.search(r"images \(\d+%\)", capsys.readouterr().err)


def test_a_terminal_gets_one_line_rewritten():
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  stream = Terminal()
  with progress.Reporter(stream, every=0.01):
    progress.Counter(progress.LISTED).inc(5)
    progress.Counter(progress.SEGMENTED).inc(5)
    while "5 of 5" not in stream.getvalue():
      time.sleep(0.01)
  text = stream.getvalue()
  assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
