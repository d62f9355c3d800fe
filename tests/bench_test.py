"""The bench scripts, each run on a few photos: bench/gpu_check.sh (the script a session lent a
GPU runs: its syntax, and its CPU fallback end to end), large_photos.py, stage_costs.py,
compare_runs.py, dataflow_cost.py, object_store_latency.py and tiling.py. Their figures are
BENCHMARKS.md's, not asserted here."""

import io
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


def _bench(script: str, *args: str) -> str:
  """bench/`script` run with these arguments; its standard output (it must exit 0)."""
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "bench", script), *args],
    cwd=ROOT,
    check=True,
    capture_output=True,
    text=True,
  ).stdout


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
  (tiled,) = [r for r in rows if r.startswith("| segbeam run, default model, tiled |")]
  assert "--tile auto, 512x512, 25 tiles" in tiled and "1/1 segmented" in tiled, tiled


def test_gpu_check_stops_when_tensorflow_sees_no_gpu(pet_folder):
  """On a GPU machine the check times TensorFlow's GPU build or nothing: here the GPU mode is
  forced with CI's TensorFlow (GPU_CHECK_PYTHON, so nothing is installed) and no device
  visible, as on a machine whose driver or CUDA libraries TensorFlow cannot load."""
  images, _, _ = pet_folder
  env = dict(
    os.environ,
    GPU_CHECK_MODE="gpu",
    GPU_CHECK_PYTHON=sys.executable,
    CUDA_VISIBLE_DEVICES="",
    PATH="/usr/bin:/bin",
    GPU_CHECK_IMAGES="4",
    GPU_CHECK_PHOTOS=images,
  )
  run = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True)
  assert run.returncode == 1, (run.stdout, run.stderr[-2000:])
  assert "gpu_check: stopped, nothing timed: TensorFlow " in run.stderr
  assert "sees no GPU (built with CUDA: " in run.stderr
  assert not [line for line in run.stdout.splitlines() if line.startswith("| ")]


def test_gpu_check_installs_the_gpu_build_in_its_own_venv():
  """What the GPU mode installs (read, not run: it downloads several GB): TensorFlow's and-cuda
  extra at the image's version, held to deploy/cuda-wheels.txt, in GPU_CHECK_VENV."""
  with open(SCRIPT, encoding="utf-8") as f:
    script = f.read()
  assert "VENV=${GPU_CHECK_VENV:-.venv-gpu}" in script
  assert "-c constraints.txt" in script and "-c deploy/cuda-wheels.txt" in script
  assert '"tensorflow[and-cuda]==$TF_VERSION"' in script
  assert "TENSORFLOW_VERSION" in script  # segbeam/versions.py's, the image's


def test_large_photos_runs_both_sizes(pet_folder, tmp_path):
  images, _, _ = pet_folder
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in sorted(os.listdir(images))[:3]:
    os.symlink(os.path.join(images, name), photos / name)
  (photos / "notes.txt").write_text("not an image")  # skipped
  out = _bench("large_photos.py", "--images", "3", "--megapixels", "1", "--photos", str(photos))
  for size in ("original", "large"):
    (row,) = [r for r in out.splitlines() if r.startswith(f"default, {size} ")]
    assert "3/3 segmented, 0 failed" in row, row
  assert "default model, large / original: CPU per image" in out


def test_tiling_prints_its_tables(pet_folder):
  images, _, _ = pet_folder
  out = _bench("tiling.py", "--quick", "--photos", images)
  assert out.startswith("machine: "), out
  rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")]
  variants = [r[1] for r in rows if r[0] == "| null"]  # --quick: the null model's runs
  assert variants == [
    "whole, one model input per image",
    "tiled, --tile-blend centre",
    "tiled, --tile-blend gaussian",
  ], out
  assert "- null model, tiled (centre) / whole: CPU per model input " in out
  memory = [r[0] for r in rows if "start-up floor" in r[0] or "640x640 JPEG" in r[0]]
  assert len(memory) == 3, out  # the floor, then the large image centre and gaussian
  for blend in ("centre", "gaussian"):
    assert f"- 0.41 MP, {blend}: peak " in out
  assert "- pieces, mean of 8 tiles of the 0.41 MP image (default model): centre " in out


def test_stage_costs_prints_every_stage(pet_folder):
  images, _, _ = pet_folder
  out = _bench(
    "stage_costs.py",
    "--images",
    "4",
    "--batch-size",
    "2",
    "--beam-elements",
    "200",
    "--photos",
    images,
  )
  stages = [line.split(" | ")[0][2:] for line in out.splitlines() if line.startswith("| ")]
  for stage in ("read", "validate", "graph: decode", "mask at the original size", "mask PNG"):
    assert any(s.startswith(stage) for s in stages), stages
  assert any(s.startswith("Beam, one DoFn per element") for s in stages), stages


def _write_run(folder, rows):
  import pyarrow as pa
  import pyarrow.parquet as pq

  (folder / "segments").mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(rows), folder / "segments" / "part-0.parquet")


def test_compare_runs_tells_identical_from_different(tmp_path):
  from PIL import Image

  def png(value):
    out = io.BytesIO()
    Image.new("L", (4, 3), value).save(out, "PNG")
    return out.getvalue()

  row = {"image_id": "a.jpg", "run_id": "r1", "mask_png": png(1), "mean_confidence": 0.5}
  _write_run(tmp_path / "before", [row])
  _write_run(tmp_path / "same", [{**row, "run_id": "r2"}])  # run_id is not compared
  _write_run(tmp_path / "other", [{**row, "mask_png": png(2), "mean_confidence": 0.25}])
  script = os.path.join(ROOT, "bench", "compare_runs.py")

  def compare(after):
    return subprocess.run(
      [sys.executable, script, str(tmp_path / "before"), str(tmp_path / after)],
      capture_output=True,
      text=True,
    )

  same = compare("same")
  assert same.returncode == 0 and same.stdout.strip().endswith("identical"), same.stdout
  other = compare("other")
  assert other.returncode == 1, other.stdout
  assert "segments.mask_png: differs in 1 rows (1 decode to different masks)" in other.stdout
  assert "segments.mean_confidence: differs in 1 rows" in other.stdout


def test_dataflow_cost_prices_each_worker():
  out = _bench(
    "dataflow_cost.py",
    "--cpu-ms",
    "5",
    "--gil-ms",
    "2",
    "--cpu-model-ms",
    "20",
    "--gpu-img-s",
    '{"T4": 100}',
  )
  gflop = float(out.split("forward pass: ")[1].split(" GFLOP")[0])
  assert 0.5 < gflop < 3, out  # the tutorial U-Net at 128x128
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines()[-5:]}
  l4, t4, cpu = (
    rows["g2-standard-4 + L4"],
    rows["n1-standard-4 + T4"],
    rows["n1-standard-4, model on CPU"],
  )
  assert l4[2].endswith("(est.)") and l4[5] == "500"  # the GIL's bound: 1000 / 2 ms
  assert t4[2] == "100" and t4[5] == "100"  # a measured GPU rate is used as given
  assert cpu[5] == "200"  # 4 vCPUs at 20 ms per image
  mps = rows["g2-standard-8 + L4, MPS"]
  assert mps[4] == "4,000" and mps[5] == "1,600"  # a GIL per vCPU; then 8 vCPUs at 5 ms
  # USD per million = USD per hour / (images per second * 3600) * 1e6
  assert float(t4[6].rstrip(" |")) == pytest.approx(float(t4[1]) / (100 * 3600) * 1e6, rel=0.01)
  # What a first job pays besides images, a line each; the latency line's arithmetic:
  # 1 request x 50 ms / (4 threads x 16 in flight) = 0.78 ms an image, against 4 x 1000 / (5 ms
  # + 1.3 ms a GET costs); 635 img/s x 50 ms / 4 threads = 7.9 in flight per thread.
  for line in ("image pull (estimate)", "NVIDIA driver install", "imports and pipeline"):
    assert f"- start-up: {line}" in out, out
  assert "- listing 1,000,000 loose files: 1,000 requests x 0.15 s = 150 s" in out
  assert "= 0.78 ms per image, 1,280 img/s per worker against a 4-vCPU CPU bound of 635" in out
  assert "--read-concurrency 7.9 per thread keeps up (met at 16)" in out


def test_scale_prints_each_size_and_layout():
  out = _bench("scale.py", "--sizes", "30,60")
  rows = [
    line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line
  ]
  assert [(r[0][2:], r[1]) for r in rows[1:]] == [
    ("files", "30"),
    ("shards", "30"),
    ("files", "60"),
    ("shards", "60"),
  ]
  for row in rows[1:]:
    assert row[6].startswith("2 files"), row  # a segments and an errors file
    assert row[7].rstrip(" |").endswith(" s"), row  # the manifest step's time, from its log line
  assert "shards: 60 / 30 inputs: wall per input" in out
  assert "tables split into files under 10 MB: 0 (target met)" in out


def test_listing_memory_compares_the_two_listings():
  out = _bench("listing_memory.py", "--files", "2000")
  held, streamed = out.splitlines()
  assert held.startswith("FileSystems.match (one list): 2,000 files in ")
  assert streamed.startswith("sources.iter_matches (streamed): 2,000 files in ")
  per_file = [int(line.split(" bytes per file")[0].rsplit(", ", 1)[1]) for line in (held, streamed)]
  assert per_file[1] < per_file[0]  # what streaming is for


def test_object_store_latency_prints_its_table(pet_folder, tmp_path):
  images, _, _ = pet_folder
  out = _bench(
    "object_store_latency.py",
    "--latencies",
    "0,20",
    "--small",
    "3",
    "--large",
    "6",
    "--sweep",
    "1,4",
    "--sweep-latency",
    "20",
    "--photos",
    images,
  )
  rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")]
  latencies = [r for r in rows if r[0] in ("| 0", "| 20")]
  assert [r[0] for r in latencies] == ["| 0", "| 20"], out
  for row in latencies:
    assert float(row[8]) == 1.0, row  # one request per loose image: its media alone
  sweep = [r for r in rows if r[0] in ("| 1", "| 4")]
  assert [r[0] for r in sweep] == ["| 1", "| 4"], out
  ways = {r[0][2:]: r for r in rows if r[0].startswith("| Beam's open") or "window" in r[0]}
  assert len(ways) == 2, out
  assert [float(r[2].rstrip(" |")) for r in ways.values()] == [3.0, 1.0], out  # before, after


def test_input_formats_prints_a_row_per_format_and_place(pet_folder):
  images, _, _ = pet_folder
  out = _bench(
    "input_formats.py",
    "--small",
    "3",
    "--large",
    "6",
    "--per-shard",
    "4",
    "--repeats",
    "1",
    "--photos",
    images,
    "--formats",  # loose files and a shard format: the bench's two ways to read, in half the time
    "files,parquet",
  )
  assert out.startswith("machine: "), out
  rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")][2:]
  assert [(r[0][2:], r[1]) for r in rows] == [
    (name, place) for place in ("local", "gcs") for name in ("files", "parquet")
  ], out
  for row in rows:
    assert row[2] == ("1 per image" if row[0] == "| files" else "2"), row  # 6 images, 4 a shard
    assert row[8] == "6/6 segmented, 0 errors |", row
    # Every input byte read at least once: by the run (local) or through the proxy (gcs).
    assert float(row[6]) >= (1.0 if row[1] == "gcs" else 0.9), row
  for row in rows[2:]:
    assert float(row[7]) >= (1.0 if row[0] == "| files" else 2 / 6), row  # an object each
  assert "at most 4 images per shard" in out.splitlines()[0], out


def test_input_formats_refuses_an_unknown_format():
  run = subprocess.run(
    [sys.executable, os.path.join(ROOT, "bench", "input_formats.py"), "--formats", "csv"],
    capture_output=True,
    text=True,
  )
  assert (
    run.returncode == 2 and "not one of files, tfrecord, parquet, webdataset: csv" in run.stderr
  )
