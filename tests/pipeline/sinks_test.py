import os
import re

import pytest

from segbeam.pipeline import sinks

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.[0-9a-f]{12}\.png$")


@pytest.mark.parametrize("image_id", [
    "cat.jpg", "../../etc/passwd", "/abs/path/x.png", "a\0b.jpg", "x" * 1000, "", "..",
    "dir/sub/photo 1.jpg", "C:\\windows\\x.jpg", "émoji-🐱.png", "-rf", ".hidden"])
def test_mask_file_names_never_leave_the_folder(image_id, tmp_path):
  name = sinks.mask_file_name(image_id)
  assert SAFE.match(name), name
  assert len(name) <= 120
  target = os.path.realpath(tmp_path / name)
  assert os.path.dirname(target) == os.path.realpath(tmp_path)


def test_similar_ids_get_different_names():
  assert sinks.mask_file_name("a/b.jpg") != sinks.mask_file_name("a_b.jpg")
  assert sinks.mask_file_name("a/b.jpg") == sinks.mask_file_name("a/b.jpg")


def test_manifest_counts_and_conservation():
  manifest = sinks.build_manifest(
      {"run_id": "r"}, seen=5, segmented=3,
      failures=[(("validate", "PixelCapExceeded"), 1), (("read", "CorruptRecord"), 1)],
      segment_files=["s2", "s1"], error_files=["e"], masks_written=3)
  assert manifest["counts"]["failed"] == 2
  assert manifest["counts"]["failed_by_stage"] == {"read": 1, "validate": 1}
  assert manifest["conservation"]["holds"]
  assert manifest["files"] == {"segments": ["s1", "s2"], "errors": ["e"], "masks": 3}
  assert not sinks.build_manifest({}, seen=6, segmented=3, failures=[], segment_files=[],
                                  error_files=[])["conservation"]["holds"]
