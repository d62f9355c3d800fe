"""`segbeam report OUTPUT --out report.html`: one self-contained HTML page about a run.

Run summary, per-class coverage histograms (inline SVG), a gallery of sample images with their
masks overlaid (sources read back from their files or shards), the worst images against ground
truth when there was some, and the error table. Every image is inlined as a data: URI, so the
file can be mailed or opened anywhere.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from segbeam import constants
from segbeam import options as options_lib
from segbeam.model import labels as labels_lib
from segbeam.pipeline import parquet_images
from segbeam.pipeline import schema
from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord
from segbeam.pipeline import validation
from segbeam.pipeline import webdataset_tars
from segbeam.results import examples
from segbeam.results import output as output_lib
from segbeam.results import summary as summary_lib

THUMBNAIL = 256
# Overlay colours by class index (RGB); the overlay is drawn at 45% opacity.
PALETTE = [
  (255, 140, 0),
  (40, 90, 255),
  (255, 230, 0),
  (0, 200, 120),
  (220, 0, 200),
  (0, 220, 255),
  (150, 80, 0),
  (120, 120, 120),
]
OVERLAY_ALPHA = 0.45

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left}td.n{text-align:right}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{width:260px;font-size:12px}
.card img{width:256px;border:1px solid #ccc}.legend span{display:inline-block;width:12px;
height:12px;margin:0 4px 0 12px;vertical-align:middle}.charts{display:flex;flex-wrap:wrap;gap:18px}
"""


def _split_source(source: str) -> tuple[str, Optional[str]]:
  """(shard path, what follows its '#': a record, row or sample key) of a row's `source`, or
  (the file, None). Paths and keys may both hold '#': the shard is the shortest prefix that
  exists; a source that exists whole is a file."""
  if "#" not in source or FileSystems.exists(source):
    return source, None
  for index, char in enumerate(source):
    if char == "#" and FileSystems.exists(source[:index]):
      return source[:index], source[index + 1 :]
  path, _, where = source.rpartition("#")
  return path, where


def read_source(source: str, run_options: Optional[Mapping[str, Any]] = None) -> bytes:
  """The encoded image behind a row's `source`: a file, '<shard>#<record index>',
  '<Parquet file>#<row>' or '<tar shard>#<sample key>'.

  Args:
    run_options: the run's options as its manifest records them: which tf.Example feature,
      Parquet column or WebDataset member holds the image. The defaults without.
  """
  run_options = run_options or {}
  path, where = _split_source(source)
  kind = (
    sources.input_kind(
      path,
      run_options.get("input_format") or constants.FORMAT_AUTO,
      open_file=lambda: FileSystems.open(path),
    )
    if where is not None
    else constants.FORMAT_IMAGES
  )
  keys = run_options.get("example_keys") or {}
  image_key = keys.get("image") or options_lib.ExampleKeys().image
  if kind == constants.FORMAT_TFRECORD and where.isdigit():
    import tensorflow as tf  # noqa: PLC0415  # results stay light

    with FileSystems.open(path) as stream:
      for position, record in tfrecord.read_records(stream):
        if position == int(where) and isinstance(record, bytes):
          example = tf.train.Example.FromString(record)
          return example.features.feature[image_key].bytes_list.value[0]
    raise FileNotFoundError(f"record {where} not readable in {path}")
  if kind == constants.FORMAT_PARQUET and where.isdigit():
    columns = options_lib.ParquetColumns(
      run_options.get("image_column"), run_options.get("label_column")
    )
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
      for row in parquet_images.iter_rows(stream, columns, first_row=int(where)):
        if getattr(row, "index", None) == int(where) and row.image is not None:
          return row.image
        break
    raise FileNotFoundError(f"row {where} not readable in {path}")
  if kind == constants.FORMAT_WEBDATASET:
    extensions = options_lib.SampleKeys.from_flags(image_key, options_lib.ExampleKeys().label).image
    with FileSystems.open(path) as stream:
      limit = run_options.get("max_file_bytes") or constants.DEFAULT_MAX_FILE_BYTES
      for item in webdataset_tars.iter_samples(stream, frozenset(extensions), limit):
        if isinstance(item, webdataset_tars.Sample) and item.key == where:
          for extension in extensions:
            member = item.members.get(extension)
            if member is not None and member.data is not None:
              return member.data
    raise FileNotFoundError(f"sample {where} not readable in {path}")
  with FileSystems.open(source) as f:
    return f.read()


def overlay(image_bytes: bytes, mask_png: bytes, exif_orientation: int = 1) -> str:
  """A JPEG data URI of the image, turned upright as the run saw it, with its class mask
  blended over it, at most 256 px."""
  with Image.open(io.BytesIO(image_bytes)) as image:
    image.seek(0)
    rgb = validation.upright(image.convert("RGB"), exif_orientation)
  mask = np.asarray(Image.open(io.BytesIO(mask_png)))
  if mask.shape != (rgb.height, rgb.width):  # the decoder and PIL disagree on size: show mask
    rgb = Image.new("RGB", (mask.shape[1], mask.shape[0]), (0, 0, 0))
  colours = np.array(PALETTE * (1 + mask.max() // len(PALETTE)), np.float32)[mask]
  blended = np.asarray(rgb, np.float32) * (1 - OVERLAY_ALPHA) + colours * OVERLAY_ALPHA
  result = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
  result.thumbnail((THUMBNAIL, THUMBNAIL))
  buffer = io.BytesIO()
  result.save(buffer, format="JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def histogram_svg(class_name: str, counts: Sequence[int], colour: tuple[int, int, int]) -> str:
  """Bar chart of images per tenth of coverage, as inline SVG."""
  width, height, top = 300, 140, max(max(counts), 1)
  bar = width / len(counts)
  bars = "".join(
    f'<rect x="{i * bar + 1:.1f}" y="{110 - 100 * c / top:.1f}" width="{bar - 2:.1f}" '
    f'height="{100 * c / top:.1f}" fill="rgb{colour}"><title>{c} images</title></rect>'
    f'<text x="{i * bar + bar / 2:.1f}" y="{106 - 100 * c / top:.1f}" font-size="9" '
    f'text-anchor="middle">{c}</text>'
    for i, c in enumerate(counts)
  )
  ticks = "".join(
    f'<text x="{i * bar:.1f}" y="124" font-size="9">{i / 10:.1f}</text>'
    for i in range(0, len(counts), 2)
  )
  return (
    f'<figure><svg width="{width}" height="{height}" role="img" '
    f'aria-label="coverage histogram of {html.escape(class_name)}">{bars}{ticks}</svg>'
    f"<figcaption>{html.escape(class_name)}: images per coverage tenth</figcaption></figure>"
  )


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  body = []
  for row in rows:
    cells = []
    for c in columns:
      value = row.get(c)
      numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
      text = f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))
      cells.append(f"<td{' class=n' if numeric else ''}>{html.escape(text)}</td>")
    body.append("<tr>" + "".join(cells) + "</tr>")
  return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _card(row: dict[str, Any], caption: str, run_options: Mapping[str, Any]) -> str:
  try:
    src = overlay(
      read_source(row["source"], run_options), row["mask_png"], row.get("exif_orientation") or 1
    )  # absent from runs before the column
    picture = f'<img src="{src}" alt="{html.escape(row["image_id"])} with its mask">'
  except Exception as error:  # a missing source, not a crash
    picture = f"<p>source unreadable: {html.escape(type(error).__name__)}</p>"
  return (
    f'<div class="card">{picture}<br><b>{html.escape(row["image_id"])}</b><br>'
    f"{html.escape(caption)}</div>"
  )


def _sample_rows(con, count: int) -> list[dict[str, Any]]:
  """`count` rows spread evenly over the image ids: the same picks for the same output."""
  total = con.sql("SELECT count(*) FROM segments").fetchall()[0][0]
  if not total:
    return []
  step = max(total // count, 1)
  table = con.sql(
    f"SELECT * FROM (SELECT *, row_number() OVER (ORDER BY image_id) - 1 AS k "
    f"FROM segments) WHERE k % {step} = 0 ORDER BY image_id LIMIT {count}"
  )
  return table.to_arrow_table().to_pylist()


def build_report(output: output_lib.RunOutput, samples: int = 12) -> str:
  summary = summary_lib.summarize(output)
  run_options = output.manifest.get("options") or {}
  names = output.class_names
  suffixes = schema.class_columns(names)
  con = output.connect()
  legend = "".join(
    f'<span style="background:rgb{PALETTE[i % len(PALETTE)]}"></span>{html.escape(n)}'
    for i, n in enumerate(names)
  )
  counts = summary["counts"]
  parts = [
    f"<h1>segbeam run {html.escape(summary['run_id'])}</h1>",
    _table(
      [
        {
          "input": summary["input"],
          "model": f"{summary['model']['name']} {summary['model']['version']}",
          "started": summary["started"],
          "finished": summary["finished"],
          "inputs": counts["inputs_seen"],
          "segmented": counts["segmented"],
          "failed": counts["failed"],
        }
      ],
      ["input", "model", "started", "finished", "inputs", "segmented", "failed"],
    ),
    "<h2>Coverage per class</h2>",
    _table(
      summary["classes"],
      ["class", "mean_coverage", "median_coverage", "dominant_share", "images_above_threshold"],
    ),
  ]
  histogram = con.sql(examples.EXAMPLES["coverage-histogram"][1]).to_arrow_table().to_pylist()
  charts = []
  for i, (name, suffix) in enumerate(zip(names, suffixes)):
    buckets = [0] * 10
    for row in histogram:
      if row["class"] == suffix:
        buckets[min(int(round(row["coverage_from"] * 10)), 9)] = row["images"]
    charts.append(histogram_svg(name, buckets, PALETTE[i % len(PALETTE)]))
  parts.append(f'<div class="charts">{"".join(charts)}</div>')

  parts.append(f'<h2>Sample images</h2><p class="legend">mask colours:{legend}</p>')
  cards = [
    _card(
      row,
      f"dominant {row['dominant_class']}, confidence {row['mean_confidence']:.2f}",
      run_options,
    )
    for row in _sample_rows(con, samples)
  ]
  parts.append(f'<div class="gallery">{"".join(cards)}</div>')

  truth = summary.get("ground_truth")
  if truth:
    covered = truth["ground_truth_classes"]
    parts.append("<h2>Against ground truth</h2>")
    parts.append(f"<p>{html.escape(labels_lib.coverage_line(names, covered))}</p>")
    parts.append(
      _table(
        [
          {
            "images": truth["images"],
            "pixel_accuracy": truth["pixel_accuracy"],
            "mean_iou": truth["mean_iou"],
            **{
              f"IoU {k}": v if k in covered else "no ground truth"
              for k, v in truth["per_class_iou"].items()
            },
          }
        ],
        ["images", "pixel_accuracy", "mean_iou", *[f"IoU {k}" for k in truth["per_class_iou"]]],
      )
    )
    worst_ids = [w["image_id"] for w in truth["worst_images"][:samples]]
    if worst_ids:
      rows = (
        con.sql("SELECT * FROM segments WHERE image_id IN (SELECT unnest(?))", params=[worst_ids])
        .to_arrow_table()
        .to_pylist()
      )
      by_id = {r["image_id"]: r for r in rows}
      ious = {w["image_id"]: w["mean_iou"] for w in truth["worst_images"]}
      cards = [
        _card(by_id[i], f"mean IoU {ious[i]:.3f}" if ious[i] is not None else "", run_options)
        for i in worst_ids
        if i in by_id
      ]
      parts.append(f'<p>worst images by mean IoU</p><div class="gallery">{"".join(cards)}</div>')

  errors = (
    con.sql(
      "SELECT image_id, stage, error_type, message FROM errors ORDER BY stage, image_id LIMIT 500"
    )
    .to_arrow_table()
    .to_pylist()
  )
  parts.append(f"<h2>Errors ({counts['failed']})</h2>")
  parts.append(
    _table(errors, ["image_id", "stage", "error_type", "message"]) if errors else "<p>none</p>"
  )
  return (
    "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
    f"<title>segbeam run {html.escape(summary['run_id'])}</title><style>{STYLE}</style>"
    f"</head><body>{''.join(parts)}</body></html>"
  )


def run(args: argparse.Namespace) -> int:
  page = build_report(output_lib.RunOutput(args.output_dir), samples=args.samples)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(page)
  print(f"wrote {args.out} ({len(page) / 1024:.0f} KiB)")
  return 0


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser("report", help="one self-contained HTML page about a run")
  parser.add_argument("output_dir", metavar="OUTPUT", help="a run's output folder, local or gs://")
  parser.add_argument("--out", default="report.html")
  parser.add_argument("--samples", type=int, default=12, help="images in the gallery")
  parser.set_defaults(func=run)
