"""Memory per matched file while Beam lists a glob: what MatchFiles holds in one worker.

Beam's MatchFiles lists a pattern in one call (`FileSystems.match`), which returns every
match's metadata as one list before the first is handed on; at 100 million loose image
files that list is in one worker's memory (docs/capacity-plan.md). This creates --files
empty files in a temporary folder, lists them as MatchFiles does, and prints the Python
memory the listing held at its peak (tracemalloc) per file, and the listing's time.

  python bench/listing_memory.py [--files 200000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--files", type=int, default=200_000)
  args = parser.parse_args(argv)
  from apache_beam.io.filesystems import FileSystems

  folder = tempfile.mkdtemp(prefix="segbeam-listing-")
  try:
    for i in range(args.files):  # paths as bench/scale.py names its images
      path = os.path.join(folder, f"{i // 1000:03d}", f"{i:06d}.png")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      open(path, "wb").close()
    tracemalloc.start()
    started = time.perf_counter()
    (result,) = FileSystems.match([os.path.join(folder, "**", "*.png")])
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(result.metadata_list) == args.files, len(result.metadata_list)
    path_length = len(result.metadata_list[0].path)
  finally:
    shutil.rmtree(folder)
  print(
    f"{args.files:,} files listed in {seconds:.1f} s; peak memory of the listing "
    f"{peak / 1e6:.1f} MB, {peak / args.files:.0f} bytes per file (paths of {path_length} "
    "characters)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
