"""Validation before batching: format sniffed from the bytes, dimensions read from the header,
pixel cap enforced before anything is decoded.

Most images go on to the serving graph as they are. The graph decodes with
`tf.io.decode_image`, which would give some images differently from what a person sees in an
image viewer, or decode far more than the header declares; those few are decoded here, with
PIL, after the pixel cap, and handed on as lossless PNG of the upright pixels:
- an EXIF orientation other than 1 (the graph ignores EXIF): the pixels are turned as viewers
  turn them, so the mask lines up with what a person sees, and the row records the orientation;
- any GIF: the graph decodes every frame of an animation to keep the first (a small GIF of
  many large frames takes gigabytes and seconds there), and sizes the image by its first frame
  instead of its canvas; here only the first frame is decoded, onto the canvas viewers show;
- any BMP: the graph reads only 24- and 32-bit uncompressed files of the exact size their
  header implies, and reads 8-bit palette files as gray.
CMYK JPEGs and 16-bit PNGs need nothing: the graph decodes them as PIL does (a test checks it).
"""

from __future__ import annotations

import io
from typing import Iterator, Optional, Union

import apache_beam as beam
from PIL import BmpImagePlugin
from PIL import GifImagePlugin
from PIL import Image
from PIL import JpegImagePlugin
from PIL import PngImagePlugin

from segbeam import constants
from segbeam import messages
from segbeam.pipeline import elements
from segbeam.pipeline import progress
from segbeam.pipeline import tfrecord

# Formats the export's decoder reads (tf.io.decode_image), by their magic bytes.
SUPPORTED = {
  b"\xff\xd8\xff": "jpeg",
  b"\x89PNG\r\n\x1a\n": "png",
  b"GIF87a": "gif",
  b"GIF89a": "gif",
  b"BM": "bmp",
}
# Recognised so the error can name them.
UNSUPPORTED = {
  b"RIFF": "webp or another RIFF format",
  b"II*\x00": "tiff",
  b"MM\x00*": "tiff",
  b"\x00\x00\x00\x0cjP  ": "jpeg2000",
  b"%PDF": "pdf",
}
# Each sniffed format is opened by its own PIL plugin, directly rather than through
# Image.open: PIL never tries another format on bytes that only look like one, a corrupt header
# raises the plugin's own reason (Image.open replaces it with "cannot identify image file
# <_io.BytesIO object at 0x...>", an address that differs on every run), and PIL's global
# decompression-bomb guard, which our own cap replaces, stays as it is.
_OPENERS = {
  "jpeg": JpegImagePlugin.jpeg_factory,
  "png": PngImagePlugin.PngImageFile,
  "gif": GifImagePlugin.GifImageFile,
  "bmp": BmpImagePlugin.BmpImageFile,
}

EXIF_ORIENTATION_TAG = 0x0112
# As ImageOps.exif_transpose: orientation -> the transposition that shows the image upright.
_UPRIGHT = {
  2: Image.Transpose.FLIP_LEFT_RIGHT,
  3: Image.Transpose.ROTATE_180,
  4: Image.Transpose.FLIP_TOP_BOTTOM,
  5: Image.Transpose.TRANSPOSE,
  6: Image.Transpose.ROTATE_270,
  7: Image.Transpose.TRANSVERSE,
  8: Image.Transpose.ROTATE_90,
}
# Modes that go into a PNG unchanged (and that the graph's PNG decoder reads); others are
# converted to RGB(A) first.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})


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
  if data.startswith(b"\x1f\x8b"):  # Beam decompresses by name only
    return "gzip-compressed data, read as it is: a name ending in .gz has it decompressed first"
  if tfrecord.starts_with_a_record(io.BytesIO(data)):
    return (
      "a TFRecord file, not an image (read as one for its name or --input-format): "
      "--input-format tfrecord reads such files as shards"
    )
  return f"not an image: the first bytes {data[:8]!r} match no JPEG, PNG, GIF or BMP header"


def _open(data: bytes, image_format: str) -> Image.Image:
  """Opens `data` with the plugin of its sniffed format; reads the header only."""
  return _OPENERS[image_format](io.BytesIO(data))


def header_size(data: bytes) -> Optional[tuple[int, int]]:
  """(width, height) as the header of an image in a supported format declares them, read
  without decoding; None when `data` is no such image or its header is unreadable."""
  image_format = sniff_format(data)
  if image_format is None:
    return None
  try:
    with _open(data, image_format) as image:
      return image.size
  except Exception:  # any unreadable header: `validate` says why
    return None


def exif_orientation(image: Image.Image) -> int:
  """The EXIF orientation (1 to 8) of an opened image; 1 without one, or with an unreadable or
  out-of-range one, which viewers ignore too.

  Reads only EXIF that PIL met while reading the header (a JPEG's APP1, a PNG's eXIf before the
  pixels): `Image.getexif` would decode a PNG whole to look further.
  """
  raw = image.info.get("exif")
  if not raw or not isinstance(raw, bytes):
    return 1
  try:
    exif = Image.Exif()
    exif.load(raw)
    value = exif.get(EXIF_ORIENTATION_TAG, 1)
  except Exception:  # broken EXIF: shown as stored
    return 1
  return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
  """The image as viewers show it for an EXIF orientation (1 to 8; others change nothing): the
  same turn validation gives the pixels it hands on, for anything drawn over them later (a
  label, an overlay)."""
  return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


# Formats always decoded here, never by the graph (see the module docstring).
_DECODED_HERE = frozenset({"gif", "bmp"})


def decode_upright_png(data: bytes, image_format: str, orientation: int) -> tuple[bytes, int, int]:
  """Decodes the first frame with PIL, turns it upright for its EXIF orientation, and encodes
  it as PNG: (png bytes, width, height). Call only after the pixel cap."""
  with _open(data, image_format) as image:
    image.load()  # the first frame only; raises on truncated or corrupt data
    if image.mode not in _PNG_MODES:
      if image.getbands() == ("I",):  # 16-bit and wider gray
        image = image.convert("I;16")
      else:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image = upright(image, orientation)
    buffer = io.BytesIO()
    # Lossless and fast: the graph decodes it once, the size matters little.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), image.width, image.height


def _explain(what: str, error: BaseException) -> str:
  """'<what>: <exception type>: <its message on one line>', at most 1,000 characters."""
  reason = messages.one_line(error, limit=None) or "no message"
  return f"{what}: {type(error).__name__}: {reason}"[:1000]


def validate(
  record: elements.ImageRecord, max_pixels: int = constants.DEFAULT_MAX_PIXELS
) -> Union[tuple[elements.ImageInfo, bytes], elements.Failure]:
  """One record -> (ImageInfo, the bytes the serving graph should decode), or the Failure that
  explains why it cannot be segmented. Never raises for any input bytes.

  Only headers are read until the pixel cap has passed; a full decode happens here only for the
  images listed in the module docstring.
  """

  def failure(stage: str, error_type: str, message: str) -> elements.Failure:
    return elements.Failure(
      record.image_id, record.source, stage, error_type, message, record.filename
    )

  data = record.data
  image_format = sniff_format(data)
  if image_format is None:
    return failure(elements.STAGE_VALIDATE, "UnsupportedFormat", describe_unsupported(data))
  try:
    with _open(data, image_format) as image:
      # For a GIF, the canvas, widened by PIL where the first frame reaches past it: what the
      # first frame decodes to below. Later frames are never decoded.
      width, height = image.size
      orientation = exif_orientation(image)
  except Exception as error:  # any unreadable header
    return failure(
      elements.STAGE_VALIDATE, "CorruptHeader", _explain(f"{image_format} header unreadable", error)
    )
  if width < 1 or height < 1:
    return failure(elements.STAGE_VALIDATE, "EmptyImage", f"header declares {width}x{height}")
  if width * height > max_pixels:
    return failure(
      elements.STAGE_VALIDATE,
      "PixelCapExceeded",
      f"header declares {width}x{height} = {width * height:,} pixels, over the cap "
      f"of {max_pixels:,}",
    )
  if orientation != 1 or image_format in _DECODED_HERE:
    try:
      data, width, height = decode_upright_png(data, image_format, orientation)
    except Exception as error:  # corrupt pixel data
      return failure(
        elements.STAGE_DECODE,
        "CorruptImageData",
        _explain(f"{image_format} pixels unreadable", error),
      )
  return elements.ImageInfo(
    record.image_id,
    record.source,
    image_format,
    width,
    height,
    record.label,
    exif_orientation=orientation,
    filename=record.filename,
  ), data


class ValidateImage(beam.DoFn):
  """ImageRecord -> (ImageInfo, bytes), or a Failure on the FAILURES output (see `validate`)."""

  def __init__(self, *, max_pixels: int = constants.DEFAULT_MAX_PIXELS):
    self._max_pixels = max_pixels
    self._failed = progress.Counter(progress.FAILED_VALIDATE)

  def process(self, record: elements.ImageRecord) -> Iterator:
    result = validate(record, self._max_pixels)
    if isinstance(result, elements.Failure):
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(elements.FAILURES, result)
    else:
      yield result
