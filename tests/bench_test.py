"""bench/gpu_check.sh, the script a session lent a GPU runs: its syntax, and its CPU fallback end
to end on a few generated photos (the forward pass, the null model, segbeam run, the table)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


def test_gpu_check_parses():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_gpu_check_cpu_fallback_prints_its_table(pet_folder):
  images, _, _ = pet_folder
  env = dict(
    os.environ,
    PYTHON=sys.executable,
    PATH="/usr/bin:/bin",  # no nvidia-smi: the CPU fallback, whatever the machine
    GPU_CHECK_IMAGES="8",
    GPU_CHECK_THREADS="1",
    GPU_CHECK_FORWARD_SECONDS="0.5",
    GPU_CHECK_PHOTOS=images,
  )
  out = subprocess.run(
    ["bash", SCRIPT], cwd=ROOT, env=env, check=True, capture_output=True, text=True
  ).stdout
  assert "mode cpu, 8 images" in out
  rows = [line for line in out.splitlines() if line.startswith("| ")]
  assert rows[0] == "| what | setting | img/s | notes |"
  assert any(r.startswith("| forward pass alone | batch 32, XLA off, float32 |") for r in rows)
  for model in ("default", "null"):
    (row,) = [r for r in rows if r.startswith(f"| segbeam run, {model} model |")]
    assert "8/8 segmented" in row, row
