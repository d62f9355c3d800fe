"""Label files found folder by folder (`label_files.LabelFolders`) on the local runner."""

from __future__ import annotations

import collections
import contextlib
import os
import threading

import pytest

from segbeam.pipeline import label_files
from segbeam.pipeline import sources


def _touch(root, *names):
  for name in names:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(b"x")


@pytest.mark.parametrize("pattern", ["**/*.png", "*/*.png", "**", "*.png", "cats/*", "*/t*"])
def test_folder_by_folder_finds_what_the_whole_listing_finds(tmp_path, pattern):
  root = str(tmp_path / "labels")
  _touch(root, "felix.png", "cats/tom.png", "cats/tom.txt", "cats/deep/tom.png", "dogs/rex.png")
  glob = os.path.join(root, pattern)
  whole = collections.defaultdict(list)
  for metadata in sources.iter_matches(glob):
    key, path = label_files.label_entry(metadata, sources.pattern_root(glob))
    whole[key].append(path)
  labels = label_files.LabelFolders(glob)
  keys = ["felix", "cats/tom", "cats/deep/tom", "dogs/rex", "dogs/nobody", "nowhere/rex"]
  assert {k: labels.paths(k) for k in keys} == {k: sorted(whole.get(k, [])) for k in keys}
  assert any(whole.values())


def test_two_label_files_for_one_key_are_both_returned(tmp_path):
  root = str(tmp_path / "labels")
  _touch(root, "a/felix.png", "a/felix.jpg")
  labels = label_files.LabelFolders(os.path.join(root, "*", "*"))
  assert labels.paths("a/felix") == sorted(
    [os.path.join(root, "a", "felix.png"), os.path.join(root, "a", "felix.jpg")]
  )


def test_only_a_few_folders_are_kept_and_any_order_is_still_right(tmp_path):
  root = str(tmp_path / "labels")
  _touch(root, *[f"{d:02d}/{i}.png" for d in range(20) for i in range(3)])
  labels = label_files.LabelFolders(os.path.join(root, "**", "*.png"), keep=4)
  for _ in range(2):
    for d in [5, 17, 0, 5, 19, 3, 11, 5]:
      for i in range(3):
        assert labels.paths(f"{d:02d}/{i}") == [os.path.join(root, f"{d:02d}", f"{i}.png")]
      assert len(labels._folders) <= 4


@pytest.mark.parametrize("pattern", ["**/*.png", "*.png", "**", "*/*.png"])
def test_a_key_that_climbs_out_of_the_root_matches_nothing(tmp_path, pattern):
  """Keys come from input data (a tf.Example's filename): only label files of the pattern's
  own listing may match, never a path joined from a key."""
  root = str(tmp_path / "labels")
  _touch(root, "cat.png", "a/cat.png")
  _touch(str(tmp_path), "secret/cat.png", "labels2/cat.png")
  labels = label_files.LabelFolders(os.path.join(root, pattern))
  hostile = [
    "../secret/cat",
    "a/../../secret/cat",
    "../labels2/cat",
    str(tmp_path / "secret" / "cat"),
    "..\\secret\\cat",
    "a\\..\\..\\secret\\cat",
    "./cat",
    "a//cat",
    "a/./cat",
    "cat\0",
    "a/../cat",
  ]
  for key in hostile:
    assert labels.paths(key) == [], key
  assert labels.paths("cat") or labels.paths("a/cat")  # the root's own labels still match


def test_a_tf_example_whose_filename_climbs_out_is_scored_as_having_no_label(
  tiny_export, tmp_path, capsys
):
  """A real run: shards whose records name '../secret/cat.jpg' and '/abs/.../cat.jpg', with a
  label planted at each place; only the record named inside the root gets a score."""
  import pyarrow.parquet as pq  # noqa: PLC0415

  from segbeam import cli  # noqa: PLC0415
  from tests import accounting  # noqa: PLC0415
  from tests import synthetic  # noqa: PLC0415
  from tests.pipeline import hostile_corpus as corpus  # noqa: PLC0415

  image, trimap = synthetic.pet_scene(24, 20, 0)
  jpeg, png = synthetic.encode(image, "JPEG"), synthetic.encode(trimap, "PNG")
  labels, secret = tmp_path / "labels", tmp_path / "secret"
  (labels / "sub").mkdir(parents=True)
  secret.mkdir()
  for folder in (labels / "sub", secret):
    (folder / "cat.png").write_bytes(png)
  (labels / "sub" / "cat.png").write_bytes(png)
  shards = tmp_path / "shards"
  shards.mkdir()
  names = ["sub/cat.jpg", "../secret/cat.jpg", "sub/../../secret/cat.jpg", f"{secret}/cat.jpg"]
  (shards / "train.tfrecord").write_bytes(corpus.shard([corpus.example(n, jpeg) for n in names]))
  output = tmp_path / "out"
  code = cli.main(
    [
      "run",
      *("--input", str(shards / "*.tfrecord"), "--output", str(output)),
      *("--model", tiny_export[0], "--ground-truth", str(labels / "**" / "*.png")),
    ]
  )
  assert code == 0, capsys.readouterr().err
  accounting.assert_accounted_for(str(output), inputs_seen=len(names))
  rows = pq.read_table(str(output / "segments")).to_pylist()
  scored = {row["filename"]: row["gt_pixels"] is not None for row in rows}
  assert scored == {name: name == "sub/cat.jpg" for name in names}


def _read_label_in_time(paths, *args, seconds: float = 30):
  """`read_label(paths, *args)`, run where a read that blocks cannot hang the test."""
  result = []
  reader = threading.Thread(
    target=lambda: result.append(label_files.read_label(paths, *args)), daemon=True
  )
  reader.start()
  reader.join(seconds)
  return result[0] if result else None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks (POSIX)")
def test_a_label_that_is_not_a_regular_file_is_an_error_never_opened(tmp_path):
  fifo, dangling, loop = tmp_path / "fifo.png", tmp_path / "dangling.png", tmp_path / "loop.png"
  os.mkfifo(fifo)
  os.symlink(str(tmp_path / "nowhere.png"), dangling)
  os.symlink("loop.png", loop)
  try:
    label, error = _read_label_in_time([str(fifo)]) or (None, "blocked on the FIFO")
  finally:
    with contextlib.suppress(OSError):  # a reader still blocked on the FIFO: let it go
      os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
  assert label is None and "is not a regular file (mode prw" in error, error
  for path in (dangling, loop):
    label, error = label_files.read_label([str(path)])
    assert label is None and error.startswith(f"cannot read label: cannot stat {path}"), error


def test_a_label_over_the_file_limit_is_an_error_read_no_further(tmp_path):
  (tmp_path / "big.png").write_bytes(b"x" * 101)
  (tmp_path / "fits.png").write_bytes(b"x" * 100)
  label, error = label_files.read_label([str(tmp_path / "big.png")], 100)
  assert label is None and "over the 100-byte file limit" in error, error
  assert label_files.read_label([str(tmp_path / "fits.png")], 100) == (b"x" * 100, None)


def test_label_errors_quoting_names_that_are_not_utf8_encode(tmp_path):
  odd = os.fsdecode(str(tmp_path).encode() + b"/a.\xff")
  with open(odd, "wb") as f:
    f.write(b"x")
  _, error = label_files.read_label([str(tmp_path / "a.png"), odd])
  assert error.encode("utf-8") and "a.\\xff" in error, error
  os.remove(odd)
  os.symlink("nowhere", odd)
  _, error = label_files.read_label([odd])
  assert error.encode("utf-8") and "a.\\xff" in error, error
