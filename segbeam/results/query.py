"""`segbeam query OUTPUT "SQL"`: DuckDB over a run's Parquet, views `segments` and `errors`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, TextIO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from segbeam.messages import printable
from segbeam.results import examples
from segbeam.results import output as output_lib

FORMATS = ("table", "csv", "json", "parquet")


def run_query(output: output_lib.RunOutput, sql: str) -> pa.Table:
  con = output.connect()  # held until the table is fetched: a relation needs its connection
  try:
    relation = con.sql(sql)
  except duckdb.Error as error:
    raise ValueError(f"the query failed: {error}") from error
  if relation is None:  # a statement with no result set
    return pa.table({})
  return relation.to_arrow_table()


def _cell(value) -> str:
  if isinstance(value, bytes):
    return f"<{len(value)} bytes>"
  if isinstance(value, float):
    return f"{value:.4g}"
  return "NULL" if value is None else str(value)


def format_table(table: pa.Table, max_rows: int = 100, max_width: int = 40) -> str:
  """A readable fixed-width table; binary cells (masks) show their size, long cells are cut."""
  names = table.column_names
  rows = [[_cell(v) for v in row.values()] for row in table.slice(0, max_rows).to_pylist()]
  rows = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in rows]
  widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
  lines = [
    "  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip(),
    "  ".join("-" * w for w in widths),
  ]
  lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  more = table.num_rows - len(rows)
  lines.append(f"({table.num_rows} rows" + (f", {more} not shown)" if more else ")"))
  return "\n".join(lines)


def _json_default(value):
  if isinstance(value, bytes):
    return __import__("base64").b64encode(value).decode()
  return str(value)


def write(table: pa.Table, fmt: str, out: Optional[str], stdout: Optional[TextIO] = None) -> None:
  stdout = stdout or sys.stdout
  if fmt == "parquet":
    if not out:
      raise ValueError("--format parquet needs --out FILE")
    pq.write_table(table, out, compression="zstd")
    return
  if fmt == "csv":
    sink = out or pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    if not out:
      text = sink.getvalue().to_pybytes().decode()
      # Data for a pipe stays as it is; on a terminal, ids from file names print escaped.
      stdout.write(printable(text, keep_newlines=True) if stdout.isatty() else text)
    return
  text = (
    format_table(table) + "\n"
    if fmt == "table"
    else json.dumps(table.to_pylist(), default=_json_default, indent=1) + "\n"
  )
  if out:
    with open(out, "w") as f:
      f.write(text)
  elif fmt == "table":
    stdout.write(printable(text, keep_newlines=True))  # ids from file names, escaped
  else:
    stdout.write(text)  # JSON escapes every control character itself


def run(args: argparse.Namespace) -> int:
  if args.list_examples:
    for name, (about, sql) in examples.EXAMPLES.items():
      print(f"{name}: {about}\n  " + sql.replace("\n", "\n  ") + "\n")
    return 0
  if not args.output_dir:
    raise ValueError("OUTPUT is required")
  if (args.sql is None) == (args.example is None):
    raise ValueError("give either SQL or --example NAME (see --list-examples)")
  if args.example is not None and args.example not in examples.EXAMPLES:
    raise ValueError(f"unknown example {args.example!r}; known: {', '.join(examples.EXAMPLES)}")
  sql = args.sql if args.sql is not None else examples.EXAMPLES[args.example][1]
  write(run_query(output_lib.RunOutput(args.output_dir), sql), args.format, args.out)
  return 0


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
    "query",
    help="SQL over a run's output (DuckDB; views segments and errors)",
    description="Runs DuckDB SQL over a completed run's Parquet. Views: segments, errors.",
  )
  parser.add_argument(
    "output_dir", metavar="OUTPUT", nargs="?", help="a run's output folder, local or gs://"
  )
  parser.add_argument("sql", nargs="?", help="DuckDB SQL over the views segments and errors")
  parser.add_argument("--example", help="run a ready-made query instead (see --list-examples)")
  parser.add_argument("--list-examples", action="store_true")
  parser.add_argument("--format", choices=FORMATS, default="table")
  parser.add_argument("--out", help="write to this file instead of standard output")
  parser.set_defaults(func=run)
