"""segbeam's Beam transforms: the public API for use inside a Beam pipeline of your own.

read (`ReadImages`) -> validate, infer, postprocess (`SegmentImages`) -> write (`WriteSegments`,
`WriteErrors`). `segbeam.run.build.build_pipeline` composes them, with the run's own steps,
into the pipeline `segbeam run` runs. docs/python-api.md shows them in a user's pipeline.
"""

from __future__ import annotations

import datetime
import inspect
import os
import typing
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference

from segbeam import constants
from segbeam import options as options_lib
from segbeam.model import contract
from segbeam.model import defaults
from segbeam.model import labels as labels_lib
from segbeam.model import loading
from segbeam.pipeline import elements
from segbeam.pipeline import inference
from segbeam.pipeline import label_files
from segbeam.pipeline import layout
from segbeam.pipeline import model_files
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import schema
from segbeam.pipeline import tiled_inference
from segbeam.pipeline import validation
from segbeam.pipeline.sources import ReadImages

__all__ = [
  "ReadImages",
  "SegmentImages",
  "WriteSegments",
  "WriteErrors",
]

SEGMENTS_ROW_GROUP_BYTES = 8 << 20


def label_map_for(
  label_map: Optional[str], metadata: contract.ModelMetadata
) -> labels_lib.LabelMap:
  """The model's own label map, or `label_map` ('1:0,2:1,3:2' or a preset) over its classes."""
  if label_map is None:
    return metadata.labels
  parsed = labels_lib.parse_label_map(label_map, metadata.class_names)
  if parsed.num_classes != len(metadata.class_names):
    raise ValueError(
      f"--label-map gives {parsed.num_classes} classes, the model has {len(metadata.class_names)}"
    )
  return parsed


class SegmentImages(beam.PTransform):
  """`elements.ImageRecord`s -> `elements.Outputs`: segments rows (dicts,
  `schema.segments_schema`) and failures. Validates, infers in batches, postprocesses.

  Every record ends as exactly one row or one failure; a bad image fails alone, with its stage
  and reason, and never takes its batch down.

  Args:
    model_dir: a segbeam export (`segbeam train` or `segbeam export`), local or on any Beam file
      system; None for the embedded default model. Its metadata is read here, when the
      pipeline is built, and a local one checked (`loading.loadable`); the workers load it,
      checking it again, refusing a graph that reaches outside the model unless `trust_model`.
    batch_size, handler, inference_slices, postprocess_threads, max_pixels, max_file_bytes,
      ground_truth, label_map, trust_model, require_gpu: as `segbeam run`'s options of the
      same names (`segbeam.options.OPTIONS`, which checks them).
    tile, tile_overlap, tile_blend, scale, max_tiled_pixels: tiled inference, as `segbeam
      run`'s --tile and its options: with `tile` ('auto' or a size), images are segmented at
      `scale` times their full resolution in overlapping tiles
      (`segbeam.pipeline.tiled_inference`), but those the model takes whole at scale 1;
      `max_tiled_pixels` is then the pixel cap.
    breaker: when the run stops because the model fails on every image
      (`options_lib.BreakerLimits`; its defaults where None).
    run_id: recorded in every row, a plain name (`options_lib.check_run_id`); a new one by
      default.
    metadata: the export's metadata, when the caller has read it already.
    distributed: whether the runner spreads the work over workers; it decides how label files
      meet the rows (`label_files`).
  """

  def __init__(
    self,
    model_dir: Optional[str] = None,
    *,
    batch_size: int = constants.DEFAULT_BATCH_SIZE,
    handler: str = constants.HANDLER_TFX_BSL,
    inference_slices: int = constants.DEFAULT_INFERENCE_SLICES,
    postprocess_threads: int = constants.DEFAULT_POSTPROCESS_THREADS,
    max_pixels: int = constants.DEFAULT_MAX_PIXELS,
    tile: Optional[str] = None,
    tile_overlap: Optional[int] = None,
    tile_blend: str = constants.BLEND_CENTRE,
    scale: float = 1.0,
    max_tiled_pixels: int = constants.DEFAULT_MAX_TILED_PIXELS,
    max_file_bytes: int = constants.DEFAULT_MAX_FILE_BYTES,
    ground_truth: Optional[str] = None,
    label_map: Optional[str] = None,
    run_id: Optional[str] = None,
    trust_model: bool = False,
    require_gpu: bool = False,
    breaker: Optional[options_lib.BreakerLimits] = None,
    metadata: Optional[contract.ModelMetadata] = None,
    distributed: bool = True,
  ):
    # Each keyword that is a run option, checked as the run checks it (`options.OPTIONS`).
    options_lib.check(**{k: v for k, v in locals().items() if k in options_lib.BY_NAME})
    super().__init__()
    self.model_dir = model_dir or defaults.default_model_dir()
    self.metadata = metadata or model_files.read_metadata(self.model_dir)
    if model_files.is_local(self.model_dir) and os.path.isdir(self.model_dir):
      # Refused now rather than on the workers, whose loads check it again (`inference`).
      loading.loadable(self.model_dir, trust_model=trust_model)
    self.run_id = (
      options_lib.new_run_id(datetime.datetime.now(datetime.timezone.utc))
      if run_id is None
      else options_lib.check_run_id(run_id)  # it names files: the journal's
    )
    self.context = rows_lib.RunContext(
      self.metadata.name,
      self.metadata.version,
      self.metadata.class_names,
      self.run_id,
      label_map_for(label_map, self.metadata),
      mask_threshold=self.metadata.mask_threshold,
    )
    handler_options = dict(
      max_batch_size=batch_size,
      slices=inference_slices,
      trust_model=trust_model,
      require_gpu=require_gpu,
      breaker=breaker,
    )
    # MakeRows resolves the pending inferences on its background threads and keeps at most
    # two batches of them.
    self._handler = inference.create_handler(
      handler, self.model_dir, overlap=True, **handler_options
    )
    options_lib.check_tiles(
      tile=tile,
      tile_overlap=tile_overlap,
      tile_blend=tile_blend,
      scale=scale,
      max_tiled_pixels=max_tiled_pixels,
    )
    self._tiles = self._tile_handler = None
    if tile is not None:
      self._tiles = tiled_inference.TileSettings.resolve(
        tile, tile_overlap, tile_blend, scale, self.metadata.serving_config
      )
      # The tiles' own handler: the export's pixels signature, the breaker counting images.
      self._tile_handler = inference.create_handler(
        constants.HANDLER_SAVED_MODEL,
        self.model_dir,
        tile=(self._tiles.size, self._tiles.channels),
        **handler_options,
      )
      max_pixels = max_tiled_pixels
    self._max_pixels = max_pixels
    self._postprocess_threads = postprocess_threads
    self._batch_size = batch_size
    self._ground_truth = ground_truth
    self._max_file_bytes = max_file_bytes
    self._distributed = distributed

  # Keywords `for_run` does not take from a run's options.
  _NOT_FROM_RUN = ("self", "model_dir", "ground_truth", "metadata", "distributed")

  @classmethod
  def for_run(
    cls,
    options: options_lib.RunOptions,
    metadata: contract.ModelMetadata,
    model_dir: str,
    *,
    distributed: bool = True,
  ) -> "SegmentImages":
    """The transform `segbeam run` applies: each of its keywords that names a run option (or
    `RunOptions.breaker`) from `options`. Without ground truth: the run joins it to the rows
    once they are in its journal (`join_ground_truth`)."""
    taken = {
      name: getattr(options, name)
      for name in inspect.signature(cls.__init__).parameters
      if name not in cls._NOT_FROM_RUN
    }
    return cls(model_dir, **taken, metadata=metadata, distributed=distributed)

  def join_ground_truth(self, ground_truth: str) -> label_files.JoinLabelFiles:
    """Rows -> the same rows with their ground-truth counts, from the label files the glob
    `ground_truth` matches: the one join of rows and labels, here or in `segbeam run`."""
    return label_files.JoinLabelFiles(
      ground_truth,
      self.context,
      distributed=self._distributed,
      max_file_bytes=self._max_file_bytes,
    )

  def expand(self, image_records) -> elements.Outputs:
    validated = image_records | "Validate" >> beam.ParDo(
      validation.ValidateImage(max_pixels=self._max_pixels)
    ).with_outputs(elements.FAILURES, main="images")
    images = validated.images
    tiled_outputs = None
    if self._tiles is not None:
      split = images | "SplitBySize" >> beam.ParDo(
        tiled_inference.SplitBySize(self._tiles)
      ).with_outputs(tiled_inference.SplitBySize.TILED, main="whole")
      images = split.whole
      tiled_outputs = split[tiled_inference.SplitBySize.TILED] | "Tiled" >> (
        tiled_inference.SegmentTiled(
          self._tile_handler,
          self._tiles,
          self.context,
          len(self.metadata.class_names),
          distributed=self._distributed,
        )
      )
    predictions = images | "RunInference" >> RunInference(self._handler)
    segmented = predictions | "Segment" >> beam.ParDo(
      rows_lib.MakeRows(
        self.context,
        threads=self._postprocess_threads,
        # two batches in flight: one inferred, one postprocessed
        max_pending=2 * self._batch_size,
      )
    ).with_outputs(elements.FAILURES, main="rows")
    rows = segmented.rows
    failures = [validated[elements.FAILURES], segmented[elements.FAILURES]]
    if tiled_outputs is not None:
      rows = (rows, tiled_outputs.rows) | "WholeAndTiled" >> beam.Flatten()
      failures.append(tiled_outputs.failures)
    if self._ground_truth:
      rows = rows | "GroundTruth" >> self.join_ground_truth(self._ground_truth)
    failures = tuple(failures) | "Failures" >> beam.Flatten()
    return elements.Outputs(rows, failures)


class WriteSegments(beam.PTransform):
  """Segments rows -> zstd Parquet files OUTPUT/segments/part-*.parquet; returns their paths.

  Args:
    output: the output folder, local or on any Beam file system.
    class_names: the model's classes, which name the coverage and pixel columns.
    num_files: how many files (the rows are shuffled to as many writers); 0 for one file per
      bundle, with no shuffle.
    prefix: the files' name before '-NNNNN-of-NNNNN.parquet'.
  """

  def __init__(
    self,
    output: str,
    class_names: typing.Sequence[str],
    num_files: int = 0,
    prefix: str = layout.PARTS_PREFIX,
  ):
    super().__init__()
    self._output = output
    self._class_names = tuple(class_names)
    self._num_files = num_files
    self._prefix = prefix

  def expand(self, rows):
    return rows | "WriteParquet" >> beam.io.WriteToParquet(
      FileSystems.join(self._output, layout.SEGMENTS_DIR, self._prefix),
      schema.segments_schema(self._class_names),
      codec="zstd",
      # Beam buffers a whole row group in memory before writing it; its 64 MB default showed
      # as worker RSS growing with the run's size (BENCHMARKS.md, Memory).
      row_group_buffer_size=SEGMENTS_ROW_GROUP_BYTES,
      file_name_suffix=".parquet",
      num_shards=self._num_files,
    )


class WriteErrors(beam.PTransform):
  """`elements.Failure`s -> zstd Parquet files OUTPUT/errors/part-*.parquet, each row with
  `run_id`; returns their paths."""

  def __init__(self, output: str, run_id: str):
    super().__init__()
    self._output = output
    self._run_id = run_id

  def expand(self, failures):
    return (
      failures
      | "ErrorRows" >> beam.Map(rows_lib.failure_row, self._run_id)
      | "Write" >> WriteErrorRows(self._output)
    )


class WriteErrorRows(beam.PTransform):
  """Errors rows (`schema.ERRORS_SCHEMA`) -> zstd Parquet files OUTPUT/errors/part-*.parquet;
  returns their paths."""

  def __init__(self, output: str):
    super().__init__()
    self._output = output

  def expand(self, error_rows):
    return error_rows | "WriteParquet" >> beam.io.WriteToParquet(
      FileSystems.join(self._output, layout.ERRORS_DIR, layout.PARTS_PREFIX),
      schema.ERRORS_SCHEMA,
      codec="zstd",
      file_name_suffix=".parquet",
    )
