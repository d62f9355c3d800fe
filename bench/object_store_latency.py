"""Reading from an object store with per-request latency: loose image files against the same
photos packed into TFRecord shards.

The GCS emulator (tests/gcs_emulator.py, a real gcp-storage-emulator) sits behind a proxy that
adds a fixed latency to every request and records each one (tests/latency_proxy.py, in a
process of its own). For each
latency, `segbeam run` with the null model (bench/null_model.py: reading is what is measured)
reads --small and --large photos as loose objects and as shards; the difference drops
start-up out:

  marginal img/s        = (large - small) / (wall(large) - wall(small)), fastest of --repeats
  CPU ms per image      = the same difference of CPU time: segbeam's (this process), and the
                          emulator's and the proxy's, which share this machine's cores
  requests per image    = requests naming one object (its metadata or its bytes) / images; the
                          listing's and the run's own (bucket checks) are per run
  max reads in flight   = the most media requests the proxy answered at once (large runs)

Then, at --sweep-latency, loose files at each --read-concurrency of --sweep, and the ways to
read them timed alone (Beam's open, one media GET, batches, ReadFile's window). Runs are
in-process (`run_command.main`, what `segbeam run` calls): Beam's credential lookup (about 20 s
offline) and the imports are paid once, not per run.

  python bench/object_store_latency.py [--latencies 0,10,30,100] [--small 60] [--large 960]
      [--repeats 3] [--sweep 1,4,16,64] [--sweep-latency 30]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the emulator and the proxy
import null_model  # noqa: E402
import throughput  # noqa: E402

from tests import gcs_emulator  # noqa: E402
from tests import latency_proxy  # noqa: E402

BUCKET = "segbeam-test"


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def _upload(folder: str, prefix: str) -> None:
  gcs_emulator.upload_folder(folder, BUCKET, prefix)


def _stage(photos: str, counts: list[int], work: str) -> dict:
  """Each count's photos as loose objects and as shards on the emulator: {(kind, count):
  pattern}."""
  from segbeam.commands import pack

  patterns = {}
  for count in counts:
    folder = os.path.join(work, f"photos-{count}")
    throughput.make_inputs(photos, count, folder)
    _upload(folder, f"loose-{count}")
    patterns[("loose", count)] = f"gs://{BUCKET}/loose-{count}/*"
    shards = os.path.join(work, f"shards-{count}")
    os.makedirs(shards)
    pack.pack(folder, os.path.join(shards, "pets"), num_shards=max(1, count // 60))
    _upload(shards, f"shards-{count}")
    patterns[("shards", count)] = f"gs://{BUCKET}/shards-{count}/*"
  return patterns


def _children_cpu() -> float:
  """CPU seconds so far of this process's children: the emulator and the proxy."""
  total, me = 0, os.getpid()
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == me:  # the fields after the name: state, ppid, ..., utime, stime
      total += int(fields[11]) + int(fields[12])
  return total / os.sysconf("SC_CLK_TCK")


def _run(pattern: str, output: str, model: str, extra: list[str]) -> tuple[float, float, float]:
  """Wall seconds, this process's CPU seconds (segbeam's) and the emulator's and proxy's, of
  one in-process `segbeam run`."""
  from segbeam.commands import run as run_command

  args = ["--input", pattern, "--output", output, "--model", model, "--overwrite", "--quiet"]
  start, cpu, rig = time.perf_counter(), time.process_time(), _children_cpu()
  with contextlib.redirect_stdout(io.StringIO()):
    code = run_command.main([*args, *extra])
  if code != 0:
    raise RuntimeError(f"segbeam run over {pattern} exited {code}")
  return time.perf_counter() - start, time.process_time() - cpu, _children_cpu() - rig


class Measure:
  """Marginal rate and requests per image of one way of reading, at one latency: each size
  run `repeats` times, alternating, its fastest run kept (the least disturbed)."""

  def __init__(self, proxy, patterns, kind, counts, model, work, extra, repeats):
    runs = {count: [] for count in counts}
    for _ in range(repeats):
      for count in counts:
        proxy.clear()
        times = _run(patterns[(kind, count)], os.path.join(work, "out"), model, extra)
        requests = proxy.requests()
        media = [r for r in requests if r.is_media]
        per_object = len(media) + sum(r.is_object_metadata for r in requests)
        runs[count].append((*times, per_object, proxy.max_in_flight(media)))
    (small, large) = sorted(counts)

    def marginal(column: int) -> float:
      return min(r[column] for r in runs[large]) - min(r[column] for r in runs[small])

    self.rate = (large - small) / max(marginal(0), 1e-9)
    self.cpu_ms = 1000 * marginal(1) / (large - small)
    self.rig_cpu_ms = 1000 * marginal(2) / (large - small)
    self.requests = max(r[3] for r in runs[large]) / large
    self.in_flight = max(r[4] for r in runs[large])


def read_ways(pattern: str, concurrency: int, proxy) -> list[tuple[str, float, float]]:
  """Reads alone (no pipeline) of the files `pattern` matches, each way: (way, img/s,
  requests per image)."""
  from concurrent import futures

  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems

  from segbeam.pipeline import sources
  from segbeam.pipeline import tfrecord

  files = list(sources.iter_matches(pattern))
  limit = 256 << 20
  gcs = FileSystems.get_filesystem(pattern)._gcsIO()

  def beam_open(metadata):
    with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      return tfrecord.read_up_to(f, limit)

  def media(metadata):
    return sources._fetch_gcs_object(gcs, metadata.path, limit)

  pool = futures.ThreadPoolExecutor(concurrency)

  def batches():  # BatchElements first, then each batch read at once and waited for
    for start in range(0, len(files), concurrency):
      list(pool.map(media, files[start : start + concurrency]))

  ways = {
    "Beam's open (metadata, media, a read at the end), one at a time: before": lambda: [
      beam_open(m) for m in files
    ],
    "one media GET, one at a time (--read-concurrency 1)": lambda: [media(m) for m in files],
    f"batches of {concurrency}, each waited for whole (BatchElements + a pool)": batches,
    f"a window of {concurrency} in flight (ReadFile's pool)": lambda: list(pool.map(media, files)),
  }
  rates = []
  for way, read in ways.items():
    proxy.clear()
    start = time.perf_counter()
    read()
    seconds = time.perf_counter() - start
    per_object = sum(r.is_media or r.is_object_metadata for r in proxy.requests())
    rates.append((way, len(files) / seconds, per_object / len(files)))
  pool.shutdown()
  return rates


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--latencies", type=_ints, default=[0, 10, 30, 100], help="ms, per request")
  parser.add_argument("--small", type=int, default=60)
  parser.add_argument("--large", type=int, default=960)
  parser.add_argument("--read-concurrency", type=int, help="segbeam run's default when omitted")
  parser.add_argument("--sweep", type=_ints, default=[1, 4, 16, 64], help="read concurrencies")
  parser.add_argument("--sweep-latency", type=int, default=30, help="ms; 0: no sweep")
  parser.add_argument("--repeats", type=int, default=3, help="runs of each size, fastest kept")
  parser.add_argument("--photos", default=throughput.SHARED)
  args = parser.parse_args(argv)
  from segbeam import constants

  concurrency = args.read_concurrency or constants.DEFAULT_READ_CONCURRENCY
  work = tempfile.mkdtemp(prefix="segbeam-latency-")
  model = os.path.join(work, "null-export")
  with contextlib.redirect_stdout(io.StringIO()):
    null_model.write_null_export(model)
  counts = [args.small, args.large]
  with gcs_emulator.running_emulator() as url:
    patterns = _stage(args.photos, counts, work)
    print(
      f"machine: {throughput.cpu_model()}, {os.cpu_count()} cores; null model; "
      f"{args.small} and {args.large} photos differenced; --read-concurrency {concurrency}"
    )
    print(
      "\n| latency, ms | loose img/s | shards img/s | loose / shards | CPU ms/img, segbeam: "
      "loose | shards | CPU ms/img, emulator + proxy: loose | shards | requests per image: "
      "loose | shards | max reads in flight (loose) |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for latency in args.latencies:
      with latency_proxy.running_proxy_process(url, latency / 1000) as proxy:
        with latency_proxy.emulator_host(proxy.url):
          extra = ["--read-concurrency", str(concurrency)]
          loose = Measure(proxy, patterns, "loose", counts, model, work, extra, args.repeats)
          shards = Measure(proxy, patterns, "shards", counts, model, work, [], args.repeats)
      print(
        f"| {latency} | {loose.rate:.1f} | {shards.rate:.1f} | {loose.rate / shards.rate:.2f} | "
        f"{loose.cpu_ms:.2f} | {shards.cpu_ms:.2f} | {loose.rig_cpu_ms:.2f} | "
        f"{shards.rig_cpu_ms:.2f} | {loose.requests:.2f} | {shards.requests:.3f} | "
        f"{loose.in_flight} |"
      )
    if args.sweep_latency and args.sweep:
      print(
        f"\nloose files at {args.sweep_latency} ms per request, by --read-concurrency (one run "
        "of each size):\n\n"
        "| --read-concurrency | loose img/s | requests per image | max reads in flight |\n"
        "| --- | --- | --- | --- |"
      )
      with latency_proxy.running_proxy_process(url, args.sweep_latency / 1000) as proxy:
        with latency_proxy.emulator_host(proxy.url):
          for value in args.sweep:
            extra = ["--read-concurrency", str(value)]
            loose = Measure(proxy, patterns, "loose", counts, model, work, extra, 1)
            print(f"| {value} | {loose.rate:.1f} | {loose.requests:.2f} | {loose.in_flight} |")
          print(
            f"\nreads alone of the {args.small} loose files at {args.sweep_latency} ms, each "
            "way:\n\n| way | img/s | requests per image (object GETs) |\n| --- | --- | --- |"
          )
          for way, rate, requests in read_ways(patterns[("loose", args.small)], concurrency, proxy):
            print(f"| {way} | {rate:.1f} | {requests:.2f} |")
  shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
