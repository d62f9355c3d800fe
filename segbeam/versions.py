"""The versions segbeam's worker image pins: Python, Beam and TensorFlow; and the segbeam code it
holds.

One place for deploy/Dockerfile (whose ARGs tests/deploy/deploy_test.py holds to these),
constraints.txt (the exact, tested set of packages, which pins this Beam and TensorFlow; the same
test checks it, and scripts/update-constraints.sh reads them here) and `segbeam submit`, which
refuses to submit from a machine whose versions differ: Beam documents that a job submitted with
another Python than its workers' fails right after submission. setup.py declares ranges that
admit these.

The code: `segbeam submit` pickles the job with this machine's segbeam and the workers unpickle
it with the image's, and without --model they load the image's copy of the default model whose
metadata submit read here. So the image is tagged with a digest of the code it holds
(`code_tag`, printed by `python3 -m segbeam.versions` in the checkout), its build checks the tag
against what it installed (`--check-image`), and submit compares the tag with its own code.

Imports only the standard library: it runs in a checkout whose dependencies are not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from typing import Optional, Sequence

PYTHON_VERSION = "3.11"
BEAM_VERSION = "2.77.0"
TENSORFLOW_VERSION = "2.21.0"

# The embedded default model, relative to the package: setup.py installs every file of it.
_DEFAULT_MODEL = os.path.join("model", "default_model")
# 64 bits of the digest in the tag: enough to tell two checkouts apart, short enough to read.
_TAG_DIGEST_CHARS = 16
# The code's name in an image tag, anywhere at its end: 'segbeam-0.2.0-0123456789abcdef'.
_CODE_IN_TAG = re.compile(r"(?:^|[._-])(segbeam-[0-9A-Za-z._-]+-[0-9a-f]{16})$")
_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.M)


def package_dir() -> str:
  """The segbeam package this module belongs to (the checkout's, or site-packages')."""
  return os.path.dirname(os.path.abspath(__file__))


def package_version(package: Optional[str] = None) -> str:
  """segbeam's __version__, read from the package's __init__.py without importing it."""
  with open(os.path.join(package or package_dir(), "__init__.py"), encoding="utf-8") as f:
    match = _VERSION.search(f.read())
  return match.group(1) if match else "unknown"


def code_files(package: Optional[str] = None) -> list[tuple[str, str]]:
  """(path relative to the package, with '/', absolute path) of every file an install of the
  package holds, sorted: the .py files of its packages (folders with __init__.py, as setup.py's
  find_packages takes them) and every file of the embedded default model (its package_data)."""
  package = package or package_dir()
  found = []
  for folder, folders, files in os.walk(package):
    relative = os.path.relpath(folder, package)
    in_model = relative == _DEFAULT_MODEL or relative.startswith(_DEFAULT_MODEL + os.sep)
    if not in_model and "__init__.py" not in files:
      folders[:] = []  # not a package, so neither is anything below it
      continue
    folders[:] = [name for name in folders if name != "__pycache__"]
    for name in files:
      if in_model or name.endswith(".py"):
        path = os.path.join(folder, name)
        found.append((os.path.relpath(path, package).replace(os.sep, "/"), path))
  return sorted(found)


def code_digest(package: Optional[str] = None) -> str:
  """sha256 (hex) over the package's installed files (`code_files`): each one's relative path,
  length and bytes, in order."""
  digest = hashlib.sha256()
  for relative, path in code_files(package):
    with open(path, "rb") as f:
      data = f.read()
    digest.update(relative.encode("utf-8") + b"\0")
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)
  return digest.hexdigest()


def code_tag(package: Optional[str] = None) -> str:
  """The image tag that names this code: 'segbeam-VERSION-DIGEST16'."""
  return f"segbeam-{package_version(package)}-{code_digest(package)[:_TAG_DIGEST_CHARS]}"


def image_code_tag(image: str) -> Optional[str]:
  """The code an image reference's tag names (`code_tag`'s form, at the tag's end, after an
  optional prefix such as a date), or None: no tag, or a tag that names no code."""
  name = image.split("@", 1)[0]  # a digest (@sha256:...) pins the image, not the code
  last = name.rsplit("/", 1)[-1]
  if ":" not in last:
    return None
  match = _CODE_IN_TAG.search(last.rsplit(":", 1)[1])
  return match.group(1) if match else None


def check_image_tag(image: str, package: Optional[str] = None) -> str:
  """This code's tag; raises ValueError when `image`'s tag does not name it."""
  tag = code_tag(package)
  if not image:  # deploy/Dockerfile's SEGBEAM_IMAGE not given
    raise ValueError(
      "no image named: build with --build-arg SEGBEAM_IMAGE=IMAGE, the image's name, and "
      f"tag it :{tag} (docs/dataflow.md, Build and push the image)"
    )
  named = image_code_tag(image)
  if named != tag:
    found = f"names {named}" if named else "names no segbeam code"
    raise ValueError(
      f"the image {image!r}: its tag {found}, but the image holds {tag}; tag it :{tag} "
      "(docs/dataflow.md, Build and push the image)"
    )
  return tag


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m segbeam.versions",
    description="Print the image tag that names this segbeam code.",
  )
  parser.add_argument(
    "--check-image",
    metavar="IMAGE",
    help="exit 1 unless IMAGE's tag names this code (deploy/Dockerfile runs it)",
  )
  args = parser.parse_args(argv)
  if args.check_image is None:
    print(code_tag())
    return 0
  try:
    print(check_image_tag(args.check_image))
  except ValueError as error:
    print(f"segbeam: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
