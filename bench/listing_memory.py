"""Memory per matched file while a glob is listed: Beam's FileSystems.match against segbeam's
streamed listing.

Beam's `MatchFiles` lists a pattern with `FileSystems.match`, which returns every match's
metadata as one list before the first file is handed on: at 100 million loose image files
that list would be in one worker's memory (docs/capacity-plan.md). segbeam lists its inputs
with `sources.iter_matches` instead, which hands each file on as the file system lists it.
This creates --files empty files in a temporary folder, lists them both ways, and prints the
Python memory each held at its peak (tracemalloc), per file, and the time each took.

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


def _peak(listing) -> tuple[int, float, int]:
  """(files, seconds, peak bytes traced) of running `listing`, which returns a file count."""
  tracemalloc.start()
  started = time.perf_counter()
  files = listing()
  seconds = time.perf_counter() - started
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  return files, seconds, peak


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--files", type=int, default=200_000)
  args = parser.parse_args(argv)
  from apache_beam.io.filesystems import FileSystems

  from segbeam.pipeline import sources

  folder = tempfile.mkdtemp(prefix="segbeam-listing-")
  try:
    for i in range(args.files):  # paths as bench/scale.py names its images
      path = os.path.join(folder, f"{i // 1000:03d}", f"{i:06d}.png")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      open(path, "wb").close()
    pattern = os.path.join(folder, "**", "*.png")
    ways = {
      "FileSystems.match (one list)": lambda: len(FileSystems.match([pattern])[0].metadata_list),
      "sources.iter_matches (streamed)": lambda: sum(1 for _ in sources.iter_matches(pattern)),
    }
    path_length = len(path)
    for name, listing in ways.items():
      files, seconds, peak = _peak(listing)
      assert files == args.files, (name, files)
      print(
        f"{name}: {files:,} files in {seconds:.1f} s, peak memory {peak / 1e6:.1f} MB, "
        f"{peak / files:.0f} bytes per file (paths of {path_length} characters)"
      )
  finally:
    shutil.rmtree(folder)
  return 0


if __name__ == "__main__":
  sys.exit(main())
