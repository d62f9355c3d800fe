"""The values that flow through the pipeline, one stage to the next.

read -> `ImageRecord` -> validate -> (`ImageInfo`, bytes) -> infer -> (`ImageInfo`, outputs)
-> postprocess -> segments row; any stage may instead emit a `Failure`, which becomes an errors
row. Every input ends as exactly one segments row or one errors row.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Optional

from segbeam import messages

# Stages named in the errors table.
STAGE_READ = "read"
STAGE_VALIDATE = "validate"
STAGE_DECODE = "decode"
STAGE_INFER = "infer"
STAGE_POSTPROCESS = "postprocess"

# The tag of the failures output of every DoFn that can fail an input.
FAILURES = "failures"


class Outputs(typing.NamedTuple):
  """What each of segbeam's public transforms that can fail returns (`ReadImages`,
  `SegmentImages`), as Beam's RunInference does `with_exception_handling`: what it made
  (`rows`: image records, segments rows) and one `Failure` per input that made nothing."""

  rows: Any  # a PCollection
  failures: Any  # a PCollection of `Failure`s


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One input image as read.

  Attributes:
    image_id: stable and unique within a run: the image's place in the input (see `sources`).
    source: where it came from: a file URI, or a shard URI with '#<record index>'.
    data: the encoded image bytes.
    label: encoded ground-truth mask bytes, when the input carries them.
    filename: the image's own name, which may repeat: an image file's id, a tf.Example's
      filename feature; None where there is none.
  """

  image_id: str
  source: str
  data: bytes
  label: Optional[bytes] = None
  filename: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """What later stages need to know about a validated image; travels as the inference key.

  Attributes:
    image_id, source: as in `ImageRecord`.
    format: 'jpeg', 'png', 'gif' or 'bmp', sniffed from the input's bytes.
    width, height: the size of the image as shown (after its EXIF orientation).
    label: as in `ImageRecord`.
    exif_orientation: the EXIF orientation applied (1 to 8); 1 when there is none.
    filename: as in `ImageRecord`.
  """

  image_id: str
  source: str
  format: str
  width: int
  height: int
  label: Optional[bytes] = None
  exif_orientation: int = 1
  filename: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Failure:
  """An input that produced no mask, and why."""

  image_id: str
  source: str
  stage: str
  error_type: str
  message: str
  filename: Optional[str] = None  # as in `ImageRecord`, where known

  @classmethod
  def from_exception(
    cls,
    image_id: str,
    source: str,
    stage: str,
    error: BaseException,
    filename: Optional[str] = None,
  ) -> "Failure":
    return cls(image_id, source, stage, type(error).__name__, messages.one_line(error), filename)


class ModelFailureError(RuntimeError):
  """The model fails on every image, not on some: a broken model or device (a GPU whose CUDA
  or cuDNN cannot start, or out of memory). It stops the run: one error row per image would bill
  the whole input for nothing and end the job as if it had succeeded."""


MODEL_FAILURE_LINE = re.compile(ModelFailureError.__name__ + r": (.+)")


def model_failure_in(error: BaseException) -> Optional[str]:
  """The message of the `ModelFailureError` behind `error`, or None. A runner may re-raise a
  worker's exception as another type whose text holds the worker's traceback."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, ModelFailureError):
      return messages.one_line(error)
    match = MODEL_FAILURE_LINE.search(str(error))
    if match:
      return " ".join(match.group(1).split())
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None
