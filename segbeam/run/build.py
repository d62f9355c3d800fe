"""`segbeam run`'s pipeline: the public transforms (`segbeam.pipeline.transforms`) joined with
the run's own steps: resuming an earlier attempt (`journal`), skipping what earlier runs did
(`resume`), journaling rows as they are made, and the output folder with its manifest
(`manifest.WriteOutput`)."""

from __future__ import annotations

import functools
import typing
from typing import Optional

import apache_beam as beam

from segbeam import options as options_lib
from segbeam.model import contract
from segbeam.pipeline import progress
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import schema
from segbeam.pipeline import sources
from segbeam.pipeline.transforms import ReadImages
from segbeam.pipeline.transforms import SegmentImages
from segbeam.run import journal
from segbeam.run import manifest as manifest_lib
from segbeam.run import resume


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
    sample_keys=options.sample_keys,
    parquet_columns=options.parquet_columns,
    max_file_bytes=options.max_file_bytes,
    read_concurrency=options.read_concurrency,
    spread_files=distributed,
    output=options.output,  # its own files are never inputs
  )
  outputs = {"records": read.rows, "read_failures": read.failures}
  to_segment, read_failures = read.rows, read.failures
  segment = SegmentImages.for_run(options, metadata, model_dir, distributed=distributed)
  earlier = list(attempts or [])[:-1]
  model = (metadata.name, metadata.version)
  if earlier:
    # Before validation: what an earlier attempt did is never decoded again.
    replayed = pipeline | "Replay" >> journal.ReplayJournal(
      options.output, earlier, model, distributed=distributed
    )
    done_ids = journal.journaled_ids(replayed)
    outputs["resumed_gone"] = done_ids | "Gone" >> journal.GoneInputs([read.rows, read.failures])
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
    if options.ground_truth:
      replayed_rows = replayed_rows | "ReplayedGroundTruth" >> segment.join_ground_truth(
        options.ground_truth
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
  if options.ground_truth:
    rows = rows | "GroundTruth" >> segment.join_ground_truth(options.ground_truth)
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
  return outputs | "Write" >> manifest_lib.WriteOutput(options, metadata, model_dir, attempts)
