"""Dataflow cost per million images, from the pipeline's measured CPU cost and a GPU's rate.

A Dataflow GPU worker runs one SDK process (segbeam's default), so its rate is the lowest of:
  - the GPU's forward rate for the model;
  - its vCPUs over the pipeline's CPU time per image (reading, decoding, resizing, the mask,
    its PNG, Parquet, Beam: `bench/null_model.py`'s marginal CPU per image);
  - one over the time per image that holds Python's GIL (`bench/gil_profile.py`), which runs
    on one core whatever the machine has (with `--gpu-sharing mps`, one process per vCPU,
    each with its own GIL).
A CPU worker (no GPU) is bounded by its vCPUs over the whole run's CPU time per image, the
model's forward pass included (`bench/throughput.py`'s (c)).

Measured inputs are arguments (BENCHMARKS.md has the latest). The GPU forward rates are
estimates until a GPU is lent: the model's floating-point operations per image, counted here
from its graph (measured), over a fraction (--gpu-efficiency) of the GPU's peak float32 rate
(NVIDIA's data sheets). `bench/gpu_check.sh` measures them on a GPU. The prices are Dataflow's
us-central1 on-demand batch list prices as this script records them (PRICES): check them on
cloud.google.com/dataflow/pricing and pass --prices to update them.

Then what a first job pays besides images, each on its own line: a worker's start-up (the
image pull and the NVIDIA driver install are estimates, not measurable here; the imports are
`bench/start_timeline.py`'s), the listing (one thread pages through 1,000 objects a request,
docs/capacity-plan.md), and the object-store latency: requests per image x latency / reads in
flight (`bench/object_store_latency.py`), with the --read-concurrency per harness thread that
keeps a worker at its CPU bound.

  python bench/dataflow_cost.py --cpu-ms 6.0 --gil-ms 1.7 --cpu-model-ms 22
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional

# USD per hour: vCPU, GB of memory (Dataflow batch workers), each GPU. Not verifiable offline:
# recorded from Google's price lists (Dataflow batch worker vCPU and memory; the GPU prices
# Dataflow charges as Compute Engine does), us-central1, on demand.
PRICES = {"vcpu": 0.056, "memory_gb": 0.003557, "T4": 0.35, "L4": 0.56}

# Peak float32 TFLOPS from NVIDIA's data sheets (T4: 8.1; L4: 30.3).
GPU_PEAK_TFLOPS = {"T4": 8.1, "L4": 30.3}


@dataclasses.dataclass(frozen=True)
class Worker:
  machine: str
  vcpus: int
  memory_gb: float
  gpu: Optional[str]
  mps: bool = False  # `--gpu-sharing mps`: one SDK process (and GIL) per vCPU

  @property
  def processes(self) -> int:
    return self.vcpus if self.mps else 1

  def hourly(self, prices: dict) -> float:
    price = self.vcpus * prices["vcpu"] + self.memory_gb * prices["memory_gb"]
    return price + (prices[self.gpu] if self.gpu else 0.0)


WORKERS = (
  Worker("g2-standard-4", 4, 16, "L4"),
  Worker("n1-standard-4", 4, 15, "T4"),
  Worker("g2-standard-8", 8, 32, "L4"),
  Worker("g2-standard-8", 8, 32, "L4", mps=True),
  Worker("n1-standard-4", 4, 15, None),
)


def forward_flops(model_dir: str) -> float:
  """Floating-point operations of the export's forward pass (`predict_pixels`) per image,
  counted by TensorFlow's profiler on the graph with its functions inlined."""
  import tensorflow as tf
  from tensorflow.python.framework import convert_to_constants

  from segbeam.model import contract

  metadata = contract.read_metadata(model_dir)
  serving = metadata.serving_config
  loaded = tf.saved_model.load(model_dir)  # kept: its signatures hold its variables weakly
  predict = loaded.signatures["predict_pixels"]
  spec = tf.TensorSpec([1, serving.input_height, serving.input_width, serving.channels])
  concrete = tf.function(lambda pixels: predict(pixels=pixels)).get_concrete_function(spec)
  frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph, options=options)
  return float(profile.total_float_ops)


def print_first_job(args, prices: dict) -> None:
  """What a first job pays besides its images, one line each, in USD per GPU worker."""
  gpu_workers = [w for w in WORKERS if w.gpu and not w.mps][:2]
  hourly = [w.hourly(prices) for w in gpu_workers]
  names = " / ".join(f"{w.machine} + {w.gpu}" for w in gpu_workers)

  def usd(seconds: float) -> str:
    return " / ".join(f"${h * seconds / 3600:.3f}" for h in hourly)

  print(f"\nbesides images, USD per GPU worker ({names}):")
  for what, seconds in (
    ("start-up: image pull (estimate)", args.image_pull_s),
    ("start-up: NVIDIA driver install (estimate)", args.driver_install_s),
    ("start-up: imports and pipeline, to the first batch (measured)", args.imports_s),
  ):
    print(f"- {what}: {seconds:,.0f} s, {usd(seconds)}")
  listing = args.files / 1000 * args.list_request_s
  print(
    f"- listing {args.files:,} loose files: {args.files / 1000:,.0f} requests x "
    f"{args.list_request_s} s = {listing:,.0f} s of one thread before the first read, "
    f"{usd(listing)} per worker kept waiting"
  )
  in_flight = args.harness_threads * args.read_concurrency
  read_ms = args.requests_per_image * args.request_ms / in_flight
  cpu_bound = 4 * 1000 / (args.cpu_ms + args.get_cpu_ms)  # a 4-vCPU GPU worker, loose files
  needed = cpu_bound * args.requests_per_image * args.request_ms / 1000 / args.harness_threads
  print(
    f"- object-store latency: {args.requests_per_image:g} requests per image x "
    f"{args.request_ms:g} ms / ({args.harness_threads} threads x {args.read_concurrency} reads "
    f"in flight) = {read_ms:.2f} ms per image, {1000 / read_ms:,.0f} img/s per worker against "
    f"a 4-vCPU CPU bound of {cpu_bound:,.0f} (loose files: {args.cpu_ms:g} + {args.get_cpu_ms:g} "
    f"ms CPU per image): --read-concurrency {needed:.1f} per thread keeps "
    f"up ({'met' if 1000 / read_ms >= cpu_bound else 'NOT met'} at {args.read_concurrency})"
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cpu-ms", type=float, required=True, help="pipeline CPU ms per image")
  parser.add_argument("--gil-ms", type=float, required=True, help="GIL-held ms per image")
  parser.add_argument(
    "--cpu-model-ms", type=float, required=True, help="CPU ms per image with the model on CPU"
  )
  parser.add_argument("--gpu-efficiency", type=float, default=0.25)
  parser.add_argument("--gpu-img-s", type=json.loads, default={}, help='measured: {"L4": 3000}')
  parser.add_argument("--prices", type=json.loads, default={}, help='{"L4": 0.56, ...}')
  parser.add_argument("--model", help="an export; the embedded default when omitted")
  parser.add_argument("--image-pull-s", type=float, default=160, help="estimate, see BENCHMARKS")
  parser.add_argument("--driver-install-s", type=float, default=120, help="estimate")
  parser.add_argument(
    "--imports-s", type=float, default=7.1, help="start_timeline.py: to 1st slice"
  )
  parser.add_argument("--files", type=int, default=1_000_000, help="loose files listed")
  parser.add_argument("--list-request-s", type=float, default=0.15, help="per 1,000 objects")
  parser.add_argument("--request-ms", type=float, default=50, help="object-store latency")
  parser.add_argument("--requests-per-image", type=float, default=1.0, help="measured: 1.0")
  parser.add_argument(
    "--get-cpu-ms", type=float, default=1.3, help="CPU ms a loose file's GET adds (measured)"
  )
  parser.add_argument("--harness-threads", type=int, default=4)
  parser.add_argument("--read-concurrency", type=int, default=16, help="per harness thread")
  args = parser.parse_args(argv)
  from segbeam.model import defaults

  prices = {**PRICES, **args.prices}
  flops = forward_flops(args.model or defaults.default_model_dir())
  print(f"forward pass: {flops / 1e9:.2f} GFLOP per image (counted from the graph)")
  print(f"prices, USD per hour: {prices}")
  print_first_job(args, prices)
  print(
    "\n| worker | USD/h | img/s: GPU | CPU | GIL | worker | USD per million images |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
  )
  for worker in WORKERS:
    hourly = worker.hourly(prices)
    if worker.gpu:
      measured = args.gpu_img_s.get(worker.gpu)
      gpu = measured or GPU_PEAK_TFLOPS[worker.gpu] * 1e12 * args.gpu_efficiency / flops
      gpu_text = f"{gpu:,.0f}" + ("" if measured else " (est.)")
      cpu = worker.vcpus * 1000 / args.cpu_ms
      gil = worker.processes * 1000 / args.gil_ms
      rate = min(gpu, cpu, gil)
      label = f"{worker.machine} + {worker.gpu}" + (", MPS" if worker.mps else "")
    else:
      gpu_text, gil = "-", None
      cpu = rate = worker.vcpus * 1000 / args.cpu_model_ms
      label = f"{worker.machine}, model on CPU"
    dollars = hourly / (rate * 3600) * 1e6
    print(
      f"| {label} | {hourly:.3f} | {gpu_text} | {cpu:,.0f} | "
      f"{'-' if gil is None else f'{gil:,.0f}'} | {rate:,.0f} | {dollars:.3f} |"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
