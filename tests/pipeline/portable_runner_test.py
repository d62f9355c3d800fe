"""`segbeam run` on Beam's PortableRunner: a local job service and an external worker pool, each
its own process, as Dataflow's Runner v2 and Flink/Spark run it through the Fn API.

The test process only builds and submits the pipeline; the job service runs it on SDK worker
processes that the pool starts. So everything the pipeline holds must pickle, and the model
must be loaded there, never here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter

from segbeam import constants
from segbeam import options as options_lib
from segbeam.pipeline import inference
from segbeam.pipeline import layout
from segbeam.run import beam_options
from segbeam.run import job
from tests import accounting
from tests import synthetic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT_S = 90
SIZES = [(40, 30), (64, 64), (33, 57), (50, 20), (48, 48)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _subprocess_env() -> dict[str, str]:
  """This venv's bin first on PATH: the worker pool starts SDK workers with `python`."""
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


def _tail(path: str, chars: int = 2000) -> str:
  with open(path, errors="replace") as f:
    return f.read()[-chars:]


def _wait_for_port(port: int, process: subprocess.Popen, log: str, what: str) -> None:
  deadline = time.monotonic() + START_TIMEOUT_S
  while True:
    with contextlib.suppress(OSError), socket.create_connection(("localhost", port), timeout=1):
      return
    if process.poll() is not None or time.monotonic() > deadline:
      pytest.skip(f"the {what} did not start (exit code {process.poll()}): {_tail(log)}")
    time.sleep(0.2)


def _stop(process: subprocess.Popen, first_signal: int) -> None:
  """Asks nicely (the pool stops its SDK workers on SIGINT), then the whole process group."""
  if process.poll() is None:
    process.send_signal(first_signal)
    try:
      process.wait(timeout=15)
    except subprocess.TimeoutExpired:
      pass
  with contextlib.suppress(ProcessLookupError):
    os.killpg(process.pid, signal.SIGKILL)  # its own group (start_new_session): leftovers
  process.wait(timeout=10)


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
  """A local job service and an external worker pool in their own processes:
  (job endpoint, worker pool address, job service pid, worker pool pid)."""
  logs = tmp_path_factory.mktemp("portable_logs")
  env = _subprocess_env()
  started = []
  try:
    job_port, pool_port = _free_port(), _free_port()
    job_log, pool_log = str(logs / "job_service.log"), str(logs / "worker_pool.log")

    def start(module: str, port_flag: str, log: str, stop_signal: int) -> None:
      with open(log, "wb") as out:
        process = subprocess.Popen(
          [sys.executable, "-m", module, port_flag],
          stdout=out,
          stderr=subprocess.STDOUT,
          env=env,
          cwd=REPO_ROOT,
          start_new_session=True,
        )
      started.append((process, stop_signal))

    start(
      "apache_beam.runners.portability.local_job_service_main",
      f"--port={job_port}",
      job_log,
      signal.SIGTERM,
    )
    start(
      "apache_beam.runners.worker.worker_pool_main",
      f"--service_port={pool_port}",
      pool_log,
      signal.SIGINT,
    )
    (job_service, _), (worker_pool, _) = started
    _wait_for_port(job_port, job_service, job_log, "Beam job service")
    _wait_for_port(pool_port, worker_pool, pool_log, "Beam worker pool")
    yield f"localhost:{job_port}", f"localhost:{pool_port}", job_service.pid, worker_pool.pid
  finally:
    for process, first_signal in started:
      _stop(process, first_signal)


@pytest.mark.parametrize("workers", [1, 2])
def test_run_on_portable_runner_with_external_workers(
  workers, portable_services, tiny_export, tmp_path
):
  job_endpoint, pool_address, _, _ = portable_services
  export_dir, metadata = tiny_export
  images = tmp_path / "images"
  images.mkdir()
  for index, (width, height) in enumerate(SIZES):
    image, _ = synthetic.pet_scene(width, height, seed=index)
    (images / f"pet_{index}.png").write_bytes(synthetic.encode(image, "PNG"))
  (images / "notes.png").write_bytes(b"not an image")
  output = str(tmp_path / "out")  # a local path: the workers run on this machine
  argv = [
    "--input",
    str(images / "*.png"),
    "--output",
    output,
    "--model",
    export_dir,
    "--batch-size",
    "4",
    "--runner=PortableRunner",
    f"--job_endpoint={job_endpoint}",
    "--environment_type=EXTERNAL",
    f"--environment_config={pool_address}",
    f"--sdk_worker_parallelism={workers}",
  ]

  # What `segbeam run` does, keeping the result to read the job's metrics.
  options, beam_args = options_lib.parse_args(argv)
  pipeline = beam.Pipeline(options=beam_options.pipeline_options(beam_args))
  loads_before = inference.loads_in_this_process()
  job.add_to(pipeline, options)
  result = pipeline.run()
  assert result.wait_until_finish() == beam.runners.runner.PipelineState.DONE

  accounting.assert_accounted_for(output, inputs_seen=6)
  manifest = layout.read_manifest(output)
  counts = manifest["counts"]
  assert (counts["inputs_seen"], counts["segmented"], counts["failed"]) == (6, 5, 1)
  assert counts["failed_by_stage"] == {"validate": 1}
  assert manifest["conservation"]["holds"]
  rows = pq.read_table(manifest["files"]["segments"]).to_pylist()
  assert sorted((r["image_id"], r["width"], r["height"]) for r in rows) == sorted(
    (f"pet_{i}.png", w, h) for i, (w, h) in enumerate(SIZES)
  )
  assert {r["model_version"] for r in rows} == {metadata.version}

  # The job's metrics come back from the SDK workers through the job service: they counted the
  # inputs and loaded the model (Beam's RunInference times each load) ...
  metrics = result.metrics().query(MetricsFilter().with_namespace(constants.METRICS_NAMESPACE))
  counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
  assert counters["inputs_seen"] == 6 and counters["segmented"] == 5
  load_times = [
    m.committed
    for m in metrics["distributions"]
    if m.key.metric.name == "load_model_latency_milli_secs"
  ]
  assert load_times and sum(d.count for d in load_times) >= 1
  # ... while this process, which built and submitted the pipeline, loaded none.
  assert inference.loads_in_this_process() == loads_before
