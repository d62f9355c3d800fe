"""Validation before batching: format sniffed from the bytes, dimensions read from the header,
pixel cap enforced before anything is decoded."""

from __future__ import annotations

import io
from typing import Iterator, Optional

import apache_beam as beam
from PIL import Image

from segbeam.pipeline import records
from segbeam.pipeline import sources

DEFAULT_MAX_PIXELS = 50_000_000

# Formats the export's decoder reads (tf.io.decode_image), by their magic bytes.
SUPPORTED = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png", b"GIF87a": "gif",
             b"GIF89a": "gif", b"BM": "bmp"}
# Recognised so the error can name them.
UNSUPPORTED = {b"RIFF": "webp or another RIFF format", b"II*\x00": "tiff", b"MM\x00*": "tiff",
               b"\x00\x00\x00\x0cjP  ": "jpeg2000", b"%PDF": "pdf"}


def sniff_format(data: bytes) -> Optional[str]:
  """'jpeg', 'png', 'gif' or 'bmp' from the first bytes; None for anything else."""
  for magic, name in SUPPORTED.items():
    if data.startswith(magic):
      return name
  return None


def describe_unsupported(data: bytes) -> str:
  if not data:
    return "the file is empty"
  for magic, name in UNSUPPORTED.items():
    if data.startswith(magic):
      return f"{name} is not a supported format (JPEG, PNG, GIF, BMP)"
  if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
    return "HEIF/AVIF is not a supported format (JPEG, PNG, GIF, BMP)"
  return f"not an image: the first bytes {data[:8]!r} match no JPEG, PNG, GIF or BMP header"


def header_size(data: bytes) -> tuple[int, int]:
  """(width, height) from the image header; PIL reads only the header here, no pixels."""
  with Image.open(io.BytesIO(data)) as image:
    return image.size


class ValidateImage(beam.DoFn):
  """ImageRecord -> (ImageInfo, bytes), or a Failure on the FAILURES output."""

  def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    self._max_pixels = max_pixels
    self._failed = beam.metrics.Metrics.counter(sources.METRICS_NAMESPACE, "failed_validate")

  def setup(self):
    # Our own cap replaces PIL's decompression-bomb guard, which would raise on open.
    Image.MAX_IMAGE_PIXELS = None

  def process(self, record: records.ImageRecord) -> Iterator:
    failure = None
    image_format = sniff_format(record.data)
    if image_format is None:
      failure = records.Failure(record.image_id, record.source, records.STAGE_VALIDATE,
                                "UnsupportedFormat", describe_unsupported(record.data))
    else:
      try:
        width, height = header_size(record.data)
      except Exception as error:  # pylint: disable=broad-except  # any unreadable header
        failure = records.Failure.from_exception(record.image_id, record.source,
                                                 records.STAGE_VALIDATE, error)
      else:
        if width < 1 or height < 1:
          failure = records.Failure(record.image_id, record.source, records.STAGE_VALIDATE,
                                    "EmptyImage", f"header declares {width}x{height}")
        elif width * height > self._max_pixels:
          failure = records.Failure(
              record.image_id, record.source, records.STAGE_VALIDATE, "PixelCapExceeded",
              f"header declares {width}x{height} = {width * height:,} pixels, over the cap of "
              f"{self._max_pixels:,}")
    if failure is not None:
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(records.FAILURES, failure)
      return
    info = records.ImageInfo(record.image_id, record.source, image_format, width, height,
                             record.label)
    yield info, record.data
