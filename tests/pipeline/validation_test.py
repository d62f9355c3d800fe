import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from segbeam.pipeline import records
from segbeam.pipeline import validation
from tests import synthetic

PIXELS = np.zeros((6, 9, 3), np.uint8)


@pytest.mark.parametrize("fmt,expected", [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"),
                                          ("BMP", "bmp"), ("WEBP", None), ("TIFF", None)])
def test_format_comes_from_the_bytes(fmt, expected):
  assert validation.sniff_format(synthetic.encode(PIXELS, fmt)) == expected


@pytest.mark.parametrize("data,words", [(b"", "empty"), (b"hello world", "not an image"),
                                        (synthetic.encode(PIXELS, "WEBP"), "webp"),
                                        (synthetic.encode(PIXELS, "TIFF"), "tiff")])
def test_unsupported_bytes_are_named(data, words):
  assert words in validation.describe_unsupported(data)


def _validate(recs, max_pixels):
  with TestPipeline() as p:
    out = (p | beam.Create(recs)
           | beam.ParDo(validation.ValidateImage(max_pixels=max_pixels)).with_outputs(
               records.FAILURES, main="images"))
    assert_that(out.images | beam.Map(lambda kv: (kv[0].image_id, kv[0].format, kv[0].width,
                                                  kv[0].height)),
                equal_to([("ok", "png", 9, 6)]), label="images")
    assert_that(out[records.FAILURES] | beam.Map(lambda f: (f.image_id, f.stage, f.error_type)),
                equal_to([("text", "validate", "UnsupportedFormat"),
                          ("big", "validate", "PixelCapExceeded"),
                          ("header", "validate", "UnidentifiedImageError")]), label="failures")


def test_validate_emits_images_or_failures():
  big = synthetic.encode(np.zeros((20, 20, 3), np.uint8), "PNG")
  _validate([records.ImageRecord("ok", "s", synthetic.encode(PIXELS, "PNG")),
             records.ImageRecord("text", "s", b"just text"),
             records.ImageRecord("big", "s", big),
             records.ImageRecord("header", "s", b"\x89PNG\r\n\x1a\n broken")], max_pixels=100)
