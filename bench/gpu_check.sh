#!/usr/bin/env bash
# The GPU checks of issue 22, in one go (under 8 minutes on one GPU), printing one table:
#   - the forward pass alone at batch 32 to 256, float32 and mixed precision, XLA off and on
#     (bench/forward_variants.py);
#   - `segbeam run` end to end on the sample photos with the default model and the null model
#     (bench/null_model.py), --postprocess-threads 1, 2 and 4;
#   - GPU utilisation sampled by nvidia-smi during each run (mean and peak %);
#   - `segbeam run --tile auto` on one mosaic of the photos (tiled inference, issue 34): tiles/s.
# Without an NVIDIA GPU it runs a small CPU fallback of the same steps (how it is tested here).
#
# On a GPU it runs TensorFlow's GPU build, as the worker image has it: TensorFlow's `and-cuda`
# extra, held to deploy/cuda-wheels.txt, in its own virtual environment (GPU_CHECK_VENV,
# default .venv-gpu, made on first use: CI's .venv has no CUDA libraries, so TensorFlow there
# would time the CPU). It stops, timing nothing, when that TensorFlow sees no GPU.
#
#   bash bench/gpu_check.sh            # from the checkout, with .venv set up
# Overrides: GPU_CHECK_IMAGES (default 4500 on a GPU, 90 on a CPU), GPU_CHECK_THREADS ("1 2 4"),
# GPU_CHECK_FORWARD_SECONDS (5 on a GPU, 1 on a CPU), GPU_CHECK_PHOTOS (the sample photos),
# GPU_CHECK_MODE (gpu or cpu; default: gpu where nvidia-smi lists a GPU), GPU_CHECK_PYTHON (a
# Python whose TensorFlow has CUDA, instead of GPU_CHECK_VENV's), GPU_CHECK_PIP_ARGS (extra pip
# arguments for that install, e.g. "--no-index --find-links WHEELS" on a machine offline).
set -euo pipefail
cd "$(dirname "$0")/.."

HAVE_SMI=no
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  HAVE_SMI=yes
fi
MODE=${GPU_CHECK_MODE:-$([ "$HAVE_SMI" = yes ] && echo gpu || echo cpu)}

if [ "$MODE" = gpu ]; then
  if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
  else
    VENV=${GPU_CHECK_VENV:-.venv-gpu}
    PY=$VENV/bin/python
    if [ ! -x "$PY" ]; then
      TF_VERSION=$(python3 -c "import runpy; print(runpy.run_path('segbeam/versions.py')['TENSORFLOW_VERSION'])")
      echo "gpu_check: installing TensorFlow $TF_VERSION's GPU build in $VENV" >&2
      python3 -m venv "$VENV"
      # shellcheck disable=SC2086  # GPU_CHECK_PIP_ARGS is a list of arguments
      "$VENV/bin/pip" install --quiet ${GPU_CHECK_PIP_ARGS:-} -c constraints.txt \
        -c deploy/cuda-wheels.txt -e . "tensorflow[and-cuda]==$TF_VERSION" || {
        rm -rf "$VENV"
        echo "gpu_check: could not install the GPU build in $VENV (above)" >&2
        exit 1
      }
    fi
  fi
  # Whatever nvidia-smi says, the figures are only a GPU's if TensorFlow places work on one.
  "$PY" - << 'PY' || exit 1
import sys
import tensorflow as tf
if not tf.config.list_physical_devices("GPU"):
  build = tf.sysconfig.get_build_info()
  print(
    f"gpu_check: stopped, nothing timed: TensorFlow {tf.__version__} in {sys.executable} sees "
    f"no GPU (built with CUDA: {tf.test.is_built_with_cuda()}, CUDA "
    f"{build.get('cuda_version', '-')}, cuDNN {build.get('cudnn_version', '-')}); its log "
    "above says which library or driver it could not load",
    file=sys.stderr,
  )
  sys.exit(1)
PY
else
  PY=${PYTHON:-.venv/bin/python}
fi
SEGBEAM=$(dirname "$PY")/segbeam

if [ "$MODE" = gpu ]; then
  IMAGES=${GPU_CHECK_IMAGES:-4500}
  MOSAIC=${GPU_CHECK_MOSAIC:-4096}
  SECONDS_EACH=${GPU_CHECK_FORWARD_SECONDS:-5}
  FORWARD_ARGS=(--batch-sizes 32,64,128,256 --xla off,on --precision float32,mixed)
else
  MODE=cpu
  IMAGES=${GPU_CHECK_IMAGES:-90}
  MOSAIC=${GPU_CHECK_MOSAIC:-512}
  SECONDS_EACH=${GPU_CHECK_FORWARD_SECONDS:-1}
  FORWARD_ARGS=(--batch-sizes 32 --xla off --precision float32)
fi
THREADS=${GPU_CHECK_THREADS:-"1 2 4"}
PHOTOS=${GPU_CHECK_PHOTOS:-../shared/data/oxford-pets-sample/images}
WORK=$(mktemp -d /tmp/segbeam-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "gpu_check: mode $MODE, $IMAGES images, $(nproc) CPUs; $(lscpu | sed -n 's/^Model name: *//p')"
if [ "$HAVE_SMI" = yes ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

# 1. The forward pass alone.
"$PY" bench/forward_variants.py "${FORWARD_ARGS[@]}" --seconds "$SECONDS_EACH" \
  > "$WORK/forward.txt" 2> "$WORK/forward.err" || {
  cat "$WORK/forward.err" >&2
  exit 1
}

# 2. The inputs and the null model.
"$PY" - "$PHOTOS" "$IMAGES" "$WORK/images" << 'PY'
import sys
sys.path.insert(0, "bench")
import throughput
throughput.make_inputs(sys.argv[1], int(sys.argv[2]), sys.argv[3])
PY
"$PY" bench/null_model.py --write-only "$WORK/null" > /dev/null 2> "$WORK/null.err" || {
  cat "$WORK/null.err" >&2
  exit 1
}

# 3. segbeam run end to end, GPU utilisation sampled alongside.
RUNS="$WORK/runs.txt"
: > "$RUNS"
for model in default null; do
  model_args=()
  if [ "$model" = null ]; then model_args=(--model "$WORK/null"); fi
  for threads in $THREADS; do
    if [ "$HAVE_SMI" = yes ]; then
      nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 \
        > "$WORK/util.txt" &
      SAMPLER=$!
    fi
    start=$(date +%s.%N)
    "$SEGBEAM" run --input "$WORK/images/*" --output "$WORK/out-$model-$threads" \
      --postprocess-threads "$threads" "${model_args[@]}" > "$WORK/run.log" 2>&1 || {
      tail -5 "$WORK/run.log" >&2
      exit 1
    }
    end=$(date +%s.%N)
    util="-"
    if [ "$HAVE_SMI" = yes ]; then
      kill "$SAMPLER" 2> /dev/null || true
      wait "$SAMPLER" 2> /dev/null || true
      util=$(awk '{s += $1; if ($1 > m) m = $1} END {if (NR) printf "%.0f%% mean, %.0f%% peak", s / NR, m}' "$WORK/util.txt")
    fi
    segmented=$(sed -n 's/.* \([0-9]*\) segmented.*/\1/p' "$WORK/run.log" | head -1)
    echo "$model $threads $start $end ${segmented:-0} $util" >> "$RUNS"
  done
done

# 4. Tiled: one square mosaic of the photos, MOSAIC pixels a side, --tile auto (the default
# model's 128, overlap 32).
mkdir "$WORK/mosaic"
"$PY" - "$PHOTOS" "$MOSAIC" "$WORK/mosaic/mosaic.png" << 'PY'
import glob, os, sys
from PIL import Image
photos, size, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mosaic, names = Image.new("RGB", (size, size)), sorted(glob.glob(os.path.join(photos, "*")))
for i, (top, left) in enumerate((t, l) for t in range(0, size, 256) for l in range(0, size, 256)):
  mosaic.paste(Image.open(names[i % len(names)]).convert("RGB").resize((256, 256)), (left, top))
mosaic.save(path)
PY
start=$(date +%s.%N)
"$SEGBEAM" run --input "$WORK/mosaic/*" --output "$WORK/out-tiled" --tile auto \
  > "$WORK/run.log" 2>&1 || {
  tail -5 "$WORK/run.log" >&2
  exit 1
}
end=$(date +%s.%N)
segmented=$(sed -n 's/.* \([0-9]*\) segmented.*/\1/p' "$WORK/run.log" | head -1)
echo "$MOSAIC $start $end ${segmented:-0}" > "$WORK/tiled.txt"

# 5. One table.
"$PY" - "$WORK/forward.txt" "$RUNS" "$IMAGES" "$WORK/tiled.txt" << 'PY'
import json, sys
forward_path, runs_path, images = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("\n| what | setting | img/s | notes |\n| --- | --- | --- | --- |")
lines = [line.strip() for line in open(forward_path)]
device = next((l.split(";")[0].removeprefix("device: ") for l in lines if l.startswith("device:")), "")
for row in json.loads(next(l for l in reversed(lines) if l.startswith("["))):
  setting = f"batch {row['batch_size']}, XLA {row['xla']}, {row['precision']}"
  print(f"| forward pass alone | {setting} | {row['img_s']:.0f} | {device}, random weights |")
for line in open(runs_path):
  model, threads, start, end, segmented, *util = line.split()
  seconds = float(end) - float(start)
  notes = f"{segmented}/{images} segmented, {seconds:.1f} s with start-up"
  if util and util != ["-"]:
    notes += "; GPU " + " ".join(util)
  print(f"| segbeam run, {model} model | --postprocess-threads {threads} | "
        f"{images / seconds:.0f} | {notes} |")
size, start, end, segmented = open(sys.argv[4]).read().split()
side = (int(size) - 32 + 95) // 96 if int(size) > 128 else 1  # tiles a side: stride 96
seconds = float(end) - float(start)
print(f"| segbeam run, default model, tiled | --tile auto, {size}x{size}, {side * side} tiles | "
      f"{side * side / seconds:.0f} tiles/s | {segmented}/1 segmented, {seconds:.1f} s with "
      "start-up |")
PY
