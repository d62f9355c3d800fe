"""What a kill loses: `segbeam run` killed with SIGKILL three times, then resumed with --resume.

Generated small PNGs, the null model of `bench/null_model.py`, --mask-files. The kill points
come from a fixed seed, as in tests/run/crash_resume_test.py: early, middle, and once every
row is in the journal (during the final write). At each kill it counts the rows the journal
made durable and the mask files written: a mask is written as its row leaves the journal step,
so masks without a durable row are images the killed attempt finished that the resume does
again (images still in inference at the kill are redone too and not counted here; the bound
printed adds them). The last lines give the final manifest's attempts and conservation.

  python bench/kill_resume.py [--images 3000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import null_model  # the null export

SEED = 24


def _journaled_rows(output: str, seen: dict) -> int:
  import pyarrow.parquet as pq

  for path in glob.glob(os.path.join(output, "_journal", "*", "*.parquet")):
    if path not in seen:
      seen[path] = pq.read_metadata(path).num_rows
  return sum(seen.values())


def _masks(output: str) -> int:
  return len(glob.glob(os.path.join(output, "masks", "*.png")))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=3000)
  parser.add_argument("--batch-size", type=int, default=32)
  args = parser.parse_args(argv)
  import numpy as np
  from PIL import Image

  work = tempfile.mkdtemp(prefix="segbeam-kill-")
  inputs = os.path.join(work, "in")
  os.makedirs(inputs)
  rng = np.random.default_rng(0)
  for i in range(args.images):
    pixels = rng.integers(0, 256, (24 + i % 9, 24 + i % 7, 3), np.uint8)
    Image.fromarray(pixels).save(os.path.join(inputs, f"{i:05d}.png"))
  model = os.path.join(work, "null-export")
  null_model.write_null_export(model)
  output = os.path.join(work, "out")
  segbeam = [sys.executable, "-m", "segbeam", "run"]
  command = [
    *segbeam,
    *("--input", os.path.join(inputs, "*.png"), "--output", output, "--model", model),
    *("--batch-size", str(args.batch_size), "--mask-files", "--quiet"),
  ]
  total = args.images
  pick = random.Random(SEED)
  kill_at = [
    ("early", pick.randint(total // 20, total // 5)),
    ("middle", pick.randint(2 * total // 5, 3 * total // 5)),
    ("final write", total),
  ]
  print(f"{total:,} images, --batch-size {args.batch_size}, kills at {kill_at}")
  for attempt, (when, rows) in enumerate(kill_at):
    argv_now = command if attempt == 0 else [*command, "--resume"]
    process = subprocess.Popen(argv_now, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict = {}
    before = _journaled_rows(output, seen)
    while _journaled_rows(output, seen) < rows and process.poll() is None:
      time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode not in (0, -signal.SIGKILL):
      print(process.stderr.read().decode()[-2000:])
      return 1
    durable, masks = _journaled_rows(output, seen), _masks(output)
    finished = os.path.exists(os.path.join(output, "manifest.json"))
    print(
      f"kill {attempt + 1} ({when}): {durable:,} rows durable ({durable - before:,} by this "
      f"attempt), {masks:,} masks written: {max(masks - durable, 0):,} images done but not "
      f"durable, redone by the resume" + (" (the run had finished)" if finished else "")
    )
  started = time.perf_counter()
  done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
  if done.returncode != 0:
    print(done.stderr[-2000:])
    return 1
  with open(os.path.join(output, "manifest.json")) as f:
    manifest = json.load(f)
  print(
    f"resumed in {time.perf_counter() - started:.1f} s: attempts "
    f"{len(manifest['attempts'])}, from earlier attempts "
    f"{manifest['counts']['from_earlier_attempts']:,}, segmented "
    f"{manifest['counts']['segmented']:,} of {manifest['counts']['inputs_seen']:,}, "
    f"conservation holds: {manifest['conservation']['holds']}"
  )
  b = args.batch_size
  print(
    f"in flight per worker thread at most: a batch being assembled and one in inference "
    f"({2 * b}), two being postprocessed ({2 * b}), fewer than {2 * b} rows not yet in a "
    f"journal file: under {6 * b} images"
  )
  print(f"files in {work}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
