"""Whether two `segbeam run` outputs hold the same rows, bit for bit: a change's before and after.

Reads OUTPUT/segments and OUTPUT/errors of both runs, matches rows by image_id and compares
every column but run_id exactly (floats by value, masks by their PNG bytes); where the PNG
bytes differ, it also compares the decoded masks. Prints one line per table and per column
that differs, and exits 1 when anything does.

  python bench/compare_runs.py BEFORE_OUTPUT AFTER_OUTPUT
"""

from __future__ import annotations

import argparse
import io
import os
import sys

IGNORED = ("run_id",)


def read_rows(output: str, table: str) -> dict[str, dict]:
  import pyarrow.dataset as ds

  folder = os.path.join(output, table)
  try:
    rows = ds.dataset(folder, format="parquet").to_table().to_pylist()
  except FileNotFoundError:
    return {}
  return {row["image_id"]: row for row in rows}


def same_mask(a: bytes, b: bytes) -> bool:
  import numpy as np
  from PIL import Image

  return np.array_equal(
    np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(io.BytesIO(b)))
  )


def compare(before: str, after: str) -> list[str]:
  differences = []
  from segbeam.pipeline import layout

  for table in (layout.SEGMENTS_DIR, layout.ERRORS_DIR):
    old, new = read_rows(before, table), read_rows(after, table)
    if old.keys() != new.keys():
      differences.append(
        f"{table}: {len(old.keys() - new.keys())} rows only before, "
        f"{len(new.keys() - old.keys())} only after"
      )
    by_column: dict[str, int] = {}
    masks_differ = 0
    for image_id in old.keys() & new.keys():
      for column in old[image_id].keys() | new[image_id].keys():
        if column in IGNORED:
          continue
        a, b = old[image_id].get(column), new[image_id].get(column)
        if a != b:
          by_column[column] = by_column.get(column, 0) + 1
          if column == "mask_png" and a and b and not same_mask(a, b):
            masks_differ += 1
    for column, count in sorted(by_column.items()):
      note = f" ({masks_differ} decode to different masks)" if column == "mask_png" else ""
      differences.append(f"{table}.{column}: differs in {count} rows{note}")
    print(f"{table}: {len(old)} rows before, {len(new)} after, {len(by_column)} columns differ")
  return differences


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("before")
  parser.add_argument("after")
  args = parser.parse_args(argv)
  differences = compare(args.before, args.after)
  for line in differences:
    print(line)
  print("identical" if not differences else "DIFFERENT")
  return 1 if differences else 0


if __name__ == "__main__":
  sys.exit(main())
