"""`segbeam summary OUTPUT`: counts, run and model info, per-class coverage statistics."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

from segbeam import exits
from segbeam import messages
from segbeam.messages import printable
from segbeam.model import labels as labels_lib
from segbeam.pipeline import schema
from segbeam.results import output as output_lib


def class_statistics(output: output_lib.RunOutput, threshold: float) -> list[dict[str, Any]]:
  """Per class: mean and median coverage, share of images where it dominates, images above
  `threshold` coverage. One SQL pass over the segments table."""
  names = output.class_names
  suffixes = schema.class_columns(names)
  selects = []
  for name, suffix in zip(names, suffixes):
    quoted = name.replace("'", "''")
    selects += [
      f"avg(coverage_{suffix})",
      f"median(coverage_{suffix})",
      f"avg(CASE WHEN dominant_class = '{quoted}' THEN 1.0 ELSE 0.0 END)",
      f"count_if(coverage_{suffix} > {float(threshold)})",
    ]
  con = output.connect()  # held until the rows are fetched: a relation needs its connection
  values = con.sql(f"SELECT {', '.join(selects)} FROM segments").fetchall()[0]
  stats = []
  for i, name in enumerate(names):
    mean, median, dominant, above = values[4 * i : 4 * i + 4]
    stats.append(
      {
        "class": name,
        "mean_coverage": mean,
        "median_coverage": median,
        "dominant_share": dominant,
        "images_above_threshold": int(above or 0),
      }
    )
  return stats


def ground_truth(output: output_lib.RunOutput, worst: int = 10) -> Optional[dict[str, Any]]:
  """Dataset metrics from the per-image counts (sums of intersections over sums of unions),
  and the images with the lowest mean IoU; None when no image had ground truth.

  A class the label map did not cover has null counts in every row: it gets no IoU, is left
  out of the means, and is missing from `ground_truth_classes`.
  """
  names = output.class_names
  suffixes = schema.class_columns(names)
  con = output.connect()
  sums = ", ".join(
    [f"sum(gt_intersection_{s}), sum(gt_union_{s}), count(gt_union_{s})" for s in suffixes]
  )
  row = con.sql(
    f"SELECT count(gt_pixels), sum(gt_pixels), sum(gt_correct), {sums} FROM segments"
  ).fetchall()[0]
  images, pixels, correct = row[0], row[1], row[2]
  if not images:
    return None
  per_class, covered = {}, []
  for i, name in enumerate(names):
    intersection, union, labelled = row[3 + 3 * i : 6 + 3 * i]
    per_class[name] = (intersection / union) if union else None
    if labelled:
      covered.append(name)
  present = [v for v in per_class.values() if v is not None]
  # An image's mean IoU over the covered classes present in its truth or its mask.
  image_iou = " + ".join(
    f"coalesce(gt_intersection_{s} / nullif(gt_union_{s}, 0), 0)" for s in suffixes
  )
  present_count = " + ".join(f"coalesce((gt_union_{s} > 0)::int, 0)" for s in suffixes)
  worst_rows = con.sql(
    f"SELECT image_id, ({image_iou}) / nullif({present_count}, 0) AS mean_iou, "
    f"gt_pixel_accuracy FROM segments WHERE gt_pixels IS NOT NULL "
    f"ORDER BY mean_iou ASC NULLS FIRST, image_id LIMIT {int(worst)}"
  ).fetchall()
  unusable = con.sql("SELECT count(*) FROM segments WHERE gt_error IS NOT NULL").fetchall()[0][0]
  return {
    "images": images,
    "pixel_accuracy": correct / pixels if pixels else None,
    "ground_truth_classes": covered,
    "per_class_iou": per_class,
    "mean_iou": sum(present) / len(present) if present else None,
    "worst_images": [
      {"image_id": r[0], "mean_iou": r[1], "pixel_accuracy": r[2]} for r in worst_rows
    ],
    "unusable_labels": unusable,
  }


def summarize(output: output_lib.RunOutput, threshold: float = 0.5) -> dict[str, Any]:
  manifest = output.manifest
  return {
    "output": output.path,
    "run_id": manifest["run_id"],
    "status": manifest["status"],
    "started": manifest["started"],
    "finished": manifest["finished"],
    "input": manifest["input"],
    "model": manifest["model"],
    "counts": manifest["counts"],
    "threshold": threshold,
    "classes": class_statistics(output, threshold),
    "ground_truth": ground_truth(output),
  }


def _percent(value) -> str:
  return "    -" if value is None else f"{value:6.1%}"


def format_summary(summary: dict[str, Any]) -> str:
  counts, model = summary["counts"], summary["model"]
  lines = [
    f"run {summary['run_id']} ({summary['status']}), {summary['started']} -> {summary['finished']}",
    f"input  {summary['input']}",
    f"model  {model['name']} {model['version']} ({model['architecture']})",
    f"images {counts['inputs_seen']} seen, {counts['segmented']} segmented, "
    f"{counts['failed']} failed"
    + (
      f", {counts['skipped_existing']} skipped (segmented before)"
      if counts.get("skipped_existing")
      else ""
    ),
  ]
  lines += [
    f"  failed at {r['stage']}: {r['error_type']} x{r['count']}" for r in counts["failed_by_reason"]
  ]
  header = (
    f"{'class':<16s} {'mean':>7s} {'median':>7s} {'dominant':>9s} "
    f"{'> ' + format(summary['threshold'], '.0%'):>9s}"
  )
  lines += ["", "coverage per class (share of each image's pixels)", header, "-" * len(header)]
  for c in summary["classes"]:
    lines.append(
      f"{c['class']:<16s} {_percent(c['mean_coverage']):>7s} "
      f"{_percent(c['median_coverage']):>7s} {_percent(c['dominant_share']):>9s} "
      f"{c['images_above_threshold']:>9d}"
    )
  truth = summary.get("ground_truth")
  if truth:
    lines += [
      "",
      f"against ground truth ({truth['images']} images, original resolution)",
      f"pixel accuracy {messages.number(truth['pixel_accuracy'])}   "
      f"mean IoU {messages.number(truth['mean_iou'])}",
      labels_lib.coverage_line(truth["per_class_iou"], truth["ground_truth_classes"]),
    ]
    lines += [
      f"  IoU {name:<16s} {messages.number(iou)}"
      + ("" if name in truth["ground_truth_classes"] else "  (no ground truth)")
      for name, iou in truth["per_class_iou"].items()
    ]
    if truth["unusable_labels"]:
      lines.append(f"  {truth['unusable_labels']} labels unusable (see gt_error)")
    lines.append("worst images by mean IoU:")
    lines += [
      f"  {w['image_id']:<32s} {messages.number(w['mean_iou'])}" for w in truth["worst_images"]
    ]
  # Ids, names and the input come from files anyone may write.
  return "\n".join(printable(line) for line in lines)


def run(args: argparse.Namespace) -> int:
  try:
    output = output_lib.RunOutput(args.output_dir)
  except output_lib.IncompleteOutputError as error:
    left = output_lib.unfinished(args.output_dir)
    if left is None:
      raise
    # Refused as every reader refuses it, with how far it got and how to go on.
    exits.stopped("summary", error)
    print("\n".join(left.lines()))
    return exits.USAGE
  summary = summarize(output, args.threshold)
  print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
  return 0


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser("summary", help="counts and per-class coverage of a run")
  parser.add_argument("output_dir", metavar="OUTPUT", help="a run's output folder, local or gs://")
  parser.add_argument(
    "--threshold",
    type=float,
    default=0.5,
    help="count images whose class coverage is above this (default 0.5)",
  )
  parser.add_argument("--json", action="store_true", help="machine-readable output")
  parser.set_defaults(func=run)
