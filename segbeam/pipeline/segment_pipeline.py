"""The pipeline graph: read -> [skip existing] -> validate -> infer -> postprocess -> write."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference

import segbeam
from segbeam.model import export as export_lib
from segbeam.model import labels as labels_lib
from segbeam.pipeline import inference
from segbeam.pipeline import options as options_lib
from segbeam.pipeline import records
from segbeam.pipeline import resume
from segbeam.pipeline import schema
from segbeam.pipeline import segments
from segbeam.pipeline import sinks
from segbeam.pipeline import sources
from segbeam.pipeline import validation

SEGMENTS_ROW_GROUP_BYTES = 8 << 20


def label_map_for(
  options: options_lib.RunOptions, metadata: export_lib.ModelMetadata
) -> labels_lib.LabelMap:
  if options.label_map is None:
    return metadata.labels
  label_map = labels_lib.parse_label_map(options.label_map, metadata.class_names)
  if label_map.num_classes != len(metadata.class_names):
    raise ValueError(
      f"--label-map gives {label_map.num_classes} classes, the model has "
      f"{len(metadata.class_names)}"
    )
  return label_map


def _label_entry(metadata, root: str) -> tuple[str, str]:
  return segments.label_key(sources.relative_id(metadata.path, root)), metadata.path


class SegmentImages(beam.PTransform):
  """ImageRecords -> (rows, failures): validate, infer, postprocess."""

  def __init__(self, options: options_lib.RunOptions, context: segments.RunContext, model_dir: str):
    super().__init__()
    self._options = options
    self._context = context
    self._model_dir = model_dir

  def expand(self, image_records):
    options = self._options
    validated = image_records | "Validate" >> beam.ParDo(
      validation.ValidateImage(max_pixels=options.max_pixels)
    ).with_outputs(records.FAILURES, main="images")
    predictions = validated.images | "RunInference" >> RunInference(
      inference.create_handler(
        options.handler,
        self._model_dir,
        max_batch_size=options.batch_size,
        slices=options.inference_slices,
        # Segment resolves the pending inferences on its background
        # threads and keeps at most two batches of them.
        overlap=True,
        trust_model=options.trust_model,
        require_gpu=options.require_gpu,
      )
    )
    label_paths = None
    if options.labels:
      root = sources.pattern_root(options.labels)
      label_paths = beam.pvalue.AsDict(
        image_records.pipeline
        | "MatchLabels" >> fileio.MatchFiles(options.labels)
        | "LabelKeys" >> beam.Map(_label_entry, root)
      )
    segmented = predictions | "Segment" >> beam.ParDo(
      segments.SegmentImage(
        self._context,
        threads=options.postprocess_threads,
        # two batches in flight: one inferred, one postprocessed
        max_pending=2 * options.batch_size,
      ),
      label_paths=label_paths,
    ).with_outputs(records.FAILURES, main="rows")
    failures = (
      validated[records.FAILURES],
      segmented[records.FAILURES],
    ) | "Failures" >> beam.Flatten()
    return segmented.rows, failures


class WriteRunOutput(beam.PTransform):
  """A dict of the run's PCollections -> the output folder; returns the manifest PCollection.

  Keys: 'records' and 'read_failures', what the reader made of every input (counted as the
  inputs seen); 'rows', the segments rows; 'failures', every failure, the reader's included;
  and, with --skip-existing, 'skipped', the records an earlier run segmented.

  Every count comes from one combine over `sinks.CountKey`s (Beam expands each combine into a
  handful of transforms, and each transform costs start-up time). The manifest is written
  last, once both Parquet sinks have finalized, their files' rows are counted and every count
  is in; it checks that they add up (`sinks.build_manifest`).
  """

  def __init__(
    self, options: options_lib.RunOptions, metadata: export_lib.ModelMetadata, model_dir: str
  ):
    super().__init__()
    self._options = options
    self._metadata = metadata
    self._model_dir = model_dir

  def expand(self, inputs):
    rows, failures = inputs["rows"], inputs["failures"]
    options, metadata = self._options, self._metadata
    pipeline = rows.pipeline
    segment_files = rows | "WriteSegments" >> beam.io.WriteToParquet(
      FileSystems.join(options.output, sinks.SEGMENTS_DIR, "part"),
      schema.segments_schema(metadata.class_names),
      codec="zstd",
      # Beam buffers a whole row group in memory before writing it; 64 MB (its default) is
      # ~16,000 rows here and showed as worker RSS growing with the run's size. 8 MB is
      # ~2,000 rows, still large row groups for DuckDB and BigQuery (BENCHMARKS.md).
      row_group_buffer_size=SEGMENTS_ROW_GROUP_BYTES,
      file_name_suffix=".parquet",
    )
    error_files = (
      failures
      | "ErrorRows" >> beam.Map(segments.failure_row, options.run_id)
      | "WriteErrors"
      >> beam.io.WriteToParquet(
        FileSystems.join(options.output, sinks.ERRORS_DIR, "part"),
        schema.ERRORS_SCHEMA,
        codec="zstd",
        file_name_suffix=".parquet",
      )
    )
    counted = {
      sinks.COUNT_RECORDS: inputs["records"],
      sinks.COUNT_READ_FAILURES: inputs["read_failures"],
      sinks.COUNT_SEGMENTED: rows,
    }
    if "skipped" in inputs:
      counted[sinks.COUNT_SKIPPED] = inputs["skipped"]
    if options.mask_files:
      counted[sinks.COUNT_MASK_FILES] = rows | "WriteMaskFiles" >> beam.ParDo(
        sinks.WriteMaskFile(options.output)
      )
    keyed = [
      pcoll | f"Key_{what}" >> beam.Map(sinks.count_key, what) for what, pcoll in counted.items()
    ]
    keyed.append(failures | "Key_failed" >> beam.Map(sinks.failure_count_key))
    counts = keyed | "CountKeys" >> beam.Flatten() | "Count" >> beam.combiners.Count.PerElement()
    label_map = label_map_for(options, metadata)
    manifest_base = {
      "run_id": options.run_id,
      "started": options.started,
      "input": options.input,
      "output": options.output,
      "segbeam_version": segbeam.__version__,
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
    return (
      pipeline
      | "ManifestTrigger" >> beam.Create([None])
      | "WriteManifest"
      >> beam.ParDo(
        sinks.WriteManifest(options.output, manifest_base),
        beam.pvalue.AsList(counts),
        beam.pvalue.AsList(segment_files),
        beam.pvalue.AsList(error_files),
      )
    )


def build_pipeline(
  pipeline: beam.Pipeline,
  options: options_lib.RunOptions,
  metadata: export_lib.ModelMetadata,
  model_dir: str,
  *,
  spread_files: bool = True,
) -> beam.PCollection:
  """Adds the whole run to `pipeline`: read -> validate/decode -> infer -> postprocess ->
  write. Returns the PCollection holding the manifest. `spread_files`: reshuffle the input
  files over workers (not needed when one process runs everything, see `ReadImageShards`)."""
  context = segments.RunContext(
    metadata.name,
    metadata.version,
    metadata.class_names,
    options.run_id,
    label_map_for(options, metadata),
    mask_threshold=metadata.mask_threshold,
  )
  read = pipeline | "Read" >> sources.ReadImageShards(
    options.input,
    input_format=options.input_format,
    example_keys=options.example_keys,
    max_file_bytes=options.max_file_bytes,
    spread_files=spread_files,
  )
  outputs = {"records": read.records, "read_failures": read[records.FAILURES]}
  to_segment = read.records
  if options.skip_existing:
    # Before validation: an image segmented before is never decoded again.
    kept = read.records | "SkipExisting" >> resume.SkipExisting(
      options.skip_existing, metadata.version
    )
    to_segment, outputs["skipped"] = kept.records, kept[resume.SKIPPED]
  outputs["rows"], segment_failures = to_segment | "Segment" >> SegmentImages(
    options, context, model_dir
  )
  outputs["failures"] = (read[records.FAILURES], segment_failures) | "AllFailures" >> beam.Flatten()
  return outputs | "Write" >> WriteRunOutput(options, metadata, model_dir)
