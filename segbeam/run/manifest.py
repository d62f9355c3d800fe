"""A run's manifest: every count of the run, checked to add up, written last into its folder.

`WriteOutput` writes a whole run's output folder (`segbeam.pipeline.layout`): its tables, mask
files and manifest. The manifest is written once both Parquet sinks have finalized and every
count is in, and only where the conservation check holds (`build_manifest`); then the journal
and the claim on the folder are removed.
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import logging
import time
import typing
from typing import Any, Callable, Iterator, Mapping, Optional

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window

import segbeam
from segbeam import options as options_lib
from segbeam.model import contract
from segbeam.pipeline import layout
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import sinks
from segbeam.pipeline import transforms
from segbeam.run import output_claim

_LOG = logging.getLogger(__name__)


CONSERVATION_RULE = (
  "inputs_seen + resumed_inputs_gone == segmented + failed + skipped_existing, where "
  "segmented and failed are the rows the segments and errors Parquet files hold, equal to "
  "the pipeline's counts; with --mask-files, one mask per segmented image; "
  "resumed (inputs an earlier attempt did) + resumed_inputs_gone (inputs it did that are "
  "gone since, their rows kept) == from_earlier_attempts (its rows)"
)


def parquet_rows(path: str) -> int:
  """Rows in a Parquet file, from its footer alone."""
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return pq.ParquetFile(f).metadata.num_rows


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_manifest(
  base: Mapping[str, Any],
  *,
  seen: int,
  segmented: int,
  failures: list[tuple[tuple[str, str], int]],
  segment_files: list[str],
  error_files: list[str],
  segments_rows: int,
  errors_rows: int,
  skipped_existing: int = 0,
  masks_written: int = 0,
  mask_files: bool = False,
  resumed: int = 0,
  replayed: int = 0,
  resumed_gone: int = 0,
) -> dict[str, Any]:
  """The manifest of a run. `segmented`, `failed` and `masks_written` are what the pipeline
  counted; `segments_rows` and `errors_rows` what the written tables hold; `resumed`, the
  inputs set aside as done by an earlier attempt, `replayed`, the rows of those attempts
  written to the tables, and `resumed_gone`, the inputs of such rows that this attempt did not
  see, gone since (all 0 for a run in one attempt). The conservation check holds when every
  input seen, and every input gone since an earlier attempt did it, is in exactly one table
  or was skipped, the tables, the counts and the mask files agree, and each input an earlier
  attempt did has its one row from it."""
  failed = sum(count for _, count in failures)
  by_stage: dict[str, int] = {}
  for (stage, _), count in failures:
    by_stage[stage] = by_stage.get(stage, 0) + count
  tables_match_counts = segments_rows == segmented and errors_rows == failed
  masks_match = masks_written == (segmented if mask_files else 0)
  return {
    **base,
    "status": "complete",
    "finished": _now(),
    "counts": {
      "inputs_seen": seen,
      "segmented": segmented,
      "failed": failed,
      "skipped_existing": skipped_existing,
      "from_earlier_attempts": replayed,
      "resumed_inputs_gone": resumed_gone,
      "failed_by_stage": dict(sorted(by_stage.items())),
      "failed_by_reason": [
        {"stage": stage, "error_type": error_type, "count": count}
        for (stage, error_type), count in sorted(failures)
      ],
    },
    "conservation": {
      "inputs_seen": seen,
      "segmented": segments_rows,
      "failed": errors_rows,
      "skipped_existing": skipped_existing,
      "masks_written": masks_written,
      "resumed": resumed,
      "resumed_inputs_gone": resumed_gone,
      "from_earlier_attempts": replayed,
      "holds": (
        seen + resumed_gone == segments_rows + errors_rows + skipped_existing
        and tables_match_counts
        and masks_match
        and resumed + resumed_gone == replayed
      ),
      "rule": CONSERVATION_RULE,
    },
    "files": {
      layout.SEGMENTS_DIR: sorted(segment_files),
      layout.ERRORS_DIR: sorted(error_files),
      layout.MASKS_DIR: masks_written,
    },
  }


class UnbalancedRunError(RuntimeError):
  """Inputs were lost or doubled: the run must fail, and leave no manifest."""


# The run's counts come from one combine (`WriteOutput`): every counted element becomes a key
# naming what it counts, (what, stage, error type), the last two set only for failures. Nothing
# counted, no key: its count is 0.
COUNT_RECORDS = "records"  # records the reader produced
COUNT_READ_FAILURES = "read_failures"  # inputs the reader could not make a record of
COUNT_SEGMENTED = "segmented"  # rows sent to the segments table
COUNT_SKIPPED = "skipped_existing"  # records skipped as segmented by an earlier run
COUNT_RESUMED = "resumed"  # inputs set aside as in an earlier attempt's journal (--resume)
COUNT_REPLAYED = "replayed"  # rows of that journal written to the tables
COUNT_RESUMED_GONE = "resumed_inputs_gone"  # inputs of those rows not seen by this attempt
COUNT_MASK_FILES = "mask_files"  # mask files written
COUNT_FAILED = "failed"  # failures sent to the errors table, by stage and type
CountKey = tuple[str, str, str]


def count_key(unused_element: Any, what: str) -> CountKey:
  return what, "", ""


def error_count_key(error_row: Mapping[str, Any]) -> CountKey:
  return COUNT_FAILED, error_row["stage"], error_row["error_type"]


class CountPerBundle(beam.DoFn):
  """Elements -> (CountKey, how many) per bundle, emitted as the bundle finishes: a few
  partial counts per bundle cross to the combine that sums them, instead of one keyed element
  per input (each encoded and decoded between stages, since the counts flatten several
  PCollections). A retried bundle's partial counts are dropped with its other outputs.

  Args:
    key: element -> its CountKey.
  """

  def __init__(self, key: Callable[[Any], CountKey]):
    self._key = key

  def start_bundle(self):
    self._counts: collections.Counter = collections.Counter()

  def process(self, element) -> Iterator:
    self._counts[self._key(element)] += 1
    return iter(())

  def finish_bundle(self) -> Iterator:
    for key, count in self._counts.items():
      yield window.GlobalWindows.windowed_value((key, count))


class WriteManifest(beam.DoFn):
  """Runs once, after both Parquet sinks finalized (their file names are among its side
  inputs) and the run's counts are in (`CountKey`s with their counts). Raises instead of
  writing when the conservation check does not hold.

  The rows each final file holds, what readers will see, are read here from the files'
  footers, not taken from a step over the file names: as another side input such a step's
  output depended on the runner's scheduling (Beam's BundleBasedDirectRunner ran this DoFn
  with the file names but before the rows step, and the check failed a complete run).
  """

  def __init__(self, output_dir: str, base: Mapping[str, Any]):
    self._output = output_dir
    self._path = FileSystems.join(output_dir, layout.MANIFEST_FILE)
    self._base = dict(base)

  def process(self, unused_element, counts, segment_files, error_files):
    started = time.monotonic()
    by_key = dict(counts)
    segment_files, error_files = list(segment_files), list(error_files)

    def count(what: str) -> int:
      return by_key.get((what, "", ""), 0)

    failures = [
      ((stage, error_type), n)
      for (what, stage, error_type), n in by_key.items()
      if what == COUNT_FAILED
    ]
    segments_rows = sum(map(parquet_rows, segment_files))
    errors_rows = sum(map(parquet_rows, error_files))
    manifest = build_manifest(
      self._base,
      seen=count(COUNT_RECORDS) + count(COUNT_READ_FAILURES),
      segmented=count(COUNT_SEGMENTED),
      failures=failures,
      segment_files=segment_files,
      error_files=error_files,
      segments_rows=segments_rows,
      errors_rows=errors_rows,
      skipped_existing=count(COUNT_SKIPPED),
      masks_written=count(COUNT_MASK_FILES),
      mask_files=bool(self._base.get("options", {}).get("mask_files")),
      resumed=count(COUNT_RESUMED),
      replayed=count(COUNT_REPLAYED),
      resumed_gone=count(COUNT_RESUMED_GONE),
    )
    if not manifest["conservation"]["holds"]:
      # A lost or doubled input is a bug. Fail the job (non-zero exit, a failed Dataflow job)
      # and write no manifest, so that every reader treats the output as incomplete.
      message = (
        f"inputs not accounted for, no manifest written: {json.dumps(manifest['conservation'])}"
      )
      _LOG.error(message)
      raise UnbalancedRunError(message)
    sinks.write_file(
      self._path, json.dumps(manifest, indent=2).encode(), mime_type="application/json"
    )
    # Complete: the rows made durable while it went, and its claim on the folder, go.
    layout.delete_entries(self._output, [layout.JOURNAL_DIR])
    output_claim.release(self._output)
    # The one step that reads every output file's footer: its time is watched as runs grow.
    _LOG.info(
      "wrote the manifest (%d Parquet files, %d rows) in %.2f s",
      len(segment_files) + len(error_files),
      segments_rows + errors_rows,
      time.monotonic() - started,
    )
    yield manifest


class WriteOutput(beam.PTransform):
  """A dict of the run's PCollections -> the output folder; returns the manifest PCollection.

  Keys: 'records' and 'read_failures', what the reader made of every input (counted as the
  inputs seen); 'rows', the segments rows; 'failures', every failure, the reader's included;
  with --skip-existing, 'skipped', the records an earlier run segmented; and with --resume,
  'resumed', the ids of inputs an earlier attempt's journal holds (`journal`), and
  'replayed_rows' and 'replayed_errors', that journal's rows, written to the tables with the
  new ones (the segments as OUTPUT/segments/resumed-*.parquet), and 'resumed_gone', the ids
  of those rows' inputs this attempt did not read (`journal.GoneInputs`).

  Every count comes from one combine summing `CountKey`s' partial counts per bundle
  (`CountPerBundle`; Beam expands each combine into a handful of transforms, and each
  transform costs start-up time). The manifest is written last, once both Parquet sinks have
  finalized, their files' rows are counted and every count is in; it checks that they add up
  (`build_manifest`), then the journal and the claim on the folder are removed.

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
      >> transforms.WriteSegments(options.output, metadata.class_names, options.segments_files)
    ]
    error_rows = failures | "ErrorRows" >> beam.Map(rows_lib.failure_row, options.run_id)
    counted = [
      (COUNT_RECORDS, inputs["records"]),
      (COUNT_READ_FAILURES, inputs["read_failures"]),
      (COUNT_SEGMENTED, rows),
    ]
    if "skipped" in inputs:
      counted.append((COUNT_SKIPPED, inputs["skipped"]))
    all_rows = [rows]
    if "replayed_rows" in inputs:
      replayed_rows, replayed_errors = inputs["replayed_rows"], inputs["replayed_errors"]
      segment_files.append(
        replayed_rows
        | "WriteResumedSegments"
        >> transforms.WriteSegments(
          options.output, metadata.class_names, prefix=layout.RESUMED_PREFIX
        )
      )
      error_rows = (error_rows, replayed_errors) | "AllErrorRows" >> beam.Flatten()
      all_rows.append(replayed_rows)
      counted += [
        (COUNT_SEGMENTED, replayed_rows),
        (COUNT_RESUMED, inputs["resumed"]),
        (COUNT_REPLAYED, replayed_rows),
        (COUNT_REPLAYED, replayed_errors),
        (COUNT_RESUMED_GONE, inputs["resumed_gone"]),
      ]
    error_files = error_rows | "WriteErrors" >> transforms.WriteErrorRows(options.output)
    if options.mask_files:
      for i, some_rows in enumerate(all_rows):
        counted.append(
          (
            COUNT_MASK_FILES,
            some_rows
            | f"WriteMaskFiles{'_resumed' * i}" >> beam.ParDo(sinks.WriteMaskFile(options.output)),
          )
        )
    partial_counts = [
      pcoll
      | f"Count_{what}_{i}" >> beam.ParDo(CountPerBundle(functools.partial(count_key, what=what)))
      for i, (what, pcoll) in enumerate(counted)
    ]
    partial_counts.append(
      error_rows | "Count_failed" >> beam.ParDo(CountPerBundle(error_count_key))
    )
    counts = partial_counts | "AllCounts" >> beam.Flatten() | "Count" >> beam.CombinePerKey(sum)
    if len(segment_files) > 1:
      segment_files = [segment_files | "AllSegmentFiles" >> beam.Flatten()]
    return (
      pipeline
      | "ManifestTrigger" >> beam.Create([None])
      | "WriteManifest"
      >> beam.ParDo(
        WriteManifest(options.output, self._manifest_base()),
        beam.pvalue.AsList(counts),
        beam.pvalue.AsList(segment_files[0]),
        beam.pvalue.AsList(error_files),
      )
    )

  def _manifest_base(self) -> dict[str, Any]:
    options, metadata = self._options, self._metadata
    label_map = transforms.label_map_for(options.label_map, metadata)
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
