"""Throughput of segbeam against its own parts and Beam's reference pattern, in ONE run.

On the same images (the 450 photos of ../shared/data/oxford-pets-sample, repeated to --images
files by symbolic links), measures:
  (a) the model's forward pass alone: the export's `predict_pixels` signature on pre-decoded
      128x128 batches, one call per batch; and (a') the same with each batch cut into --slices
      slices run at the same time, as (c) runs it (`segbeam run --inference-slices`);
  (b) a plain Python loop over the export's `serving_default` on the encoded files;
  (c) `segbeam run` end to end with Parquet output (a subprocess, start-up included), once per
      inference handler (--handlers; the first is the one the ratios use);
  (d) Beam's reference pattern: PIL decode + resize per element, TFModelHandlerTensor on a
      .keras file, numpy argmax and PNG per element, WriteToParquet (a subprocess too), once
      per --reference-batching: 'beam-default' as Beam's examples write it (RunInference's
      adaptive batching; the ratios use it), 'fixed' with every batch at --batch-size;
and prints images/s, CPU time per image (all threads), peak RSS of (c) and (d), and the ratios
(c)/(a), (c)/(a'), (c)/(b), (c)/(d). From (c)'s CPU time it also prints the most (c) could do
with that work spread over every core without a moment idle, as a fraction of (a): a ceiling
no scheduling can beat, only less work per image; and from (c)'s progress lines its rate once
running (its steady state) and its fixed cost, the rest of its wall time. The variants compared
run side by side, the machine's speed drifting over minutes: the default (c), then (a) once more
(the ratio takes the mean of both (a)), then the default (d), then the other handlers and
batchings.

  python bench/throughput.py [--images 4500] [--batch-size 32] [--skip d]

(d) needs tensorflow_hub (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Optional, Sequence

SHARED = os.path.join(
  os.path.dirname(os.path.abspath(__file__)),
  "..",
  "..",
  "shared",
  "data",
  "oxford-pets-sample",
  "images",
)


def cpu_model() -> str:
  """The CPU's model name as lscpu gives it (platform.processor() where lscpu is missing): every
  figure is recorded with its machine."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor()
  return next(
    (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
    platform.processor(),
  )


def make_inputs(source_dir: str, count: int, target: str) -> list[str]:
  photos = sorted(os.path.join(source_dir, f) for f in os.listdir(source_dir))
  os.makedirs(target, exist_ok=True)
  paths = []
  for i in range(count):
    photo = photos[i % len(photos)]
    link = os.path.join(target, f"{i // len(photos):03d}_{os.path.basename(photo)}")
    os.symlink(os.path.abspath(photo), link)
    paths.append(link)
  return paths


@dataclasses.dataclass(frozen=True)
class Timing:
  """One timed variant: wall seconds, CPU seconds of all its threads (user + system), and for a
  subprocess its peak RSS."""

  images: int
  seconds: float
  cpu_seconds: float
  peak_rss_mb: Optional[float] = None

  @property
  def img_s(self) -> float:
    return self.images / self.seconds

  @property
  def cpu_ms_per_image(self) -> float:
    return 1000 * self.cpu_seconds / self.images

  @property
  def cores(self) -> float:
    """Cores kept busy on average."""
    return self.cpu_seconds / self.seconds

  def as_json(self) -> dict:
    return {
      "img_s": self.img_s,
      "seconds": self.seconds,
      "cpu_seconds": self.cpu_seconds,
      "cpu_ms_per_image": self.cpu_ms_per_image,
      "cores": self.cores,
      "peak_rss_mb": self.peak_rss_mb,
    }

  def describe(self) -> str:
    text = f"{self.img_s:8.1f} img/s  ({self.seconds:.0f} s, CPU {self.cpu_ms_per_image:.1f} ms/img"
    text += f" on {self.cores:.2f} cores"
    if self.peak_rss_mb is not None:
      text += f", peak RSS {self.peak_rss_mb:.0f} MB"
    return text + ")"


_PROGRESS_LINE = re.compile(  # rows.MakeRows's log line, every 10 s
  r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+: segmented (\d+) images in this worker"
)


@dataclasses.dataclass(frozen=True)
class SteadyState:
  """(c) between its first and last progress line (one every 10 s): its rate once running."""

  images: int
  seconds: float

  @property
  def img_s(self) -> float:
    return self.images / self.seconds

  def fixed_seconds(self, run: Timing) -> float:
    """What the whole run took beyond its images at the steady rate: start-up (Python,
    TensorFlow, Beam, the pipeline), the first batches and the end (Parquet, manifest)."""
    return run.seconds - run.images / self.img_s


def steady_state(log_path: str) -> Optional[SteadyState]:
  """From `segbeam run`'s progress lines in its log; None with fewer than two."""
  progress = []
  with open(log_path, errors="replace") as log:
    for line in log:
      match = _PROGRESS_LINE.match(line)
      if match:
        progress.append(
          (datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"), int(match.group(2)))
        )
  if len(progress) < 2:
    return None
  (first_time, first_done), (last_time, last_done) = progress[0], progress[-1]
  return SteadyState(last_done - first_done, (last_time - first_time).total_seconds())


def _cpu_seconds() -> float:
  """CPU time of this process, every thread (TensorFlow's pools included)."""
  return time.process_time()


def forward_alone(model_dir: str, paths: list[str], batch_size: int, slices: int = 1) -> Timing:
  """The export's forward pass on pre-decoded batches; with `slices` > 1 each batch is cut into
  that many slices run at the same time, as `segbeam run --inference-slices` does."""
  import concurrent.futures

  import numpy as np
  import tensorflow as tf

  from segbeam.model import contract
  from segbeam.model import preprocessing
  from segbeam.pipeline import inference

  metadata = contract.read_metadata(model_dir)
  forward = tf.saved_model.load(model_dir).signatures[contract.PIXELS_SIGNATURE_NAME]
  distinct = paths[:450]
  pixels = np.stack(
    [
      preprocessing.resize_image(
        preprocessing.decode_image(open(p, "rb").read(), metadata.channels), metadata.input_size
      ).numpy()
      for p in distinct
    ]
  )
  batches = [
    tf.constant(pixels[np.arange(i, i + batch_size) % len(pixels)])
    for i in range(0, len(paths), batch_size)
  ]

  def infer(batch) -> None:
    forward(pixels=batch)["probabilities"].numpy()

  pool = concurrent.futures.ThreadPoolExecutor(slices)
  infer(batches[0])  # warm-up: graph tracing and thread pools
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  done = 0
  for i, batch in enumerate(batches):
    n = min(batch_size, len(paths) - i * batch_size)
    list(pool.map(infer, [batch[a:b] for a, b in inference.slice_bounds(n, slices)]))
    done += n
  timing = Timing(done, time.perf_counter() - start, _cpu_seconds() - cpu_start)
  pool.shutdown()
  return timing


def plain_loop(model_dir: str, paths: list[str], batch_size: int) -> Timing:
  from segbeam.model import export

  loaded = export.LoadedExport(model_dir)
  loaded.predict([open(paths[0], "rb").read()])  # warm-up
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  for i in range(0, len(paths), batch_size):
    encoded = [open(p, "rb").read() for p in paths[i : i + batch_size]]
    loaded.predict(encoded)["probabilities"]
  return Timing(len(paths), time.perf_counter() - start, _cpu_seconds() - cpu_start)


def _high_water_mb(pid: int) -> float:
  """The process's own peak RSS (VmHWM), 0 once it is gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def timed_subprocess(
  argv: list[str], log_path: str, images: int, env: Optional[Mapping[str, str]] = None
) -> Timing:
  """A child process over `images` images, start-up included.

  Its CPU time comes from wait4's rusage of that child alone. The peak is read from /proc
  (VmHWM of the child's own address space), polled until it exits: the rusage's ru_maxrss
  also counts the parent's memory it was forked with, which here includes TensorFlow and the
  model from (a) and (b).
  """
  start = time.perf_counter()
  peak = 0.0
  with open(log_path, "w") as log:
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    while True:
      pid, status, usage = os.wait4(process.pid, os.WNOHANG)
      if pid:
        break
      peak = max(peak, _high_water_mb(process.pid))
      time.sleep(0.5)
  elapsed = time.perf_counter() - start
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode != 0:
    raise RuntimeError(f"{argv[:3]} failed; see {log_path}")
  return Timing(images, elapsed, usage.ru_utime + usage.ru_stime, peak)


def segbeam_run_argv(
  model_dir: str,
  input_dir: str,
  output: str,
  batch_size: int,
  extra: Sequence[str] = (),
  *,
  pattern: str = "*",
) -> list[str]:
  """The `segbeam run` command over the files `pattern` matches in `input_dir` (every one by
  default), from this Python's venv."""
  segbeam = shutil.which("segbeam", path=os.path.dirname(sys.executable)) or "segbeam"
  return [
    segbeam,
    "run",
    "--input",
    os.path.join(input_dir, pattern),
    "--output",
    output,
    "--model",
    model_dir,
    "--batch-size",
    str(batch_size),
    *extra,
  ]


def segbeam_run(
  model_dir: str,
  input_dir: str,
  output: str,
  images: int,
  batch_size: int,
  log: str,
  extra: list[str],
) -> Timing:
  return timed_subprocess(
    segbeam_run_argv(model_dir, input_dir, output, batch_size, extra), log, images
  )


def reference_pattern(
  model_dir: str,
  input_dir: str,
  output: str,
  images: int,
  batching: str,
  batch_size: int,
  log: str,
  keras: Optional[str] = None,
) -> Timing:
  """Beam's reference pattern (`reference_pattern.py`) as a timed child; `keras`: the network
  to run, when not the export's architecture."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_pattern.py")
  return timed_subprocess(
    [
      sys.executable,
      script,
      "--model",
      model_dir,
      "--input",
      os.path.join(input_dir, "*"),
      "--output",
      output,
      "--batching",
      batching,
      "--batch-size",
      str(batch_size),
      *(["--keras", keras] if keras else []),
    ],
    log,
    images,
  )


def _record(results: dict, key: str, label: str, timing: Timing) -> Timing:
  """Stores and prints one timed variant."""
  results[key] = timing.as_json()
  print(f"{label:44s} {timing.describe()}", flush=True)
  return timing


def time_segbeam_run(
  args, model_dir: str, work: str, paths: list[str], handler: str, results: dict
) -> tuple[Timing, Optional[SteadyState]]:
  """Runs and records (c) with `handler`; its timing and its steady state (None when its log
  has fewer than two progress lines)."""
  output = os.path.join(work, f"out_c_{handler}")
  log = os.path.join(args.logs, f"c_{handler}.log")
  timing = segbeam_run(
    model_dir,
    os.path.join(work, "images"),
    output,
    len(paths),
    args.batch_size,
    log,
    [
      "--inference-handler",
      handler,
      "--inference-slices",
      str(args.slices),
      *args.run_args.split(),
    ],
  )
  with open(os.path.join(output, "manifest.json")) as f:
    counts = json.load(f)["counts"]
  assert counts["segmented"] == len(paths), counts
  shutil.rmtree(output, ignore_errors=True)
  _record(results, f"c_{handler}", f"(c) segbeam run [{handler}]", timing)
  steady = steady_state(log)
  if steady is not None:
    fixed = steady.fixed_seconds(timing)
    results[f"c_{handler}"].update(steady_img_s=steady.img_s, fixed_seconds=fixed)
    print(
      f"{'':4s}steady state {steady.img_s:.1f} img/s ({steady.images} images in "
      f"{steady.seconds:.1f} s between progress lines); fixed cost {fixed:.1f} s",
      flush=True,
    )
  return timing, steady


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=4500)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument(
    "--forward-images",
    type=int,
    default=4500,
    help="(a), (a') and (b) time at most this many of the images: a rate, "
    "and (a) holds its decoded batches in memory (45,000 would take 8.8 GB)",
  )
  parser.add_argument("--model", default=None, help="export (default: the embedded model)")
  parser.add_argument("--photos", default=SHARED)
  parser.add_argument("--skip", default="", help="letters of variants to skip, e.g. 'd'")
  parser.add_argument("--run-args", default="", help="extra arguments for segbeam run")
  parser.add_argument(
    "--slices", type=int, default=2, help="--inference-slices of (c), and of (a') beside (a)"
  )
  parser.add_argument(
    "--handlers",
    default="tfx-bsl,saved-model",
    help="inference handlers to time in (c), comma-separated",
  )
  parser.add_argument(
    "--reference-batching",
    default="beam-default,fixed",
    help="batchings of (d), comma-separated; the first is the one the ratios use",
  )
  parser.add_argument(
    "--logs",
    default=os.path.join(tempfile.gettempdir(), "segbeam-bench-logs"),
    help="where the subprocesses' logs are kept",
  )
  args = parser.parse_args(argv)
  # Every variant, (d) included, under the TensorFlow settings segbeam runs with (oneDNN on,
  # see segbeam/__init__.py): the subprocesses inherit this environment.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
  from segbeam.model import defaults

  model_dir = args.model or defaults.default_model_dir()
  work = tempfile.mkdtemp(prefix="segbeam-bench-")
  os.makedirs(args.logs, exist_ok=True)
  try:
    paths = make_inputs(args.photos, args.images, os.path.join(work, "images"))
    results = {
      "images": len(paths),
      "batch_size": args.batch_size,
      "cpus": os.cpu_count(),
      "tf_enable_onednn_opts": os.environ["TF_ENABLE_ONEDNN_OPTS"],
    }
    forward_paths = paths[: args.forward_images]
    forward_runs = []
    if "a" not in args.skip:
      forward_runs.append(
        _record(
          results,
          "a_before_c",
          "(a) forward alone",
          forward_alone(model_dir, forward_paths, args.batch_size),
        )
      )
      if args.slices > 1:
        sliced = _record(
          results,
          "a_sliced",
          f"(a') forward alone, batches cut in {args.slices} slices",
          forward_alone(model_dir, forward_paths, args.batch_size, args.slices),
        )
        results["a_sliced_img_s"] = sliced.img_s
    if "b" not in args.skip:
      plain = plain_loop(model_dir, forward_paths, args.batch_size)
      results["b_plain_loop_img_s"] = _record(
        results, "b_plain_loop", "(b) plain loop", plain
      ).img_s
    # The machine's speed drifts by 10-20% over minutes (BENCHMARKS.md), so the variants the
    # ratios compare run next to each other: the default (c), (a) again, the default (d); then
    # the other handlers and batchings. (c)/(a) uses the mean of the (a) before and after (c).
    handlers = args.handlers.split(",") if "c" not in args.skip else []
    batchings = args.reference_batching.split(",") if "d" not in args.skip else []
    segbeam_timing = segbeam_steady = None
    for handler in handlers[:1]:
      segbeam_timing, segbeam_steady = time_segbeam_run(
        args, model_dir, work, paths, handler, results
      )
      results.update(c_segbeam_img_s=segbeam_timing.img_s, c_handler=handler)
      if "a" not in args.skip:
        forward_runs.append(
          _record(
            results,
            "a_after_c",
            "(a) forward alone, again after (c)",
            forward_alone(model_dir, forward_paths, args.batch_size),
          )
        )
    if forward_runs:
      results["a_forward_img_s"] = sum(t.img_s for t in forward_runs) / len(forward_runs)
      results["a_cpu_ms_per_image"] = sum(t.cpu_ms_per_image for t in forward_runs) / len(
        forward_runs
      )
      print(
        f"(a) mean of {len(forward_runs)}{'':30s} {results['a_forward_img_s']:8.1f} img/s  "
        f"(CPU {results['a_cpu_ms_per_image']:.1f} ms/img)",
        flush=True,
      )
    for number, batching in enumerate(batchings):
      timing = reference_pattern(
        model_dir,
        os.path.join(work, "images"),
        os.path.join(work, f"out_d_{batching}"),
        len(paths),
        batching,
        args.batch_size,
        os.path.join(args.logs, f"d_{batching}.log"),
      )
      _record(results, f"d_{batching}", f"(d) reference pattern [{batching}]", timing)
      if number == 0:
        results.update(d_reference_img_s=timing.img_s, d_batching=batching)
        for handler in handlers[1:]:
          time_segbeam_run(args, model_dir, work, paths, handler, results)
    if not batchings:
      for handler in handlers[1:]:
        time_segbeam_run(args, model_dir, work, paths, handler, results)
    for label, key, ratio_key in (
      ("a", "a_forward_img_s", "c_over_a"),
      ("a'", "a_sliced_img_s", "c_over_a_sliced"),
      ("b", "b_plain_loop_img_s", "c_over_b"),
      ("d", "d_reference_img_s", "c_over_d"),
    ):
      if "c_segbeam_img_s" in results and key in results:
        results[ratio_key] = results["c_segbeam_img_s"] / results[key]
        print(f"(c)/({label}) = {results[ratio_key]:.2f}")
    if segbeam_steady is not None and "a_forward_img_s" in results:
      results["c_steady_over_a"] = segbeam_steady.img_s / results["a_forward_img_s"]
      print(f"(c) in its steady state / (a) = {results['c_steady_over_a']:.2f}")
    if "b_plain_loop_img_s" in results and "a_forward_img_s" in results:
      # (b) only reads, decodes and infers: what (c) does beyond (a) at the least.
      results["b_over_a"] = results["b_plain_loop_img_s"] / results["a_forward_img_s"]
      print(f"(b)/(a) = {results['b_over_a']:.2f}")
    if segbeam_timing is not None and forward_runs:
      # The most (c) could do with its CPU work on every core, never idle: its start-up,
      # decoding, postprocessing, Beam and Parquet cost CPU that (a) does not spend.
      ceiling = len(paths) * os.cpu_count() / segbeam_timing.cpu_seconds
      results.update(
        c_ceiling_img_s=ceiling,
        c_ceiling_over_a=ceiling / results["a_forward_img_s"],
        c_cpu_over_a_cpu=(segbeam_timing.cpu_ms_per_image / results["a_cpu_ms_per_image"]),
      )
      print(
        f"CPU per image, (c)/(a) = {results['c_cpu_over_a_cpu']:.2f}; (c) with that work on "
        f"all {os.cpu_count()} cores, never idle: {ceiling:.1f} img/s = "
        f"{results['c_ceiling_over_a']:.2f} of (a)"
      )
    print(json.dumps(results))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
