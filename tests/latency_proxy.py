"""A threaded HTTP proxy that adds a fixed latency to every request and records each one: put in
front of the GCS emulator (`gcs_emulator`), it stands for a real bucket's per-request latency,
so that tests and bench/object_store_latency.py can see how many requests an image costs and
how many are in flight at once.

  with gcs_emulator.running_emulator() as url, latency_proxy.running_proxy(url, 0.03) as proxy:
    os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
    ...
    proxy.max_in_flight(), proxy.requests_for("o/")
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from typing import Iterator, Optional

# The proxy's own paths, answered by a proxy in its own process (`running_proxy_process`).
_REQUESTS_PATH = "/__latency_proxy/requests"
_CLEAR_PATH = "/__latency_proxy/clear"

# Not forwarded either way: they describe one connection, not the request.
_HOP_BY_HOP = frozenset(
  {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)


@dataclasses.dataclass(frozen=True)
class Request:
  method: str
  path: str  # with its query
  start: float  # time.monotonic() when it arrived
  end: float  # when its answer was sent
  status: int

  @property
  def is_media(self) -> bool:
    """An object's bytes (a JSON API download), not its metadata or a listing."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
    return self.method == "GET" and query.get("alt") == ["media"]

  @property
  def is_object_metadata(self) -> bool:
    """One object's metadata: GET .../b/<bucket>/o/<name> without alt=media."""
    path = urllib.parse.urlsplit(self.path).path
    return self.method == "GET" and "/o/" in path and not self.is_media


class LatencyProxy:
  """Forwards to `upstream` after sleeping `latency_s` per request, on one thread per
  connection (HTTP/1.1 keep-alive, as a client's pooled connections to GCS)."""

  def __init__(self, upstream: str, latency_s: float):
    self.latency_s = latency_s
    parts = urllib.parse.urlsplit(upstream)
    self._upstream = (parts.hostname, parts.port)
    self._upstream_url = upstream.rstrip("/").encode()
    self._lock = threading.Lock()
    self._requests: list[Request] = []
    self._server = http.server.ThreadingHTTPServer(("localhost", 0), self._handler_class())
    self._server.daemon_threads = True
    self.url = f"http://localhost:{self._server.server_address[1]}"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def start(self) -> "LatencyProxy":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()

  def requests(self) -> list[Request]:
    with self._lock:
      return list(self._requests)

  def clear(self) -> None:
    with self._lock:
      self._requests.clear()

  def max_in_flight(self, requests: Optional[list[Request]] = None) -> int:
    """The most requests that were being answered at one time."""
    events = []
    for request in self.requests() if requests is None else requests:
      events += [(request.start, 1), (request.end, -1)]
    in_flight = peak = 0
    for _, step in sorted(events):  # an end before a start at the same instant
      in_flight += step
      peak = max(peak, in_flight)
    return peak

  def _record(self, request: Request) -> None:
    with self._lock:
      self._requests.append(request)

  def _handler_class(self):
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet: the records are the log
        pass

      def _own(self) -> bool:
        """Answers the proxy's own paths: its records as JSON, or clearing them."""
        if self.path not in (_REQUESTS_PATH, _CLEAR_PATH):
          return False
        if self.path == _CLEAR_PATH:
          proxy.clear()
        data = json.dumps([dataclasses.astuple(r) for r in proxy.requests()]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

      def _forward(self):
        if self._own():
          return
        start = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        time.sleep(proxy.latency_s)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
        try:
          upstream.request(self.command, self.path, body=body, headers=headers)
          answer = upstream.getresponse()
          data = answer.read()
          if "json" in (answer.getheader("Content-Type") or ""):
            # An object's mediaLink names the emulator: its bytes must come through here too,
            # as a real bucket's come from the same front.
            data = data.replace(proxy._upstream_url, proxy.url.encode())
          # Recorded before it is answered: a client that asks for the records as soon as its
          # answer came finds it there (recorded after, the last could be missing).
          proxy._record(Request(self.command, self.path, start, time.monotonic(), answer.status))
          self.send_response(answer.status, answer.reason)
          for key, value in answer.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
              self.send_header(key, value)
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          if self.command != "HEAD":
            self.wfile.write(data)
          self.wfile.flush()
        finally:
          upstream.close()

      do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    return Handler


@contextlib.contextmanager
def running_proxy(upstream: str, latency_s: float) -> Iterator[LatencyProxy]:
  """A started proxy to `upstream` (the emulator's URL); stopped on exit."""
  proxy = LatencyProxy(upstream, latency_s).start()
  try:
    yield proxy
  finally:
    proxy.stop()


class ProxyProcess(LatencyProxy):
  """A `LatencyProxy` running in a process of its own (its threads then take nothing from the
  measured process's GIL), read and cleared through its own paths."""

  def __init__(self, url: str):  # noqa: D107  # LatencyProxy's server is the child's
    self.url = url
    self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

  def requests(self) -> list[Request]:
    with self._opener.open(self.url + _REQUESTS_PATH, timeout=60) as answer:
      return [Request(*row) for row in json.load(answer)]

  def clear(self) -> None:
    self._opener.open(self.url + _CLEAR_PATH, timeout=60).read()


@contextlib.contextmanager
def running_proxy_process(upstream: str, latency_s: float) -> Iterator[ProxyProcess]:
  """`running_proxy`, but in a child process (for benches)."""
  process = subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), upstream, str(latency_s)],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    proxy = ProxyProcess(process.stdout.readline().strip())
    yield proxy
  finally:
    process.terminate()
    process.wait(timeout=10)


@contextlib.contextmanager
def emulator_host(url: str) -> Iterator[None]:
  """STORAGE_EMULATOR_HOST pointing at `url` (the proxy) inside, as it was after."""
  previous = os.environ.get("STORAGE_EMULATOR_HOST")
  os.environ["STORAGE_EMULATOR_HOST"] = url
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = previous


if __name__ == "__main__":  # python latency_proxy.py UPSTREAM LATENCY_S: prints its URL, serves
  child = LatencyProxy(sys.argv[1], float(sys.argv[2]))
  print(child.url, flush=True)
  child._server.serve_forever()
