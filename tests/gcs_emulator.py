"""A real GCS HTTP emulator (PyPI gcp-storage-emulator) on localhost, for gs:// tests, with
the generation preconditions it lacks added (`gcs_emulator_main`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running_emulator():
  """Starts the emulator, points STORAGE_EMULATOR_HOST at it, yields its URL."""
  port = _free_port()
  process = subprocess.Popen(
    [
      sys.executable,
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_main.py"),
      "start",
      "--host=localhost",
      f"--port={port}",
      "--in-memory",
      "--default-bucket=segbeam-test",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  url = f"http://localhost:{port}"
  # Its own opener: never a proxy from the environment, nor urllib's cached global opener.
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  previous = os.environ.get("STORAGE_EMULATOR_HOST")
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        opener.open(f"{url}/storage/v1/b", timeout=1)
        break
      except OSError:
        if time.monotonic() > deadline or process.poll() is not None:
          raise RuntimeError("the GCS emulator did not start") from None
        time.sleep(0.2)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
  finally:
    if previous is None:
      os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = previous
    process.terminate()
    process.wait(timeout=10)


def storage_client():
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage

  return storage.Client(credentials=AnonymousCredentials(), project="segbeam-test")


def upload_folder(local: str, bucket: str, prefix: str) -> None:
  target = storage_client().bucket(bucket)
  for root, _, files in os.walk(local):
    for name in files:
      path = os.path.join(root, name)
      target.blob(f"{prefix}/{os.path.relpath(path, local)}").upload_from_filename(path)
