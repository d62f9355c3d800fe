"""Class masks as 8-bit grayscale PNG, written directly with zlib.

A mask is long runs of a few values. Deflate's run-length strategy on unfiltered rows is
faster than Pillow's PNG writer, even with the same strategy, whose choice of a filter per row
is most of its time (BENCHMARKS.md, Measured design choices); every image of a run is encoded
once.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY8 = (
  8,
  0,
  0,
  0,
  0,
)  # bit depth, colour type grayscale, deflate, adaptive filters, no interlace
_FILTER_NONE = 0


def _chunk(kind: bytes, payload: bytes) -> bytes:
  return (
    struct.pack(">I", len(payload))
    + kind
    + payload
    + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))
  )


def encode(mask: np.ndarray) -> bytes:
  """uint8 [height, width] -> PNG bytes that decode to exactly `mask`."""
  if mask.ndim != 2 or mask.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [height, width] mask, got {mask.dtype} {mask.shape}")
  height, width = mask.shape
  if not height or not width:
    raise ValueError(f"a PNG needs at least one pixel, got {width}x{height}")
  scanlines = np.empty((height, width + 1), np.uint8)  # each row starts with its filter type
  scanlines[:, 0] = _FILTER_NONE
  scanlines[:, 1:] = mask
  compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_RLE)
  data = compressor.compress(scanlines) + compressor.flush()
  header = struct.pack(">II5B", width, height, *_GRAY8)
  return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
