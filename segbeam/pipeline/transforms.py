"""segbeam's Beam transforms: the public API for use inside a Beam pipeline of your own.

read (`ReadImages`) -> validate, infer, postprocess (`SegmentImages`) -> write (`WriteSegments`,
`WriteErrors`, or `WriteOutput` for a whole run's output folder with its manifest).
`build_pipeline` composes them into the pipeline `segbeam run` runs. docs/python-api.md shows
them in a user's pipeline.
"""

from __future__ import annotations

import datetime
import functools
import os
import typing
from typing import Any, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference

import segbeam
from segbeam.model import contract
from segbeam.model import defaults
from segbeam.model import labels as labels_lib
from segbeam.model import loading
from segbeam.pipeline import constants
from segbeam.pipeline import elements
from segbeam.pipeline import inference
from segbeam.pipeline import journal
from segbeam.pipeline import label_files
from segbeam.pipeline import model_files
from segbeam.pipeline import options as options_lib
from segbeam.pipeline import progress
from segbeam.pipeline import resume
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import schema
from segbeam.pipeline import sinks
from segbeam.pipeline import sources
from segbeam.pipeline import validation
from segbeam.pipeline.sources import ReadImages

__all__ = [
  "ReadImages",
  "Segmented",
  "SegmentImages",
  "WriteSegments",
  "WriteErrors",
  "WriteOutput",
  "build_pipeline",
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


class Segmented(typing.NamedTuple):
  """What `SegmentImages` returns: one segments row (a dict, `schema.segments_schema`) or one
  `elements.Failure` per input record."""

  rows: beam.PCollection
  failures: beam.PCollection


class SegmentImages(beam.PTransform):
  """`elements.ImageRecord`s -> `Segmented`: validate, infer in batches, postprocess.

  Every record ends as exactly one row or one failure; a bad image fails alone, with its stage
  and reason, and never takes its batch down.

  Args:
    model_dir: a segbeam export (`segbeam train` or `segbeam export`), local or on any Beam file
      system; None for the embedded default model. Its metadata is read here, when the
      pipeline is built, and a local one checked (`loading.loadable`); the workers load it,
      checking it again, refusing a graph that reaches outside the model unless `trust_model`.
    batch_size, handler, inference_slices, postprocess_threads, max_pixels, ground_truth,
      label_map, trust_model, require_gpu: as `segbeam run`'s options of the same names
      (`options.RunOptions`; `ground_truth` is its `labels`).
    breaker: when the run stops because the model fails on every image
      (`options.BreakerLimits`; its defaults where None).
    run_id: recorded in every row, a plain name (`options.check_run_id`); a new one by
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
    ground_truth: Optional[str] = None,
    label_map: Optional[str] = None,
    run_id: Optional[str] = None,
    trust_model: bool = False,
    require_gpu: bool = False,
    breaker: Optional[options_lib.BreakerLimits] = None,
    metadata: Optional[contract.ModelMetadata] = None,
    distributed: bool = True,
  ):
    super().__init__()
    options_lib.check_at_least_one(
      batch_size=batch_size,
      max_pixels=max_pixels,
      inference_slices=inference_slices,
      postprocess_threads=postprocess_threads,
    )
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
    self._handler = inference.create_handler(
      handler,
      self.model_dir,
      max_batch_size=batch_size,
      slices=inference_slices,
      # MakeRows resolves the pending inferences on its background threads and keeps at
      # most two batches of them.
      overlap=True,
      trust_model=trust_model,
      require_gpu=require_gpu,
      breaker=breaker,
    )
    self._max_pixels = max_pixels
    self._postprocess_threads = postprocess_threads
    self._batch_size = batch_size
    self._ground_truth = ground_truth
    self._distributed = distributed

  @classmethod
  def for_run(
    cls,
    options: options_lib.RunOptions,
    metadata: contract.ModelMetadata,
    model_dir: str,
    *,
    distributed: bool = True,
  ) -> "SegmentImages":
    """The transform `segbeam run` applies, from its options: without its label files, which
    `build_pipeline` joins to the rows once they are in the journal."""
    return cls(
      model_dir,
      batch_size=options.batch_size,
      handler=options.handler,
      inference_slices=options.inference_slices,
      postprocess_threads=options.postprocess_threads,
      max_pixels=options.max_pixels,
      label_map=options.label_map,
      run_id=options.run_id,
      trust_model=options.trust_model,
      require_gpu=options.require_gpu,
      breaker=options.breaker,
      metadata=metadata,
      distributed=distributed,
    )

  def expand(self, image_records) -> Segmented:
    validated = image_records | "Validate" >> beam.ParDo(
      validation.ValidateImage(max_pixels=self._max_pixels)
    ).with_outputs(elements.FAILURES, main="images")
    predictions = validated.images | "RunInference" >> RunInference(self._handler)
    segmented = predictions | "Segment" >> beam.ParDo(
      rows_lib.MakeRows(
        self.context,
        threads=self._postprocess_threads,
        # two batches in flight: one inferred, one postprocessed
        max_pending=2 * self._batch_size,
      )
    ).with_outputs(elements.FAILURES, main="rows")
    rows = segmented.rows
    if self._ground_truth:
      rows = rows | "GroundTruth" >> label_files.JoinLabelFiles(
        self._ground_truth, self.context, distributed=self._distributed
      )
    failures = (
      validated[elements.FAILURES],
      segmented[elements.FAILURES],
    ) | "Failures" >> beam.Flatten()
    return Segmented(rows, failures)


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
    prefix: str = "part",
  ):
    super().__init__()
    self._output = output
    self._class_names = tuple(class_names)
    self._num_files = num_files
    self._prefix = prefix

  def expand(self, rows):
    return rows | "WriteParquet" >> beam.io.WriteToParquet(
      FileSystems.join(self._output, constants.SEGMENTS_DIR, self._prefix),
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
      FileSystems.join(self._output, constants.ERRORS_DIR, "part"),
      schema.ERRORS_SCHEMA,
      codec="zstd",
      file_name_suffix=".parquet",
    )


class WriteOutput(beam.PTransform):
  """A dict of the run's PCollections -> the output folder; returns the manifest PCollection.

  Keys: 'records' and 'read_failures', what the reader made of every input (counted as the
  inputs seen); 'rows', the segments rows; 'failures', every failure, the reader's included;
  with --skip-existing, 'skipped', the records an earlier run segmented; and with --resume,
  'resumed', the ids of inputs an earlier attempt's journal holds (`journal`), and
  'replayed_rows' and 'replayed_errors', that journal's rows, written to the tables with the
  new ones (the segments as OUTPUT/segments/resumed-*.parquet), and 'resumed_gone', the ids
  of those rows' inputs this attempt did not read (`journal.GoneInputs`).

  Every count comes from one combine summing `sinks.CountKey`s' partial counts per bundle
  (`sinks.CountPerBundle`; Beam expands each combine into a handful of transforms, and each
  transform costs start-up time). The manifest is written last, once both Parquet sinks have
  finalized, their files' rows are counted and every count is in; it checks that they add up
  (`sinks.build_manifest`), then the journal and the claim on the folder are removed.

  Args:
    options, metadata, model_dir: the run's.
    attempts: every attempt at this output, this one last, as {run_id, started}; None for a
      run that is the only one.
  """

  def __init__(
    self,
    options: options_lib.RunOptions,
    metadata: contract.ModelMetadata,
    model_dir: str,
    attempts: Optional[typing.Sequence[dict[str, str]]] = None,
  ):
    super().__init__()
    self._options = options
    self._metadata = metadata
    self._model_dir = model_dir
    self._attempts = list(attempts or [{"run_id": options.run_id, "started": options.started}])

  def expand(self, inputs):
    rows, failures = inputs["rows"], inputs["failures"]
    options, metadata = self._options, self._metadata
    pipeline = rows.pipeline
    segment_files = [
      rows
      | "WriteSegments"
      >> WriteSegments(options.output, metadata.class_names, options.segments_files)
    ]
    error_rows = failures | "ErrorRows" >> beam.Map(rows_lib.failure_row, options.run_id)
    counted = [
      (sinks.COUNT_RECORDS, inputs["records"]),
      (sinks.COUNT_READ_FAILURES, inputs["read_failures"]),
      (sinks.COUNT_SEGMENTED, rows),
    ]
    if "skipped" in inputs:
      counted.append((sinks.COUNT_SKIPPED, inputs["skipped"]))
    all_rows = [rows]
    if "replayed_rows" in inputs:
      replayed_rows, replayed_errors = inputs["replayed_rows"], inputs["replayed_errors"]
      segment_files.append(
        replayed_rows
        | "WriteResumedSegments"
        >> WriteSegments(options.output, metadata.class_names, prefix="resumed")
      )
      error_rows = (error_rows, replayed_errors) | "AllErrorRows" >> beam.Flatten()
      all_rows.append(replayed_rows)
      counted += [
        (sinks.COUNT_SEGMENTED, replayed_rows),
        (sinks.COUNT_RESUMED, inputs["resumed"]),
        (sinks.COUNT_REPLAYED, replayed_rows),
        (sinks.COUNT_REPLAYED, replayed_errors),
        (sinks.COUNT_RESUMED_GONE, inputs["resumed_gone"]),
      ]
    error_files = error_rows | "WriteErrors" >> WriteErrorRows(options.output)
    if options.mask_files:
      for i, some_rows in enumerate(all_rows):
        counted.append(
          (
            sinks.COUNT_MASK_FILES,
            some_rows
            | f"WriteMaskFiles{'_resumed' * i}" >> beam.ParDo(sinks.WriteMaskFile(options.output)),
          )
        )
    partial_counts = [
      pcoll
      | f"Count_{what}_{i}"
      >> beam.ParDo(sinks.CountPerBundle(functools.partial(sinks.count_key, what=what)))
      for i, (what, pcoll) in enumerate(counted)
    ]
    partial_counts.append(
      error_rows | "Count_failed" >> beam.ParDo(sinks.CountPerBundle(sinks.error_count_key))
    )
    counts = partial_counts | "AllCounts" >> beam.Flatten() | "Count" >> beam.CombinePerKey(sum)
    if len(segment_files) > 1:
      segment_files = [segment_files | "AllSegmentFiles" >> beam.Flatten()]
    return (
      pipeline
      | "ManifestTrigger" >> beam.Create([None])
      | "WriteManifest"
      >> beam.ParDo(
        sinks.WriteManifest(options.output, self._manifest_base()),
        beam.pvalue.AsList(counts),
        beam.pvalue.AsList(segment_files[0]),
        beam.pvalue.AsList(error_files),
      )
    )

  def _manifest_base(self) -> dict[str, Any]:
    options, metadata = self._options, self._metadata
    label_map = label_map_for(options.label_map, metadata)
    return {
      "run_id": options.run_id,
      "started": options.started,
      "input": options.input,
      "output": options.output,
      "segbeam_version": segbeam.__version__,
      "attempts": self._attempts,
      "model": {
        "name": metadata.name,
        "version": metadata.version,
        "path": self._model_dir,
        "architecture": metadata.architecture,
        "class_names": list(metadata.class_names),
      },
      "options": {
        k: v
        for k, v in options.to_dict().items()
        if k not in ("input", "output", "run_id", "started")
      },
      # What labels, where there are any, are scored on: the classes the label map covers.
      "ground_truth": {
        "classes": [
          metadata.class_names[c]
          for c in label_map.covered_classes
          if c < len(metadata.class_names)
        ],
        "mapping": label_map.to_dict()["mapping"],
      },
    }


def build_pipeline(
  pipeline: beam.Pipeline,
  options: options_lib.RunOptions,
  metadata: contract.ModelMetadata,
  model_dir: str,
  *,
  distributed: bool = True,
  attempts: Optional[typing.Sequence[dict[str, str]]] = None,
) -> beam.PCollection:
  """Adds `segbeam run`'s whole run to `pipeline`: read -> [resume, skip existing] ->
  validate/decode -> infer -> postprocess -> journal -> [ground truth] -> write. Returns the
  PCollection holding the manifest.

  Args:
    distributed: whether the runner spreads the work over workers; then the input files are
      reshuffled over them (`ReadImages`) and label files join the rows through a shuffle
      (`label_files`). In one process neither pays: there a shuffle only costs memory.
    attempts: every attempt at this output, this one last (the claim's, `output_claim`):
      the earlier ones' journals are resumed (`journal`).
  """
  read = pipeline | "Read" >> ReadImages(
    options.input,
    input_format=options.input_format,
    example_keys=options.example_keys,
    max_file_bytes=options.max_file_bytes,
    read_concurrency=options.read_concurrency,
    spread_files=distributed,
    output=options.output,  # its own files are never inputs
  )
  outputs = {"records": read.records, "read_failures": read[elements.FAILURES]}
  to_segment, read_failures = read.records, read[elements.FAILURES]
  segment = SegmentImages.for_run(options, metadata, model_dir, distributed=distributed)
  earlier = list(attempts or [])[:-1]
  model = (metadata.name, metadata.version)
  if earlier:
    # Before validation: what an earlier attempt did is never decoded again.
    replayed = pipeline | "Replay" >> journal.ReplayJournal(
      options.output, earlier, model, distributed=distributed
    )
    done_ids = journal.journaled_ids(replayed)
    outputs["resumed_gone"] = done_ids | "Gone" >> journal.GoneInputs(
      [read.records, read[elements.FAILURES]]
    )
    kept = to_segment | "ResumeRecords" >> resume.SkipIds(
      done_ids, journal.RESUMED, progress.RESUMED
    )
    kept_failures = read_failures | "ResumeFailures" >> resume.SkipIds(
      done_ids, journal.RESUMED, progress.RESUMED
    )
    to_segment, read_failures = kept.kept, kept_failures.kept
    outputs["resumed"] = (kept[journal.RESUMED], kept_failures[journal.RESUMED]) | (
      "Resumed" >> beam.Flatten()
    )
    replayed_rows = replayed[journal.SEGMENTS]
    if options.labels:
      replayed_rows = replayed_rows | "ReplayedGroundTruth" >> label_files.JoinLabelFiles(
        options.labels,
        segment.context,
        distributed=distributed,
        max_file_bytes=options.max_file_bytes,
      )
    outputs["replayed_rows"] = replayed_rows
    outputs["replayed_errors"] = replayed[journal.ERRORS]
  if options.skip_existing:
    # Before validation: an image segmented before is never decoded again.
    kept = to_segment | "SkipExisting" >> resume.SkipExisting(
      options.skip_existing, metadata.version, sources.pattern_root(options.input)
    )
    to_segment, outputs["skipped"] = kept.kept, kept[resume.SKIPPED]
  segmented = to_segment | "Segment" >> segment
  # A few batches at a time: with the batches in flight, what a kill may lose.
  every = 2 * options.batch_size
  rows = segmented.rows | "JournalRows" >> beam.ParDo(
    journal.JournalRows(
      options.output,
      journal.SEGMENTS,
      schema.segments_schema(metadata.class_names),
      journal.stamp(options.run_id, options.started, *model),
      every,
    )
  )
  if options.labels:
    rows = rows | "GroundTruth" >> label_files.JoinLabelFiles(
      options.labels,
      segment.context,
      distributed=distributed,
      max_file_bytes=options.max_file_bytes,
    )
  outputs["rows"] = rows
  outputs["failures"] = (
    (read_failures, segmented.failures)
    | "AllFailures" >> beam.Flatten()
    | "JournalFailures"
    >> beam.ParDo(
      journal.JournalRows(
        options.output,
        journal.ERRORS,
        schema.ERRORS_SCHEMA,
        journal.stamp(options.run_id, options.started, *model),
        every,
        to_row=functools.partial(rows_lib.failure_row, run_id=options.run_id),
      )
    )
  )
  return outputs | "Write" >> WriteOutput(options, metadata, model_dir, attempts)
