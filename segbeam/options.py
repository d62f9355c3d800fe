"""segbeam run's own options, each declared once in `OPTIONS`; everything else on the command
line is a Beam pipeline option.

From the table come `segbeam run`'s arguments (`add_arguments`), the options dataclass
(`RunOptions`), what a resumed run must agree on (`fingerprint_values`) and the Flex Template's
parameters (`segbeam.commands.flex_template.metadata`). Adding an option is one `Option` here
plus the code that uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import os
import re
import uuid
from typing import Any, Callable, Mapping, Optional, Sequence

from segbeam import constants


@dataclasses.dataclass(frozen=True)
class ExampleKeys:
  """tf.train.Example feature keys (DeepLab / TF Object Detection convention by default)."""

  image: str = "image/encoded"
  filename: str = "image/filename"
  label: str = "image/segmentation/class/encoded"


def _alternatives(keys: str) -> tuple[str, ...]:
  """WebDataset's "jpg;png" as ('jpg', 'png'): extensions lower-cased, as it reads them."""
  return tuple(key.strip().lower() for key in keys.split(";") if key.strip())


@dataclasses.dataclass(frozen=True)
class SampleKeys:
  """A WebDataset sample's members: the extensions of its image, the first present taken (as
  WebDataset's `to_tuple("jpg;png")`), and of its ground-truth mask (none: no ground truth)."""

  image: tuple[str, ...] = constants.WEBDATASET_IMAGE_KEYS
  label: tuple[str, ...] = constants.WEBDATASET_LABEL_KEYS

  @classmethod
  def from_flags(cls, image_key: str, label_key: str) -> "SampleKeys":
    """--image-key and --label-key as a sample's extensions; where a flag keeps its tf.Example
    default, the WebDataset default."""
    defaults = ExampleKeys()
    return cls(
      cls.image if image_key == defaults.image else _alternatives(image_key),
      cls.label if label_key == defaults.label else _alternatives(label_key),
    )


@dataclasses.dataclass(frozen=True)
class ParquetColumns:
  """Which columns of a Parquet input hold what; None: found by the reader
  (`segbeam.pipeline.parquet_images.choose_columns`).

  Attributes:
    image: the encoded image: binary, or a struct with a binary `bytes` field (Hugging Face's
      Image feature).
    label: the encoded ground-truth mask, in the same types; by default a column named
      'label' of those types, else none.
    id: the image's id within its file; by default its row number.
  """

  image: Optional[str] = None
  label: Optional[str] = None
  id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class BreakerLimits:
  """When a worker process stops the run because the model, not the images, fails
  (`inference.IsolatingModelHandler`). An image "fails in the model" where it fails alone too
  and its bytes decode (an image that does not decode is a `decode` row and counts for nothing).

  Attributes:
    batches: that many batches' worth of images (--batch-size, at least
      `inference.MIN_BREAKER_BATCH`) fail in the model in a row, with none inferred between
      (0: never).
    share: images failing in the model are more than this share of the first `first_images`
      images the process infers, whatever was inferred between (1 or more: never).
    first_images: see `share`.
  """

  batches: int = constants.DEFAULT_BREAKER_BATCHES
  share: float = constants.DEFAULT_BREAKER_SHARE
  first_images: int = constants.DEFAULT_BREAKER_FIRST_IMAGES

  def __post_init__(self):
    check(
      breaker_first_images=self.first_images,
      breaker_batches=self.batches,
      breaker_share=self.share,
    )


# A run id names files (the journal's, `journal`): a plain name, never a path. Positively: a
# letter or digit first (no '.', '..', hidden or option-like names), then letters, digits and
# '._-' only (no separator of any file system, no glob character, no control character).
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
  """Returns `run_id`; raises ValueError where it is not a safe name (`_RUN_ID`)."""
  if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
    raise ValueError(
      f"--run-id {run_id!r} is not a plain name: up to 128 ASCII letters, digits, '.', '_' "
      "and '-', starting with a letter or digit"
    )
  return run_id


def new_run_id(now: datetime.datetime) -> str:
  """A run id: the start time to the second and a random suffix."""
  return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(frozen=True)
class Flex:
  """An option as a Flex Template parameter (deploy/metadata.json).

  Attributes:
    label: the parameter's label in the console.
    help: its help text, ending in 'Example: VALUE'.
    regex: what the console accepts.
  """

  label: str
  help: str
  regex: str


@dataclasses.dataclass(frozen=True)
class Option:
  """One run option.

  Attributes:
    name: its field in `RunOptions`; the flag is --name with dashes unless `flag` says.
    default: its value where not given.
    help: the command line's help (argparse's %(default)s works).
    type: turns a command-line word into the value; bool for a switch, list for a repeatable
      one (a tuple of the words).
    check: called with a value and the flag, raises ValueError naming the flag for a value it
      refuses (see `at_least`).
    changes_rows: the rows depend on it, so every attempt at one output must agree on it
      (`fingerprint_values`, `--resume`).
    flex: the Flex Template's parameter; None where the template does not take it. Its help
      may say '{default}'.
    flag: the command-line flag, where it is not --name with dashes.
    on_command_line: False for a value the run sets itself.
    choices, metavar, required: as argparse's.
    normalize: the parsed value as the run keeps it (a pattern made local, a trailing '/' cut).
  """

  name: str
  default: Any
  help: str = ""
  type: Callable[[str], Any] = str
  check: Optional[Callable[[Any, str], None]] = None
  changes_rows: bool = False
  flex: Optional[Flex] = None
  flag: str = ""
  on_command_line: bool = True
  choices: Optional[Sequence[str]] = None
  metavar: Optional[str] = None
  required: bool = False
  normalize: Optional[Callable[[Any], Any]] = None

  @property
  def option_string(self) -> str:
    return self.flag or "--" + self.name.replace("_", "-")


def at_least(low: int) -> Callable[[Any, str], None]:
  """A check refusing values below `low` (and NaN) as '--flag must be at least/0 or more'."""

  def check(value, flag):
    if not value >= low:  # NaN too
      words = "at least 1" if low == 1 else f"{low} or more"
      raise ValueError(f"{flag} must be {words}, got {value}")

  return check


def _segments_files_check(value: int, flag: str) -> None:
  at_least(0)(value, flag)
  if value > constants.MAX_SEGMENTS_FILES:
    raise ValueError(f"{flag} must be at most {constants.MAX_SEGMENTS_FILES}, got {value}")


def _optional(check: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
  """`check`, where a value is given (None: the default the run works out)."""

  def optional(value, flag):
    if value is not None:
      check(value, flag)

  return optional


def _tile_check(value: Optional[str], flag: str) -> None:
  if value is None or value == constants.TILE_AUTO:
    return
  if isinstance(value, int) and not isinstance(value, bool):  # from Python, not the command line
    value = str(value)
  if not (isinstance(value, str) and value.isascii() and value.isdigit() and int(value) >= 1):
    raise ValueError(f"{flag} must be a size in pixels or {constants.TILE_AUTO!r}, got {value!r}")


def _scale_check(value: float, flag: str) -> None:
  if not 0 < value <= 1:  # NaN too
    raise ValueError(f"{flag} must be more than 0 and at most 1, got {value}")


def _run_id_check(value: str, flag: str) -> None:
  if value:  # empty: not chosen yet (`from_args` always chooses one)
    check_run_id(value)


def in_a_folder(pattern: Optional[str]) -> Optional[str]:
  """A local pattern with no folder part ('*.jpg') as './*.jpg': Beam's local file system
  matches nothing for the former, even in a folder full of JPEGs."""
  if pattern is None or "://" in pattern or "/" in pattern or os.sep in pattern:
    return pattern
  return "./" + pattern


def _folder(path: str) -> str:
  return path.rstrip("/")


_KEYS = ExampleKeys()

OPTIONS: tuple[Option, ...] = (
  Option(
    "input",
    None,
    "glob of images, or of TFRecord, Parquet or WebDataset shards, local or gs://",
    required=True,
    changes_rows=True,
    normalize=in_a_folder,
    flex=Flex(
      "Input images or shards",
      "Glob of image files (JPEG, PNG, GIF, BMP), or of TFRecord shards of tf.train.Example, "
      "Parquet files with an image column or WebDataset tars, on Cloud Storage. Example: "
      "gs://my-bucket/photos/**/*.jpg",
      "^gs:\\/\\/[^\\n\\r]+$",
    ),
  ),
  Option(
    "output",
    None,
    "output folder, local or gs://",
    required=True,
    normalize=_folder,
    flex=Flex(
      "Output folder",
      "Cloud Storage folder for segments/*.parquet, errors/*.parquet, masks/ and manifest.json "
      "(written last). Example: gs://my-bucket/runs/2026-11-22",
      "^gs:\\/\\/[^\\n\\r]+$",
    ),
  ),
  Option(
    "model_dir",
    None,
    "export directory (default: the embedded default model)",
    flag="--model",
    changes_rows=True,  # `segbeam.run.job.fingerprint` names it by its metadata and files
    flex=Flex(
      "Model export",
      "Cloud Storage folder of a segbeam export (saved_model.pb and segbeam_model.json). Leave it "
      "out for the default model embedded in the image. Example: gs://my-bucket/models/pets-v2",
      "^gs:\\/\\/[^\\n\\r]+$",
    ),
  ),
  Option(
    "batch_size",
    constants.DEFAULT_BATCH_SIZE,
    "images per inference batch (default: %(default)s)",
    type=int,
    check=at_least(1),
    flex=Flex(
      "Batch size",
      "Images per inference batch (default {default}); bounds GPU memory per batch. Example: 64",
      "^[1-9][0-9]*$",
    ),
  ),
  Option(
    "max_pixels",
    constants.DEFAULT_MAX_PIXELS,
    "refuse images declaring more pixels, before decoding (default: %(default)s; with --tile, "
    "--max-tiled-pixels instead)",
    type=int,
    check=at_least(1),
    changes_rows=True,
    flex=Flex(
      "Pixel cap",
      "Images whose header declares more pixels are refused before decoding (default {default}). "
      "Example: 50000000",
      "^[1-9][0-9]*$",
    ),
  ),
  Option(
    "tile",
    None,
    "segment images at full resolution (times --scale) in overlapping SIZE x SIZE tiles, "
    "stitched into one mask; 'auto': the model's input size. Images no larger than the "
    "model's input, at --scale 1, are segmented whole, as without it",
    metavar="SIZE|auto",
    check=_tile_check,
    changes_rows=True,
    flex=Flex(
      "Tile size",
      "Segment large images in overlapping tiles of this many pixels at full resolution (or "
      "'auto': the model's input size), stitched into one mask (default: whole images resized "
      "to the model's input). Example: auto",
      "^(auto|[1-9][0-9]{0,4})$",
    ),
  ),
  Option(
    "tile_overlap",
    None,
    "pixels each tile overlaps its neighbours by (default: a quarter of the tile)",
    type=int,
    metavar="PIXELS",
    check=_optional(at_least(0)),
    changes_rows=True,
    flex=Flex(
      "Tile overlap",
      "Pixels each tile overlaps its neighbours by (default: a quarter of the tile). Example: 32",
      "^[0-9]{1,5}$",
    ),
  ),
  Option(
    "tile_blend",
    constants.BLEND_CENTRE,
    "how overlapping tiles are put together: centre (each pixel from the tile whose centre "
    "region holds it) or gaussian (probabilities averaged, weighted towards tile centres; an "
    "image's tile probabilities are held until it is stitched: about 80 KB a tile of 128) "
    "(default: %(default)s)",
    choices=constants.TILE_BLENDS,
    changes_rows=True,
    flex=Flex(
      "Tile blending",
      "centre or gaussian: how overlapping tiles are put together (default {default}). "
      "Example: gaussian",
      "^(centre|gaussian)$",
    ),
  ),
  Option(
    "scale",
    1.0,
    "with --tile: segment at this fraction of each image's native resolution, 0 < F <= 1; the "
    "mask is enlarged back (nearest neighbour) (default: %(default)s)",
    type=float,
    metavar="F",
    check=_scale_check,
    changes_rows=True,
    flex=Flex(
      "Scale",
      "With a tile size: segment at this fraction of native resolution, more than 0 and at most 1 "
      "(default {default}). Example: 0.5",
      "^(0?\\.[0-9]+|1(\\.0*)?)$",
    ),
  ),
  Option(
    "max_tiled_pixels",
    constants.DEFAULT_MAX_TILED_PIXELS,
    "with --tile: the pixel cap instead of --max-pixels, since a tiled image is decoded whole at "
    "full resolution (about 5 bytes a pixel at the peak: docs/tiling.md) "
    "(default: %(default)s)",
    type=int,
    check=at_least(1),
    changes_rows=True,
    flex=Flex(
      "Tiled pixel cap",
      "With a tile size: images whose header declares more pixels are refused before decoding "
      "(default {default}). Example: 100000000",
      "^[1-9][0-9]*$",
    ),
  ),
  Option(
    "max_file_bytes",
    constants.DEFAULT_MAX_FILE_BYTES,
    "refuse larger files (and larger TFRecord records) before reading them (default: %(default)s)",
    type=int,
    check=at_least(1),
    changes_rows=True,
    flex=Flex(
      "File size cap",
      "Larger files are refused before they are read (default {default}). Example: 268435456",
      "^[1-9][0-9]*$",
    ),
  ),
  Option(
    "read_concurrency",
    constants.DEFAULT_READ_CONCURRENCY,
    "image files read at a time per reading thread from an object store (gs://), "
    "overlapping its latency (default: %(default)s)",
    type=int,
    check=at_least(1),
    flex=Flex(
      "Reads in flight per reading thread",
      "Image files read at a time per reading thread, overlapping the object store's per-request "
      "latency (default {default}). Example: 16",
      "^[1-9][0-9]*$",
    ),
  ),
  Option(
    "mask_files",
    False,
    "also write masks as PNG files under OUTPUT/masks/",
    type=bool,
    changes_rows=True,
    flex=Flex(
      "Mask files",
      "Also write each mask as a PNG file under OUTPUT/masks/ (default false). Example: true",
      "^(true|false)$",
    ),
  ),
  Option(
    "segments_files",
    0,
    "write the segments table as N Parquet files (rows shuffled to N writers; default: one "
    "file per bundle, see docs/capacity-plan.md); at most "
    f"{constants.MAX_SEGMENTS_FILES}, and never more than the input files",
    type=int,
    check=_segments_files_check,
    metavar="N",
    flex=Flex(
      "Segments files",
      "Write the segments table as this many Parquet files (rows shuffled to as many writers); "
      "leave it out for one file per bundle. docs/capacity-plan.md says how many for a run's size."
      " Example: 1200",
      "^[0-9]+$",
    ),
  ),
  Option(
    "overwrite",
    False,
    "replace a previous run's output in OUTPUT",
    type=bool,
    flex=Flex(
      "Overwrite",
      "Replace a previous run's output in the output folder instead of refusing (default false). "
      "Example: true",
      "^(true|false)$",
    ),
  ),
  Option(
    "resume",
    False,
    "continue the unfinished (killed, failed) run in OUTPUT with the same command: what it "
    "wrote is kept, the rest is done",
    type=bool,
    flex=Flex(
      "Resume",
      "Continue the unfinished run (a failed or cancelled job) in the output folder with the same "
      "parameters: the rows it made durable are kept, the rest is done (default false). Example: "
      "true",
      "^(true|false)$",
    ),
  ),
  Option(
    "quiet",
    False,
    "no progress lines on stderr while the run goes (images done, failed, img/s, time left)",
    type=bool,
  ),
  Option(
    "input_format",
    constants.FORMAT_AUTO,
    "auto (default): .tfrecord/.tfr names are TFRecord shards, .parquet/.parq/.pq Parquet, "
    ".tar/.tar.gz/.tgz WebDataset shards, image extensions images, any other file by its first "
    "bytes",
    choices=constants.INPUT_FORMATS,
    changes_rows=True,
    flex=Flex(
      "Input format",
      "auto (by file name, else by first bytes), images, tfrecord, parquet or webdataset "
      "(default {default}). Example: tfrecord",
      "^(auto|images|tfrecord|parquet|webdataset)$",
    ),
  ),
  Option(
    "image_key",
    _KEYS.image,
    "tf.Example image feature; in WebDataset shards the image member's extensions, the first "
    f"present taken (default there: {';'.join(constants.WEBDATASET_IMAGE_KEYS)})",
    changes_rows=True,
    flex=Flex(
      "Image key",
      "Feature holding the encoded image in TFRecord inputs (default {default}); in WebDataset "
      "shards the image member's extensions, separated by ';' (default "
      f"{';'.join(constants.WEBDATASET_IMAGE_KEYS)}). Example: jpg;png",
      "^[^\\n\\r]+$",
    ),
  ),
  Option(
    "filename_key",
    _KEYS.filename,
    "tf.Example feature naming the image, its id",
    changes_rows=True,
    flex=Flex(
      "tf.Example filename key",
      "Feature holding the image's file name (default {default}). Example: image/filename",
      "^[^\\n\\r]+$",
    ),
  ),
  Option(
    "label_key",
    _KEYS.label,
    "tf.Example feature holding a ground-truth label image (optional); in WebDataset shards "
    f"the mask member's extensions (default there: {';'.join(constants.WEBDATASET_LABEL_KEYS)})",
    changes_rows=True,
    flex=Flex(
      "Label key",
      "Feature holding the encoded ground-truth label image (default "
      "image/segmentation/class/encoded); in WebDataset shards the mask member's extensions "
      f"(default {';'.join(constants.WEBDATASET_LABEL_KEYS)}). Example: seg.png",
      "^[^\\n\\r]+$",
    ),
  ),
  Option(
    "image_column",
    None,
    "Parquet inputs: the column of encoded images, binary or a struct with a bytes field "
    "(Hugging Face's Image); default: the one such column (or the one named image)",
    changes_rows=True,
    metavar="COLUMN",
    flex=Flex(
      "Parquet image column",
      "Column of encoded images in Parquet inputs: binary, or a struct with a bytes field as "
      "Hugging Face writes images. Default: the only such column, or the one named image. "
      "Example: image",
      "^[^\\n\\r]+$",
    ),
  ),
  Option(
    "label_column",
    None,
    "Parquet inputs: the column of ground-truth label images (default: a column named label, "
    "where it holds images)",
    changes_rows=True,
    metavar="COLUMN",
    flex=Flex(
      "Parquet label column",
      "Column of encoded ground-truth label images in Parquet inputs. Default: a column named "
      "label of image type. Example: annotation",
      "^[^\\n\\r]+$",
    ),
  ),
  Option(
    "id_column",
    None,
    "Parquet inputs: the column naming each image; ids are FILE#VALUE (default: FILE#ROW)",
    changes_rows=True,
    metavar="COLUMN",
    flex=Flex(
      "Parquet id column",
      "Column whose value names each image in Parquet inputs (ids are FILE#VALUE; default "
      "FILE#ROW, the row number). Example: image_id",
      "^[^\\n\\r]+$",
    ),
  ),
  Option(
    "handler",
    constants.HANDLER_TFX_BSL,
    "tfx-bsl (default: tfx-bsl's CreateModelHandler) or saved-model (the signature called "
    "directly, no PredictionLog round trip; segbeam submit's default)",
    flag="--inference-handler",
    choices=constants.HANDLERS,
    flex=Flex(
      "Inference handler",
      "saved-model (default on GPU workers: the signature called directly) or tfx-bsl. Example: "
      "tfx-bsl",
      "^(tfx-bsl|saved-model)$",
    ),
  ),
  Option(
    "inference_slices",
    constants.DEFAULT_INFERENCE_SLICES,
    "cut each batch into this many slices inferred at the same time (default: %(default)s; "
    "measured in BENCHMARKS.md)",
    type=int,
    check=at_least(1),
    flex=Flex(
      "Concurrent slices per batch",
      "Each inference batch is cut into this many slices inferred at the same time, which keeps a "
      "worker's cores busy (default {default}). Example: 2",
      "^[1-9][0-9]?$",
    ),
  ),
  Option(
    "postprocess_threads",
    constants.DEFAULT_POSTPROCESS_THREADS,
    "threads that postprocess one batch while the next is inferred (default: %(default)s; "
    "raise it on GPU workers)",
    type=int,
    check=at_least(1),
    flex=Flex(
      "Postprocessing threads",
      "Threads per harness thread that turn inferences into rows while the next batch is inferred "
      "(default {default}; 3 on a g2-standard-4 GPU worker). Example: 3",
      "^[1-9][0-9]{0,2}$",
    ),
  ),
  # Not --labels: that is Beam's (Dataflow job labels), which must reach Beam untouched.
  Option(
    "ground_truth",
    None,
    "glob of ground-truth label images, matched to inputs by id without extension; each row "
    "then carries IoU counts",
    metavar="GLOB",
    changes_rows=True,
    normalize=in_a_folder,
    flex=Flex(
      "Ground-truth labels",
      "Glob of ground-truth label images on Cloud Storage, matched to inputs by filename without "
      "extension; rows then carry IoU counts. Example: gs://my-bucket/trimaps/**/*.png",
      "^gs:\\/\\/[^\\n\\r]+$",
    ),
  ),
  Option(
    "label_map",
    None,
    "label values -> classes, e.g. 1:0,2:1,3:2 (default: the model's)",
    changes_rows=True,
    flex=Flex(
      "Label map",
      "Label values to classes: a preset or raw:class pairs (default: the model's own). Example: "
      "oxford-pet-trimap",
      "^([a-z0-9-]+|[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*)$",
    ),
  ),
  Option(
    "skip_existing",
    (),
    "a completed earlier run's output folder: skip the images it segmented with the same "
    "model version (failed ones are tried again); repeat it for several",
    type=list,
    metavar="OUTPUT",
    changes_rows=True,
    normalize=lambda folders: tuple(map(_folder, folders)),
    flex=Flex(
      "Skip what a previous run segmented",
      "Output folder of an earlier completed run on Cloud Storage: images it segmented with the "
      "same model version are skipped and counted. Example: gs://my-bucket/segbeam/run-1",
      "^gs:\\/\\/[^\\n\\r]+$",
    ),
  ),
  Option(
    "trust_model",
    False,
    "run a model whose graph holds ops outside segbeam's allowlist, or links out of its "
    "folder (refused otherwise: a model is code); recorded in the manifest",
    type=bool,
    flex=Flex(
      "Trust the model",
      "Run a model whose graph holds ops outside segbeam's allowlist, or links out of its folder, "
      "which is refused otherwise (default false; recorded in the manifest). Example: true",
      "^(true|false)$",
    ),
  ),
  Option(
    "require_gpu",
    False,
    "fail the model's load where TensorFlow sees no GPU, naming what is missing (segbeam "
    "submit and the Flex Template set it)",
    type=bool,
  ),
  Option(
    "breaker_batches",
    constants.DEFAULT_BREAKER_BATCHES,
    "stop the run when this many batches' worth of images in a row fail in the model, each "
    "alone too: a broken model or GPU, not bad images (0: never; default %(default)s)",
    type=int,
    check=at_least(0),
    flex=Flex(
      "Stop after whole failed batches",
      "Stop the job when this many batches' worth of images in a row fail in the model, each alone"
      " too: a broken model or GPU (0: never; default {default}). Example: 3",
      "^[0-9]+$",
    ),
  ),
  Option(
    "breaker_share",
    constants.DEFAULT_BREAKER_SHARE,
    "stop the run when more than this share of the first --breaker-first-images images a "
    "worker process infers fail that way (default %(default)s)",
    type=float,
    check=at_least(0),
    flex=Flex(
      "Stop at a share of failed first images",
      "Stop the job when more than this share of the first images a worker process infers fail in "
      "the model, each alone too (default {default}). Example: 0.5",
      "^[0-9]+(\\.[0-9]+)?$",
    ),
  ),
  Option(
    "breaker_first_images",
    constants.DEFAULT_BREAKER_FIRST_IMAGES,
    "see --breaker-share (default %(default)s)",
    type=int,
    check=at_least(1),
    flex=Flex(
      "First images the share counts",
      "How many first images of a worker process breaker_share counts (default {default}). "
      "Example: 200",
      "^[1-9][0-9]*$",
    ),
  ),
  Option(
    "run_id",
    "",
    "a plain name for this run: ASCII letters, digits, '.', '_', '-', starting with a letter "
    "or digit (default: time + random suffix)",
    check=_run_id_check,
    flex=Flex(
      "Run id",
      "Recorded in every row and the manifest (default: start time and a random suffix). Example: "
      "pets-2026-11-22",
      "^[^\\n\\r]+$",
    ),
  ),
  # When the run started (UTC, ISO 8601): set by the run, recorded with its id.
  Option("started", "", on_command_line=False),
)

BY_NAME = {option.name: option for option in OPTIONS}


def _check_value(option: Option, value: Any) -> None:
  if option.check is not None:
    option.check(value, option.option_string)
  if option.choices and value not in option.choices:
    raise ValueError(
      f"{option.option_string} must be one of {', '.join(option.choices)}, got {value!r}"
    )


def _check(self) -> None:
  for option in OPTIONS:
    _check_value(option, getattr(self, option.name))
  if self.resume and self.overwrite:
    raise ValueError("--resume continues the run in --output, --overwrite replaces it: pick one")
  check_tiles(**{name: getattr(self, name) for name in _TILE_OPTIONS})


# The options of tiled inference, which all but `tile` itself need.
_TILE_OPTIONS = ("tile", "tile_overlap", "tile_blend", "scale", "max_tiled_pixels")


def check_tiles(**values: Any) -> None:
  """Raises ValueError where the options of tiled inference (`_TILE_OPTIONS`, by name; those
  not given at their defaults) do not go together: one given without --tile, an overlap not
  smaller than a numeric tile."""
  values = {name: values.get(name, BY_NAME[name].default) for name in _TILE_OPTIONS}
  tile = values["tile"]
  if tile is None:
    for name in _TILE_OPTIONS[1:]:
      if values[name] != BY_NAME[name].default:
        raise ValueError(f"{BY_NAME[name].option_string} is for tiles: it needs --tile")
  elif tile != constants.TILE_AUTO and values["tile_overlap"] is not None:
    check_overlap(int(tile), values["tile_overlap"])


def mask_settings(values: Mapping[str, Any]) -> dict[str, Any]:
  """How a run makes each mask besides its model, by flag, from its options (a manifest's, by
  field name; a missing one at its default, as runs before tiles recorded none): runs that
  differ here make different masks of the same image with the same model."""
  return {
    BY_NAME[name].option_string: values.get(name, BY_NAME[name].default)
    for name in _TILE_OPTIONS[:-1]  # not the pixel cap: it decides which images fail
  }


def check_overlap(tile: int, overlap: int) -> None:
  """Raises ValueError where `overlap` leaves tiles no stride (`--tile-overlap`)."""
  if overlap >= tile:
    raise ValueError(
      f"--tile-overlap {overlap} must be smaller than the tile ({tile}): tiles would not advance"
    )


def _breaker(self) -> BreakerLimits:
  """When a worker process stops the run because the model, not the images, fails."""
  return BreakerLimits(self.breaker_batches, self.breaker_share, self.breaker_first_images)


def _example_keys(self) -> ExampleKeys:
  """The tf.Example feature keys of TFRecord inputs."""
  return ExampleKeys(self.image_key, self.filename_key, self.label_key)


def _sample_keys(self) -> SampleKeys:
  """The member extensions of WebDataset inputs."""
  return SampleKeys.from_flags(self.image_key, self.label_key)


def _parquet_columns(self) -> ParquetColumns:
  """The columns of Parquet inputs."""
  return ParquetColumns(self.image_column, self.label_column, self.id_column)


# The tf.Example keys: three options, recorded as one value (`example_keys`) in the manifest and
# in the claim's fingerprint, as segbeam has always recorded them: a run an earlier segbeam left
# unfinished must still compare equal when resumed.
_EXAMPLE_KEYS = {"image_key": "image", "filename_key": "filename", "label_key": "label"}
_EXAMPLE_KEYS_FLAG = "--*-key"


def _to_dict(self) -> dict[str, Any]:
  values = {}
  for name, value in dataclasses.asdict(self).items():
    if name in _EXAMPLE_KEYS:
      values.setdefault("example_keys", {})[_EXAMPLE_KEYS[name]] = value
    else:
      values[name] = value
  return values


def _field_type(option: Option) -> Any:
  return {bool: bool, int: int, float: float, list: tuple}.get(option.type, Optional[str])


# One `segbeam run`: a field per `OPTIONS` entry, every value checked by its entry.
RunOptions = dataclasses.make_dataclass(
  "RunOptions",
  [
    (option.name, _field_type(option))
    if option.required
    else (option.name, _field_type(option), dataclasses.field(default=option.default))
    for option in OPTIONS
  ],
  namespace={
    "__post_init__": _check,
    "breaker": property(_breaker),
    "example_keys": property(_example_keys),
    "sample_keys": property(_sample_keys),
    "parquet_columns": property(_parquet_columns),
    "to_dict": _to_dict,
    "__doc__": "One `segbeam run`: a field per entry of `OPTIONS`, checked by its entry.\n\n"
    "Attributes:\n"
    + "\n".join(f"  {option.name}: {option.help or 'set by the run'}" for option in OPTIONS),
  },
  frozen=True,
)
RunOptions.__module__ = __name__


def check(**values: Any) -> None:
  """Runs the checks `OPTIONS` declares for these values, by option name: for code that takes
  some run options on their own (`segbeam.pipeline.transforms.SegmentImages`)."""
  for name, value in values.items():
    _check_value(BY_NAME[name], value)


def _jsonable(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def fingerprint_values(options: RunOptions) -> dict[str, Any]:
  """The values of the options the rows depend on (`Option.changes_rows`), by flag."""
  values = {}
  for option in OPTIONS:
    if option.changes_rows:
      value = _jsonable(getattr(options, option.name))
      if option.name in _EXAMPLE_KEYS:
        values.setdefault(_EXAMPLE_KEYS_FLAG, []).append(value)
      else:
        values[option.option_string] = value
  return values


def positions(argv: Sequence[str], flag: str) -> list[int]:
  """Where `flag` stands on the command line, as `--flag VALUE` or `--flag=VALUE`."""
  return [i for i, word in enumerate(argv) if word == flag or word.startswith(flag + "=")]


def given(argv: Sequence[str], flag: str) -> bool:
  """Whether `flag` is on the command line (see `positions`)."""
  return bool(positions(argv, flag))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """`OPTIONS` as `parser`'s arguments."""
  for option in OPTIONS:
    if not option.on_command_line:
      continue
    kwargs: dict[str, Any] = {"dest": option.name, "help": option.help}
    if option.type is bool:
      kwargs["action"] = "store_true"
    elif option.type is list:
      kwargs.update(action="append", default=[])
    elif option.required:
      kwargs["required"] = True
    else:
      # --run-id: None where not given, for `from_args` to choose one.
      kwargs["default"] = None if option.name == "run_id" else option.default
    if option.type not in (bool, list, str):
      kwargs["type"] = option.type
    if option.choices:
      kwargs["choices"] = option.choices
    if option.metavar:
      kwargs["metavar"] = option.metavar
    parser.add_argument(option.option_string, **kwargs)


# The patterns segbeam expands itself; each is given once, as one word.
_PATTERN_FLAGS = ("--input", "--ground-truth")


def check_patterns_given_once(argv: Sequence[str]) -> None:
  """Raises ValueError when --input or --ground-truth is repeated, or followed by more than one
  path: an unquoted glob that the shell expanded into its files (`--input photos/*.jpg`)
  would otherwise run on the first file alone, the rest passed on to Beam, which drops them."""
  argv = list(argv)
  for flag in _PATTERN_FLAGS:
    found = positions(argv, flag)
    if len(found) > 1:
      values = [
        argv[i].split("=", 1)[1] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else "")
        for i in found
      ]
      raise ValueError(
        f"{flag} given {len(found)} times ({', '.join(values)}): one pattern per run"
      )
    if not found or "=" in argv[found[0]]:
      continue
    after = argv[found[0] + 1 :]
    paths = [word for word in itertools.takewhile(lambda word: not word.startswith("-"), after)]
    if len(paths) > 1:
      shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
      raise ValueError(
        f"{flag} is followed by {len(paths)} paths ({shown}): the shell expanded "
        f"an unquoted glob into its files; quote the pattern so that segbeam "
        f"expands it, e.g. {flag} 'photos/*.jpg'"
      )


def from_args(args: argparse.Namespace) -> RunOptions:
  """The options `add_arguments` parsed, each normalized as its entry says; a new run id and
  start time where none is given."""
  now = datetime.datetime.now(datetime.timezone.utc)
  values = {}
  for option in OPTIONS:
    if option.on_command_line:
      value = getattr(args, option.name)
      if option.type is list:
        value = tuple(value)
      values[option.name] = option.normalize(value) if option.normalize else value
  if values["run_id"] is None:
    values["run_id"] = new_run_id(now)
  return RunOptions(**values, started=now.isoformat(timespec="seconds"))


def run_parser() -> argparse.ArgumentParser:
  """`segbeam run`'s parser. No prefix matching: '--label team=a' (Beam's Dataflow job label)
  would be taken for one of segbeam's --label-* options, and '--mask-file' quietly for
  '--mask-files'."""
  parser = argparse.ArgumentParser(
    prog="segbeam run",
    allow_abbrev=False,
    description="Segment images with a U-Net on Apache Beam. Options not listed here are "
    "Beam pipeline options (--runner, --direct_num_workers, ...).",
  )
  add_arguments(parser)
  return parser


def parse_args(
  argv: Sequence[str], parser: Optional[argparse.ArgumentParser] = None
) -> tuple[RunOptions, list[str]]:
  """`segbeam run`'s options from `argv`, and the words left for Beam (not checked here: see
  `beam_options.check_beam_args`). Raises ValueError for a bad value; argparse exits for a
  missing or malformed option, and prints --help."""
  argv = list(argv)
  check_patterns_given_once(argv)
  args, beam_args = (parser or run_parser()).parse_known_args(argv)
  return from_args(args), beam_args
