"""Reading the same photos in each input format: loose files, TFRecord, Parquet (Hugging Face
Image columns) and WebDataset tars, on local disk and on an object store with per-request
latency (issue 35).

--small and --large photos (the sample's, repeated under distinct names and bytes) are packed by
`segbeam pack --format` (`pack.pack`) into shards of about --per-shard images each, as Ray and
Daft keep them, and read by `segbeam run` with the null model (bench/null_model.py: reading is
what is measured), in this process as in bench/object_store_latency.py. Object store: the GCS
emulator behind the latency proxy (tests/latency_proxy.py, in a process of its own, here
counting the bytes it answers with). Per format and place, the difference of the two sizes
drops start-up out:

  img/s                 = (large - small) / (wall(large) - wall(small)), fastest of --repeats
  CPU ms per image      = the same difference of this process's CPU time (segbeam's)
  read per input byte   = the same difference of the bytes read, over that of the inputs'
                          sizes: local, this process's `rchar` (/proc/self/io: every read()
                          of the run, cached or not); object store, the bodies the proxy
                          answered with (listings and metadata included)
  requests per image    = every request of the large run (listing included) / its images

  python bench/input_formats.py [--small 450] [--large 4500] [--repeats 2] [--latency 30]
      [--formats files,tfrecord,parquet,webdataset] [--places local,gcs] [--per-shard 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the emulator and the proxy
import null_model  # noqa: E402
import object_store_latency  # noqa: E402
import throughput  # noqa: E402

from tests import gcs_emulator  # noqa: E402
from tests import latency_proxy  # noqa: E402

FORMATS = ("files", "tfrecord", "parquet", "webdataset")
PLACES = ("local", "gcs")
# The counting proxy's own path: the body bytes answered since the last clear.
_SERVED_PATH = "/__input_formats/served"


def _names(text: str, allowed: tuple[str, ...]) -> list[str]:
  names = [v for v in text.split(",") if v]
  unknown = sorted(set(names) - set(allowed))
  if unknown:
    raise argparse.ArgumentTypeError(f"not one of {', '.join(allowed)}: {', '.join(unknown)}")
  return names


class _CountingProxy(latency_proxy.LatencyProxy):
  """A `LatencyProxy` that also adds up the bodies it answers with (their Content-Length)."""

  def __init__(self, upstream: str, latency_s: float):
    self.served = 0
    super().__init__(upstream, latency_s)

  def clear(self) -> None:
    super().clear()
    with self._lock:
      self.served = 0

  def _handler_class(self):
    proxy = self

    class Handler(super()._handler_class()):
      def _own(self) -> bool:
        if self.path != _SERVED_PATH:
          return super()._own()
        data = json.dumps(proxy.served).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

      def send_header(self, key, value):
        if key == "Content-Length" and not self.path.startswith("/__"):  # not its own answers
          with proxy._lock:
            proxy.served += int(value)
        super().send_header(key, value)

    return Handler


class _CountingProxyProcess(latency_proxy.ProxyProcess):
  def served(self) -> int:
    with self._opener.open(self.url + _SERVED_PATH, timeout=60) as answer:
      return json.load(answer)


@contextlib.contextmanager
def _counting_proxy(upstream: str, latency_s: float):
  """A `_CountingProxy` in a child process (its threads take nothing from segbeam's GIL)."""
  process = subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), "--serve-proxy", upstream, str(latency_s)],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    yield _CountingProxyProcess(process.stdout.readline().strip())
  finally:
    process.terminate()
    process.wait(timeout=10)


def distinct_inputs(photos: str, count: int, folder: str) -> None:
  """`count` of the photos, repeated under distinct names (`throughput.make_inputs`), each
  JPEG copy made distinct by a comment naming it: Parquet's dictionary encoding stores a
  repeat within a row group once, and a real dataset does not repeat its photos.

  Args:
    photos: the folder of photos.
    count: how many inputs.
    folder: where they are written.
  """
  for link in throughput.make_inputs(photos, count, folder):
    with open(link, "rb") as f:
      data = f.read()
    if data[:2] != b"\xff\xd8":  # not a JPEG: left a link
      continue
    comment = os.path.basename(link).encode()
    os.remove(link)
    with open(link, "wb") as f:  # SOI, then a COM segment (its length counts its own 2 bytes)
      f.write(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:])


def _size(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def stage(photos: str, counts: list[int], formats: list[str], per_shard: int, work: str) -> dict:
  """Each count's photos in each format, in a folder of its own.

  Args:
    photos: the folder of photos.
    counts: the sizes.
    formats: names of `FORMATS`; all but files written by `segbeam pack --format`.
    per_shard: the most images a shard holds.
    work: where the folders are made.

  Returns:
    {(format, count): (folder, bytes of its files)}.
  """
  from segbeam.commands import pack

  staged = {}
  for count in counts:
    folder = os.path.join(work, f"files-{count}")
    distinct_inputs(photos, count, folder)
    for name in formats:
      if name != "files":
        target = os.path.join(work, f"{name}-{count}")
        os.makedirs(target)
        shards = math.ceil(count / per_shard)
        pack.pack(folder, os.path.join(target, "pets"), num_shards=shards, shard_format=name)
        staged[(name, count)] = (target, _size(target))
      else:
        staged[(name, count)] = (folder, _size(folder))
  return staged


def _rchar() -> int:
  with open("/proc/self/io") as f:
    return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])


def _segmented(output: str) -> tuple[int, int]:
  """(segments rows, error rows) of the run written to `output`."""
  import pyarrow.parquet as pq

  def rows(table: str) -> int:
    folder = os.path.join(output, table)
    if not os.path.isdir(folder):
      return 0
    names = [n for n in os.listdir(folder) if n.endswith(".parquet")]
    return sum(pq.read_metadata(os.path.join(folder, n)).num_rows for n in names)

  return rows("segments"), rows("errors")


class Result:
  """One format at one place: its runs of each size (wall, CPU, bytes read, requests), the
  fastest kept."""

  def __init__(self, sizes: dict[int, int]):
    self.sizes = sizes  # count -> input bytes
    self.runs: dict[int, list[tuple[float, float, int, int]]] = {c: [] for c in sizes}
    self.outcome = ""

  def marginal(self, column: int) -> float:
    small, large = sorted(self.sizes)
    return min(r[column] for r in self.runs[large]) - min(r[column] for r in self.runs[small])

  def row(self, name: str, place: str, per_shard: int) -> str:
    small, large = sorted(self.sizes)
    images = large - small
    files = "1 per image" if name == "files" else f"{math.ceil(large / per_shard)}"
    seconds = self.marginal(0)
    rate = f"{images / seconds:.1f}" if seconds > 0 else "- (too few images)"
    cpu_ms = 1000 * self.marginal(1) / images
    read = self.marginal(2) / (self.sizes[large] - self.sizes[small])
    requests = "-" if place == "local" else f"{max(r[3] for r in self.runs[large]) / large:.3f}"
    return (
      f"| {name} | {place} | {files} | {self.sizes[large] / 2**20:,.0f} | {rate} | "
      f"{cpu_ms:.2f} | {read:.3f} | {requests} | {self.outcome} |"
    )


def measure(target: dict, results: dict, place: str, work: str, model: str, proxy=None) -> None:
  """One run of each format and size at `place`, onto `results`; a run that does not segment
  every image stops the bench.

  Args:
    target: (format, count) -> what --input names.
    results: (format, place) -> its `Result`.
    place: local or gcs.
    work: where the runs write.
    model: the null export.
    proxy: the counting proxy in front of the emulator (gcs), or None.
  """
  for (name, count), pattern in target.items():
    if proxy is not None:
      proxy.clear()
    output = os.path.join(work, "out")
    before = _rchar()
    wall, cpu, _ = object_store_latency._run(pattern, output, model, [])
    read = proxy.served() if proxy is not None else _rchar() - before
    requests = len(proxy.requests()) if proxy is not None else 0
    results[(name, place)].runs[count].append((wall, cpu, read, requests))
    segments, errors = _segmented(output)
    if segments != count:
      raise RuntimeError(f"{name} at {place}: {segments} of {count} segmented, {errors} errors")
    results[(name, place)].outcome = f"{segments}/{count} segmented, {errors} errors"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", type=int, default=450)
  parser.add_argument("--large", type=int, default=4500)
  parser.add_argument("--repeats", type=int, default=2, help="runs of each size, fastest kept")
  parser.add_argument("--latency", type=int, default=30, help="ms per object-store request")
  parser.add_argument(
    "--formats", type=lambda t: _names(t, FORMATS), default=list(FORMATS), help="comma-separated"
  )
  parser.add_argument(
    "--places", type=lambda t: _names(t, PLACES), default=list(PLACES), help="comma-separated"
  )
  parser.add_argument("--per-shard", type=int, default=1000, help="images per shard, at most")
  parser.add_argument("--photos", default=throughput.SHARED)
  args = parser.parse_args(argv)
  if not 0 < args.small < args.large:
    parser.error("--small must be positive and below --large")
  counts = [args.small, args.large]
  work = tempfile.mkdtemp(prefix="segbeam-formats-")
  model = os.path.join(work, "null-export")
  with contextlib.redirect_stdout(io.StringIO()):
    null_model.write_null_export(model)
  staged = stage(args.photos, counts, args.formats, args.per_shard, work)
  results = {
    (name, place): Result({count: staged[(name, count)][1] for count in counts})
    for place in args.places
    for name in args.formats
  }
  print(
    f"machine: {throughput.cpu_model()}, {os.cpu_count()} cores; null model; {args.small} and "
    f"{args.large} photos differenced, fastest of {args.repeats}; at most {args.per_shard} "
    f"images per shard; object store: the GCS emulator at {args.latency} ms per request"
  )
  start = time.perf_counter()
  local = {key: os.path.join(folder, "*") for key, (folder, _) in staged.items()}
  with gcs_emulator.running_emulator() as url:
    remote = {}
    if "gcs" in args.places:
      for (name, count), (folder, _) in staged.items():
        object_store_latency._upload(folder, f"{name}-{count}")
        remote[(name, count)] = f"gs://{object_store_latency.BUCKET}/{name}-{count}/*"
    for place in args.places:
      # A first run pays the imports and Beam's credential lookup: not timed.
      warm_up = (local if place == "local" else remote)[(args.formats[0], args.small)]
      with contextlib.ExitStack() as stack:
        proxy = None
        if place == "gcs":
          proxy = stack.enter_context(_counting_proxy(url, args.latency / 1000))
          stack.enter_context(latency_proxy.emulator_host(proxy.url))
        object_store_latency._run(warm_up, os.path.join(work, "out"), model, [])
        for _ in range(args.repeats):
          measure(local if place == "local" else remote, results, place, work, model, proxy)
  print(
    "\n| format | place | files | input MB | img/s | CPU ms/img | read per input byte | "
    "requests per image | large run |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  )
  for place in args.places:
    for name in args.formats:
      print(results[(name, place)].row(name, place, args.per_shard))
  print(f"\n{time.perf_counter() - start:.0f} s of uploads and runs")
  shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  if sys.argv[1:2] == ["--serve-proxy"]:  # the proxy's child process: prints its URL, serves
    child = _CountingProxy(sys.argv[2], float(sys.argv[3]))
    print(child.url, flush=True)
    child._server.serve_forever()
  sys.exit(main())
