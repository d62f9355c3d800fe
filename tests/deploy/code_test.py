"""The segbeam code a worker image holds: a digest of the installed package's files (its .py
files and the embedded default model), named in the image's tag, checked by the image's build
and by `segbeam submit` (tests/deploy/submit_test.py)."""

import os
import shutil
import subprocess
import sys

import pytest

from segbeam import versions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "segbeam")


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
  """A copy of segbeam/ as an install holds it, to change without touching the checkout."""
  copy = tmp_path_factory.mktemp("code") / "segbeam"
  shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
  return copy


def _changed(package, change) -> bool:
  """Whether `change` (a function of the package folder) changes the code digest; the folder
  is restored afterwards."""
  scratch = package.parent / "scratch"
  shutil.copytree(package, scratch)
  try:
    before = versions.code_digest(str(scratch))
    change(scratch)
    return versions.code_digest(str(scratch)) != before
  finally:
    shutil.rmtree(scratch)


def test_the_digest_is_the_checkouts_and_names_the_version(package_copy):
  tag = versions.code_tag()
  assert tag == f"segbeam-0.2.0-{versions.code_digest()[:16]}"
  assert versions.package_version() == "0.2.0"
  assert versions.code_digest(str(package_copy)) == versions.code_digest()  # bytes, not paths


def _append(path, data=b"\n# changed\n"):
  def change(package):
    with open(package / path, "ab") as f:
      f.write(data)

  return change


def _write(path, data=b"x = 1\n"):
  def change(package):
    (package / path).parent.mkdir(parents=True, exist_ok=True)
    (package / path).write_bytes(data)

  return change


@pytest.mark.parametrize(
  "change",
  [
    _append("commands/submit.py"),
    _append("__init__.py"),
    _write("pipeline/new_module.py"),
    # What the workers load without --model, and whose metadata submit reads.
    _append("model/default_model/segbeam_model.json", b" "),
    _append("model/default_model/variables/variables.index", b"\0"),
    lambda package: os.rename(package / "model/layers.py", package / "model/layers2.py"),
  ],
)
def test_what_an_install_holds_changes_the_digest(package_copy, change):
  assert _changed(package_copy, change)


@pytest.mark.parametrize(
  "change",
  [
    _write("commands/__pycache__/submit.cpython-311.pyc", b"\0\0"),
    _write("pipeline/notes.txt", b"not installed"),
    # A folder without __init__.py is no package: setup.py's find_packages leaves it out.
    _write("scratch_dir/tool.py"),
  ],
)
def test_what_an_install_leaves_out_does_not(package_copy, change):
  assert not _changed(package_copy, change)


@pytest.mark.parametrize(
  "image,named",
  [
    (
      "r-docker.pkg.dev/p/segbeam/worker:segbeam-0.2.0-0123456789abcdef",
      "segbeam-0.2.0-0123456789abcdef",
    ),
    (
      "localhost:5000/w:2026-11-22-segbeam-0.2.0-0123456789abcdef",
      "segbeam-0.2.0-0123456789abcdef",
    ),
    (
      "w:segbeam-0.2.0-0123456789abcdef@sha256:" + "a" * 64,
      "segbeam-0.2.0-0123456789abcdef",
    ),
    ("localhost:5000/segbeam-0.2.0-0123456789abcdef", None),  # a port and a path, no tag
    ("w:latest", None),
    ("w@sha256:" + "a" * 64, None),
    ("w:segbeam-0.2.0-0123456789ABCDEF", None),
    ("w:xsegbeam-0.2.0-0123456789abcdef", None),
  ],
)
def test_the_code_an_image_tag_names(image, named):
  assert versions.image_code_tag(image) == named


def _check_image(image):
  return subprocess.run(
    [sys.executable, "-m", "segbeam.versions", "--check-image", image],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )


def test_the_image_build_refuses_a_tag_that_names_other_code():
  """What deploy/Dockerfile runs after installing segbeam: the image it is told it builds must
  be tagged with the code it installed, or the build stops."""
  ok = _check_image(f"r-docker.pkg.dev/p/segbeam/worker:{versions.code_tag()}")
  assert ok.returncode == 0 and ok.stdout == versions.code_tag() + "\n"
  for image in ("worker:segbeam-0.2.0-0123456789abcdef", "worker:latest", ""):
    refused = _check_image(image)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert f"tag it :{versions.code_tag()}" in refused.stderr, refused.stderr


def test_the_tag_is_printed_from_the_checkout_without_its_dependencies():
  """docs/dataflow.md tags the image with `python3 -m segbeam.versions`, run in the checkout
  with any Python: it needs nothing but the standard library."""
  out = subprocess.run(
    [sys.executable, "-S", "-m", "segbeam.versions"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert out == versions.code_tag() + "\n"
