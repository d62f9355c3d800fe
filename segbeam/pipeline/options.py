"""segbeam's own run options; everything else on the command line is a Beam pipeline option."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import os
import re
import uuid
from typing import Any, Optional, Sequence

from segbeam.pipeline import constants


@dataclasses.dataclass(frozen=True)
class ExampleKeys:
  """tf.train.Example feature keys (DeepLab / TF Object Detection convention by default)."""

  image: str = "image/encoded"
  filename: str = "image/filename"
  label: str = "image/segmentation/class/encoded"


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
    check_at_least_one(breaker_first_images=self.first_images)
    if self.batches < 0:
      raise ValueError(f"--breaker-batches must be 0 or more, got {self.batches}")
    if not self.share >= 0:  # NaN too
      raise ValueError(f"--breaker-share must be 0 or more, got {self.share}")


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """One `segbeam run`.

  Attributes:
    input: glob of image files or TFRecord shards (local or gs://).
    output: output folder (local or gs://).
    model_dir: export to run; None for the embedded default model.
    batch_size: most images per inference batch; bounds memory per worker.
    max_pixels: images whose header declares more pixels are refused before decoding.
    max_file_bytes: larger files, and larger TFRecord records, are refused before they are read.
    read_concurrency: image files on an object store (gs://) read at a time per reading thread,
      to overlap its per-request latency (`sources.ReadFile`); 1 reads one after the other.
    mask_files: also write each mask as DIR/masks/<safe name>.png.
    segments_files: write the segments table as this many Parquet files (its rows shuffled to
      as many writers); 0 for one file per bundle of the writing stage, which is one file on
      the local runner and as many as Dataflow makes bundles (docs/capacity-plan.md). At most
      `constants.MAX_SEGMENTS_FILES`; a run lowers it to its number of input files where fewer
      match (`job.prepare`): Beam writes every file, empty or not.
    overwrite: replace a previous run's output in the folder instead of refusing.
    resume: continue the unfinished run in the folder (killed, failed or interrupted): what
      its attempts made durable is kept, the rest is done (`journal`); a fresh run where the
      folder holds none, nothing where it holds a completed one.
    input_format: 'auto' (a file's name says shard or image, or else its first bytes do: see
      `sources.is_tfrecord`), 'images' or 'tfrecord'.
    example_keys: tf.Example feature keys.
    handler: 'tfx-bsl' or 'saved-model' (see `inference`).
    inference_slices: each batch is cut into this many slices inferred at the same time, which
      keeps a worker's cores busy where one call alone leaves them idle between its ops.
    postprocess_threads: background threads per worker thread that turn inferences into rows
      while the next batch is inferred; more pay off where inference is fast (a GPU).
    labels: glob of ground-truth label images, matched to inputs by filename without extension
      (`label_files`); TFRecord inputs may carry their own instead.
    label_map: how label values map to classes ('1:0,2:1,3:2' or a preset); None for the
      model's own.
    skip_existing: earlier runs' output folders: images they segmented with this model version
      are skipped (see `resume`).
    trust_model: run a model whose graph holds ops outside segbeam's allowlist, or links out of
      its folder (`segbeam.model.model_safety`); a damaged export is refused all the same.
    require_gpu: fail the model's load where TensorFlow sees no GPU (set by `segbeam submit`
      and the Flex Template: a GPU job must not run on the CPU while its GPUs are billed).
    breaker_batches, breaker_share, breaker_first_images: when a worker process stops the run
      because the model, not the images, fails (`BreakerLimits`, as `breaker`).
    quiet: print no progress lines while a local run goes.
    run_id: recorded in every row and the manifest, and names the run's journal files: a plain
      name (`check_run_id`).
    started: UTC start time, ISO 8601.
  """

  input: str
  output: str
  model_dir: Optional[str] = None
  batch_size: int = constants.DEFAULT_BATCH_SIZE
  max_pixels: int = constants.DEFAULT_MAX_PIXELS
  max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES
  read_concurrency: int = constants.DEFAULT_READ_CONCURRENCY
  mask_files: bool = False
  segments_files: int = 0
  overwrite: bool = False
  resume: bool = False
  input_format: str = constants.FORMAT_AUTO
  example_keys: ExampleKeys = ExampleKeys()
  handler: str = constants.HANDLER_TFX_BSL
  inference_slices: int = constants.DEFAULT_INFERENCE_SLICES
  postprocess_threads: int = constants.DEFAULT_POSTPROCESS_THREADS
  labels: Optional[str] = None
  label_map: Optional[str] = None
  skip_existing: tuple[str, ...] = ()
  trust_model: bool = False
  require_gpu: bool = False
  breaker_batches: int = constants.DEFAULT_BREAKER_BATCHES
  breaker_share: float = constants.DEFAULT_BREAKER_SHARE
  breaker_first_images: int = constants.DEFAULT_BREAKER_FIRST_IMAGES
  quiet: bool = False
  run_id: str = ""
  started: str = ""

  def __post_init__(self):
    check_at_least_one(
      batch_size=self.batch_size,
      max_file_bytes=self.max_file_bytes,
      read_concurrency=self.read_concurrency,
      max_pixels=self.max_pixels,
      inference_slices=self.inference_slices,
      postprocess_threads=self.postprocess_threads,
    )
    _ = self.breaker  # BreakerLimits checks the three breaker options
    if self.segments_files < 0:
      raise ValueError(f"--segments-files must be 0 or more, got {self.segments_files}")
    if self.segments_files > constants.MAX_SEGMENTS_FILES:
      raise ValueError(
        f"--segments-files must be at most {constants.MAX_SEGMENTS_FILES}, "
        f"got {self.segments_files}"
      )
    if self.run_id:  # empty: not chosen yet (`from_args` always chooses one)
      check_run_id(self.run_id)
    if self.resume and self.overwrite:
      raise ValueError("--resume continues the run in --output, --overwrite replaces it: pick one")

  @property
  def breaker(self) -> BreakerLimits:
    return BreakerLimits(self.breaker_batches, self.breaker_share, self.breaker_first_images)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


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


def positions(argv: Sequence[str], flag: str) -> list[int]:
  """Where `flag` stands on the command line, as `--flag VALUE` or `--flag=VALUE`."""
  return [i for i, word in enumerate(argv) if word == flag or word.startswith(flag + "=")]


def given(argv: Sequence[str], flag: str) -> bool:
  """Whether `flag` is on the command line (see `positions`)."""
  return bool(positions(argv, flag))


def for_gpu_job(options: RunOptions, argv: Sequence[str]) -> RunOptions:
  """A run on GPU workers (`segbeam submit`, the Flex Template): a GPU required, and
  `constants.GPU_JOB_HANDLER` unless `argv` names a handler."""
  handler = options.handler if given(argv, "--inference-handler") else constants.GPU_JOB_HANDLER
  return dataclasses.replace(options, require_gpu=True, handler=handler)


def check_at_least_one(**values: int) -> None:
  """Raises ValueError naming the first option (as --its-flag) whose value is below 1."""
  for name, value in values.items():
    if value < 1:
      raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--input", required=True, help="glob of images or TFRecord shards, local or gs://"
  )
  parser.add_argument("--output", required=True, help="output folder, local or gs://")
  parser.add_argument(
    "--model",
    dest="model_dir",
    default=None,
    help="export directory (default: the embedded default model)",
  )
  parser.add_argument(
    "--batch-size",
    type=int,
    default=constants.DEFAULT_BATCH_SIZE,
    help="images per inference batch (default: %(default)s)",
  )
  parser.add_argument(
    "--max-pixels",
    type=int,
    default=constants.DEFAULT_MAX_PIXELS,
    help="refuse images declaring more pixels, before decoding (default: %(default)s)",
  )
  parser.add_argument(
    "--max-file-bytes",
    type=int,
    default=constants.DEFAULT_MAX_FILE_BYTES,
    help="refuse larger files (and larger TFRecord records) before reading "
    "them (default: %(default)s)",
  )
  parser.add_argument(
    "--read-concurrency",
    type=int,
    default=constants.DEFAULT_READ_CONCURRENCY,
    help="image files read at a time per reading thread from an object store (gs://), "
    "overlapping its latency (default: %(default)s)",
  )
  parser.add_argument(
    "--mask-files", action="store_true", help="also write masks as PNG files under OUTPUT/masks/"
  )
  parser.add_argument(
    "--segments-files",
    type=int,
    default=0,
    metavar="N",
    help="write the segments table as N Parquet files (rows shuffled to N writers; default: "
    f"one file per bundle, see docs/capacity-plan.md); at most {constants.MAX_SEGMENTS_FILES}, "
    "and never more than the input files",
  )
  parser.add_argument(
    "--overwrite", action="store_true", help="replace a previous run's output in OUTPUT"
  )
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue the unfinished (killed, failed) run in OUTPUT with the same command: what "
    "it wrote is kept, the rest is done",
  )
  parser.add_argument(
    "--quiet",
    action="store_true",
    help="no progress lines on stderr while the run goes (images done, failed, img/s, time left)",
  )
  parser.add_argument(
    "--input-format",
    choices=constants.INPUT_FORMATS,
    default=constants.FORMAT_AUTO,
    help="auto (default): .tfrecord/.tfr names are shards, image extensions "
    "images, any other file by its first bytes",
  )
  defaults = ExampleKeys()
  parser.add_argument("--image-key", default=defaults.image, help="tf.Example image feature")
  parser.add_argument(
    "--filename-key", default=defaults.filename, help="tf.Example feature naming the image, its id"
  )
  parser.add_argument(
    "--label-key",
    default=defaults.label,
    help="tf.Example feature holding a ground-truth label image (optional)",
  )
  parser.add_argument(
    "--inference-handler",
    dest="handler",
    choices=constants.HANDLERS,
    default=constants.HANDLER_TFX_BSL,
    help="tfx-bsl (default: tfx-bsl's CreateModelHandler) or saved-model (the signature "
    "called directly, no PredictionLog round trip; segbeam submit's default)",
  )
  parser.add_argument(
    "--inference-slices",
    type=int,
    default=constants.DEFAULT_INFERENCE_SLICES,
    help="cut each batch into this many slices inferred at the same time "
    "(default: %(default)s; measured in BENCHMARKS.md)",
  )
  parser.add_argument(
    "--postprocess-threads",
    type=int,
    default=constants.DEFAULT_POSTPROCESS_THREADS,
    help="threads that postprocess one batch while the next is inferred "
    "(default: %(default)s; raise it on GPU workers)",
  )
  # Not --labels: that is Beam's (Dataflow job labels), which must reach Beam untouched.
  parser.add_argument(
    "--ground-truth",
    dest="labels",
    default=None,
    metavar="GLOB",
    help="glob of ground-truth label images, matched to inputs by id without "
    "extension; each row then carries IoU counts",
  )
  parser.add_argument(
    "--label-map",
    default=None,
    help="label values -> classes, e.g. 1:0,2:1,3:2 (default: the model's)",
  )
  parser.add_argument(
    "--skip-existing",
    action="append",
    default=[],
    metavar="OUTPUT",
    help="a completed earlier run's output folder: skip the images it "
    "segmented with the same model version (failed ones are tried again); "
    "repeat it for several",
  )
  parser.add_argument(
    "--trust-model",
    action="store_true",
    help="run a model whose graph holds ops outside segbeam's allowlist, or links out of its "
    "folder (refused otherwise: a model is code); recorded in the manifest",
  )
  parser.add_argument(
    "--require-gpu",
    action="store_true",
    help="fail the model's load where TensorFlow sees no GPU, naming what is "
    "missing (segbeam submit and the Flex Template set it)",
  )
  parser.add_argument(
    "--breaker-batches",
    type=int,
    default=constants.DEFAULT_BREAKER_BATCHES,
    help="stop the run when this many batches' worth of images in a row fail in the model, "
    "each alone too: a broken model or GPU, not bad images (0: never; default %(default)s)",
  )
  parser.add_argument(
    "--breaker-share",
    type=float,
    default=constants.DEFAULT_BREAKER_SHARE,
    help="stop the run when more than this share of the first --breaker-first-images images "
    "a worker process infers fail that way (default %(default)s)",
  )
  parser.add_argument(
    "--breaker-first-images",
    type=int,
    default=constants.DEFAULT_BREAKER_FIRST_IMAGES,
    help="see --breaker-share (default %(default)s)",
  )
  parser.add_argument(
    "--run-id",
    default=None,
    help="a plain name for this run: ASCII letters, digits, '.', '_', '-', starting with a "
    "letter or digit (default: time + random suffix)",
  )


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


def in_a_folder(pattern: Optional[str]) -> Optional[str]:
  """A local pattern with no folder part ('*.jpg') as './*.jpg': Beam's local file system
  matches nothing for the former, even in a folder full of JPEGs."""
  if pattern is None or "://" in pattern or "/" in pattern or os.sep in pattern:
    return pattern
  return "./" + pattern


def new_run_id(now: datetime.datetime) -> str:
  """A run id: the start time to the second and a random suffix."""
  return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def from_args(args: argparse.Namespace) -> RunOptions:
  now = datetime.datetime.now(datetime.timezone.utc)
  return RunOptions(
    input=in_a_folder(args.input),
    output=args.output.rstrip("/"),
    model_dir=args.model_dir,
    batch_size=args.batch_size,
    max_pixels=args.max_pixels,
    max_file_bytes=args.max_file_bytes,
    read_concurrency=args.read_concurrency,
    mask_files=args.mask_files,
    segments_files=args.segments_files,
    overwrite=args.overwrite,
    resume=args.resume,
    input_format=args.input_format,
    example_keys=ExampleKeys(args.image_key, args.filename_key, args.label_key),
    handler=args.handler,
    inference_slices=args.inference_slices,
    postprocess_threads=args.postprocess_threads,
    labels=in_a_folder(args.labels),
    label_map=args.label_map,
    skip_existing=tuple(path.rstrip("/") for path in args.skip_existing),
    trust_model=args.trust_model,
    require_gpu=args.require_gpu,
    breaker_batches=args.breaker_batches,
    breaker_share=args.breaker_share,
    breaker_first_images=args.breaker_first_images,
    quiet=args.quiet,
    run_id=new_run_id(now) if args.run_id is None else check_run_id(args.run_id),
    started=now.isoformat(timespec="seconds"),
  )


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


DEMO_OUTPUT = "runs/demo"


def demo_parser() -> argparse.ArgumentParser:
  return argparse.ArgumentParser(
    prog="segbeam demo",
    allow_abbrev=False,
    usage="segbeam demo [--output DIR] [segbeam run options] [Beam options]",
    description="segbeam run on the sample photos scikit-image ships (a cat among them) with "
    f"the embedded default model, into --output (default: {DEMO_OUTPUT}, replaced if it holds "
    "an earlier demo). Takes segbeam run's other options (see segbeam run --help) and Beam's.",
  )


def demo_argv(argv: Sequence[str]) -> list[str]:
  """`segbeam demo`'s arguments as `segbeam run`'s: the sample photos as --input, --overwrite,
  and --output when not given. Raises ValueError without scikit-image; --help prints the
  demo's own usage and exits."""
  argv = list(argv)
  demo_parser().parse_known_args([a for a in argv if a in ("-h", "--help")])
  try:
    import skimage  # noqa: PLC0415  # only the demo's extra has it
  except ImportError as error:
    raise ValueError(
      "the demo reads scikit-image's sample photos: pip install 'segbeam[demo]'"
    ) from error
  pattern = os.path.join(os.path.dirname(skimage.__file__), "data", "*.[pj][pn]g")
  return [
    "--input",
    pattern,
    "--overwrite",
    *argv,
    *([] if given(argv, "--output") else ["--output", DEMO_OUTPUT]),
  ]
