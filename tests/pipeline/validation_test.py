import gzip
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from PIL import Image

from segbeam import constants
from segbeam.pipeline import elements
from segbeam.pipeline import tfrecord
from segbeam.pipeline import validation
from tests import synthetic
from tests.pipeline import hostile_corpus as corpus

PIXELS = np.zeros((6, 9, 3), np.uint8)


@pytest.mark.parametrize(
  "fmt,expected",
  [
    ("JPEG", "jpeg"),
    ("PNG", "png"),
    ("GIF", "gif"),
    ("BMP", "bmp"),
    ("WEBP", None),
    ("TIFF", None),
  ],
)
def test_format_comes_from_the_bytes(fmt, expected):
  assert validation.sniff_format(synthetic.encode(PIXELS, fmt)) == expected


@pytest.mark.parametrize(
  "data,words",
  [
    (b"", "empty"),
    (b"hello world", "not an image"),
    (synthetic.encode(PIXELS, "WEBP"), "webp"),
    (synthetic.encode(PIXELS, "TIFF"), "tiff"),
    (gzip.compress(b"an image"), "a name ending in .gz"),
    (tfrecord.encode_record(b"an Example"), "--input-format tfrecord reads such files as shards"),
  ],
)
def test_unsupported_bytes_are_named(data, words):
  assert words in validation.describe_unsupported(data)


def _validate(recs, max_pixels):
  with TestPipeline() as p:
    out = (
      p
      | beam.Create(recs)
      | beam.ParDo(validation.ValidateImage(max_pixels=max_pixels)).with_outputs(
        elements.FAILURES, main="images"
      )
    )
    assert_that(
      out.images | beam.Map(lambda kv: (kv[0].image_id, kv[0].format, kv[0].width, kv[0].height)),
      equal_to([("ok", "png", 9, 6)]),
      label="images",
    )
    assert_that(
      out[elements.FAILURES] | beam.Map(lambda f: (f.image_id, f.stage, f.error_type)),
      equal_to(
        [
          ("text", "validate", "UnsupportedFormat"),
          ("big", "validate", "PixelCapExceeded"),
          ("header", "validate", "CorruptHeader"),
        ]
      ),
      label="failures",
    )


def test_validate_emits_images_or_failures():
  big = synthetic.encode(np.zeros((20, 20, 3), np.uint8), "PNG")
  _validate(
    [
      elements.ImageRecord("ok", "s", synthetic.encode(PIXELS, "PNG")),
      elements.ImageRecord("text", "s", b"just text"),
      elements.ImageRecord("big", "s", big),
      elements.ImageRecord("header", "s", b"\x89PNG\r\n\x1a\n broken"),
    ],
    max_pixels=100,
  )


def _valid(data: bytes, max_pixels: int = constants.DEFAULT_MAX_PIXELS):
  result = validation.validate(elements.ImageRecord("x", "mem", data), max_pixels)
  assert not isinstance(result, elements.Failure), result
  return result


def _failure(data: bytes, max_pixels: int = constants.DEFAULT_MAX_PIXELS) -> elements.Failure:
  result = validation.validate(elements.ImageRecord("x", "mem", data), max_pixels)
  assert isinstance(result, elements.Failure), result
  return result


def _pixels(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


def _graph_decode(data: bytes) -> np.ndarray:
  """What the export's serving graph decodes from `data` (the export's own function)."""
  import tensorflow as tf

  from segbeam.model import preprocessing

  return preprocessing.decode_image(tf.constant(data), 3).numpy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_hands_on_the_pixels_a_viewer_shows(orientation):
  stored = np.random.default_rng(orientation).integers(0, 255, (5, 8, 3)).astype(np.uint8)
  png = corpus.encode(Image.fromarray(stored), "PNG", exif=corpus.exif_bytes(orientation))
  info, data = _valid(png)
  shown = corpus.oriented(stored, orientation)
  assert info.exif_orientation == orientation
  assert (info.height, info.width) == shown.shape[:2]
  np.testing.assert_array_equal(_pixels(data), shown)
  np.testing.assert_array_equal(_graph_decode(data), shown)  # and the graph decodes them so
  assert (data == png) == (orientation == 1)  # upright images go on untouched


def test_a_rotated_jpeg_goes_on_upright_with_its_size_turned():
  stored = corpus.scene(40, 24)
  stored[:4, :6] = (255, 0, 0)  # a red corner, top left as stored
  jpeg = corpus.encode(Image.fromarray(stored), "JPEG", quality=95, exif=corpus.exif_bytes(6))
  info, data = _valid(jpeg)
  assert (info.format, info.width, info.height, info.exif_orientation) == ("jpeg", 24, 40, 6)
  shown = _graph_decode(data)
  assert shown.shape == (40, 24, 3)
  # Orientation 6 turns the image clockwise: the top-left corner ends top right.
  assert shown[1, 22, 0] > 200 and shown[1, 22, 1] < 60 and shown[1, 1, 0] < 200
  expected = corpus.oriented(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")), 6)
  np.testing.assert_array_equal(shown, expected)


@pytest.mark.parametrize(
  "exif",
  [
    corpus.exif_bytes(0),
    corpus.exif_bytes(9),
    b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
    b"Exif\x00\x00",
  ],
)
def test_a_broken_or_unknown_orientation_is_ignored_as_viewers_do(exif):
  jpeg = corpus.encode(Image.fromarray(corpus.scene(20, 10)), "JPEG", exif=exif)
  info, data = _valid(jpeg)
  assert (info.width, info.height, info.exif_orientation) == (20, 10, 1) and data == jpeg


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpegs_go_to_the_graph_untouched_and_it_decodes_them_as_pil_does(mode):
  jpeg = corpus.encode(Image.fromarray(corpus.scene(30, 20)).convert(mode), "JPEG", quality=95)
  info, data = _valid(jpeg)
  assert data == jpeg and (info.width, info.height) == (30, 20)
  expected = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.int16)
  difference = np.abs(_graph_decode(data).astype(np.int16) - expected)
  # The graph's libjpeg uses the fast integer DCT, PIL the accurate one: a few levels apart.
  assert difference.mean() < 2 and difference.max() <= 16


def test_a_16_bit_png_goes_to_the_graph_untouched_and_is_scaled_to_8_bits():
  wide = (np.arange(20 * 30).reshape(20, 30) * 109).astype(np.uint16)
  png = corpus.encode(Image.fromarray(wide), "PNG")
  info, data = _valid(png)
  assert data == png and info.format == "png"
  decoded = _graph_decode(data)
  assert np.abs(decoded[..., 0].astype(np.int32) - np.round(wide / 257)).max() <= 1


@pytest.mark.parametrize("mode", ["RGB", "P", "L", "1"])
def test_bmps_are_decoded_here_as_pil_shows_them(mode):
  image = Image.fromarray(corpus.scene(30, 20)).convert(mode)
  info, data = _valid(corpus.encode(image, "BMP"))
  assert info.format == "bmp" and data.startswith(b"\x89PNG")
  # The graph alone reads an 8-bit palette BMP as gray and a 1-bit one not at all.
  np.testing.assert_array_equal(_graph_decode(data), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("later_frames", ["whole", "cut short"])
def test_an_animated_gif_goes_on_as_a_png_of_its_first_frame(later_frames):
  first = Image.fromarray(corpus.scene(30, 20)).convert("P")
  gif = corpus.encode(
    first, "GIF", save_all=True, append_images=[Image.new("P", (30, 20), i) for i in (1, 2)]
  )
  if later_frames == "cut short":  # the last frame's pixel data ends early: never decoded here
    gif = gif[: gif.rindex(b"\x2c\x00\x00\x00\x00") + 14]
  info, data = _valid(gif)
  assert (info.format, info.width, info.height) == ("gif", 30, 20)
  # The graph gets one PNG frame instead of a GIF it would decode whole, every frame.
  assert data.startswith(b"\x89PNG") and not getattr(
    Image.open(io.BytesIO(data)), "is_animated", False
  )
  np.testing.assert_array_equal(_graph_decode(data), np.asarray(first.convert("RGB")))


@pytest.mark.parametrize(
  "data",
  [
    corpus.png_bomb(),  # 40,000 x 40,000
    corpus.gif_with_screen(corpus.encode(Image.new("P", (4, 4)), "GIF"), 65535, 65535),
    corpus.bmp_with_size(corpus.encode(Image.new("RGB", (8, 8)), "BMP"), 60_000, 60_000),
    corpus.encode(Image.new("RGB", (3000, 2000)), "JPEG", exif=corpus.exif_bytes(6)),
  ],
  ids=["png", "gif", "bmp", "rotated-jpeg"],
)
def test_the_pixel_cap_comes_before_any_decode(data):
  # None of these holds the pixels its header declares: a decode would fail instead.
  failure = _failure(data[:2000], max_pixels=5_000_000)
  assert (failure.stage, failure.error_type) == ("validate", "PixelCapExceeded")
  assert "over the cap of 5,000,000" in failure.message


@pytest.mark.parametrize(
  "data,stage,error_type,words",
  [
    (b"\x89PNG\r\n\x1a\n broken", "validate", "CorruptHeader", "png header unreadable"),
    (
      corpus.png_with_size(corpus.encode(Image.new("RGB", (4, 4)), "PNG"), 0, 4),
      "validate",
      "CorruptHeader",
      "png header unreadable",
    ),
    (b"BM not really", "validate", "CorruptHeader", "bmp header unreadable"),
    (
      corpus.encode(Image.new("RGB", (40, 40)), "BMP")[:300],
      "decode",
      "CorruptImageData",
      "bmp pixels unreadable: OSError: image file is truncated",
    ),
  ],
)
def test_unreadable_images_fail_with_a_stage_a_type_and_a_repeatable_reason(
  data, stage, error_type, words
):
  failure = _failure(data)
  assert (failure.stage, failure.error_type) == (stage, error_type)
  assert words in failure.message and "0x" not in failure.message  # no object addresses


@pytest.mark.parametrize(
  "data,size",
  [
    (synthetic.encode(synthetic.pet_scene(31, 24, 1)[0], "JPEG"), (31, 24)),
    (synthetic.encode(synthetic.pet_scene(20, 30, 2)[0], "BMP"), (20, 30)),
    (corpus.png_bomb(40_000, 40_000), (40_000, 40_000)),  # declared, never decoded
    (b"\xff\xd8\xff\xe0" + b"garbage" * 4, None),  # a JPEG marker, no readable header
    (b"a note saved under an image name", None),
    (b"", None),
  ],
)
def test_header_size_reads_only_the_header(data, size):
  assert validation.header_size(data) == size
