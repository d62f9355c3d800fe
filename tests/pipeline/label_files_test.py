"""Label files found folder by folder (`label_files.LabelFolders`) on the local runner."""

from __future__ import annotations

import collections
import os

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
