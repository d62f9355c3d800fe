"""The Parquet schemas of a run's output.

segments/*.parquet, one row per segmented image:
  image_id         string   unique within the run: the image's place in the input (see
                            `sources`): a file's relative path, or '<shard>#<record index>'
  source           string   file URI, or shard URI + '#<record index>'
  filename         string   the image's own name, which may repeat: a file's relative path, a
                            tf.Example's filename feature (null when it has none)
  format           string   jpeg, png, gif or bmp, from the bytes
  width, height    int32    the image's original size, as shown (after its EXIF orientation)
  exif_orientation int32    the EXIF orientation applied before segmenting (1 to 8; 1 when none),
                            so the mask lines up with the image as viewers show it
  mask_png         binary   8-bit grayscale PNG of class indices at the original size
  coverage_<class> float64  share of the image's pixels in the class (they sum to 1)
  pixels_<class>   int64    pixels in the class (they sum to width * height)
  dominant_class   string   the class with most pixels
  mean_confidence  float32  mean over pixels of the winning class probability
  gt_pixels        int64    with ground truth: labelled pixels compared (ignored ones left out)
  gt_correct       int64    ... of which the mask got right
  gt_pixel_accuracy float64 gt_correct / gt_pixels
  gt_intersection_<class>, gt_union_<class>   int64   per class, at the original resolution;
                            null for a class the label map does not cover
  gt_error         string   why a label given for the image could not be used
  (the gt_ columns are null for an image without ground truth)
  model_name, model_version, run_id   string

errors/*.parquet, one row per input that produced no mask:
  image_id, source, filename (where known), stage (read, validate, decode, infer,
  postprocess), error_type, message, run_id   string
"""

from __future__ import annotations

import re
from typing import Sequence

import pyarrow as pa


def column_suffix(class_name: str) -> str:
  """A class name as a SQL-friendly column suffix: 'Pet (cat)' -> 'pet_cat'."""
  suffix = re.sub(r"[^0-9a-z]+", "_", class_name.lower()).strip("_")
  return suffix or "class"


def class_columns(class_names: Sequence[str]) -> list[str]:
  suffixes = [column_suffix(name) for name in class_names]
  if len(set(suffixes)) != len(suffixes):
    raise ValueError(f"class names {list(class_names)} collide as columns {suffixes}")
  return suffixes


def segments_schema(class_names: Sequence[str]) -> pa.Schema:
  suffixes = class_columns(class_names)
  return pa.schema(
    [
      ("image_id", pa.string()),
      ("source", pa.string()),
      ("filename", pa.string()),
      ("format", pa.string()),
      ("width", pa.int32()),
      ("height", pa.int32()),
      ("exif_orientation", pa.int32()),
      ("mask_png", pa.binary()),
    ]
    + [(f"coverage_{s}", pa.float64()) for s in suffixes]
    + [(f"pixels_{s}", pa.int64()) for s in suffixes]
    + [
      ("dominant_class", pa.string()),
      ("mean_confidence", pa.float32()),
      ("gt_pixels", pa.int64()),
      ("gt_correct", pa.int64()),
      ("gt_pixel_accuracy", pa.float64()),
    ]
    + [(f"gt_intersection_{s}", pa.int64()) for s in suffixes]
    + [(f"gt_union_{s}", pa.int64()) for s in suffixes]
    + [
      ("gt_error", pa.string()),
      ("model_name", pa.string()),
      ("model_version", pa.string()),
      ("run_id", pa.string()),
    ]
  )


ERRORS_SCHEMA = pa.schema(
  [
    ("image_id", pa.string()),
    ("source", pa.string()),
    ("filename", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("message", pa.string()),
    ("run_id", pa.string()),
  ]
)
