"""Parquet files with a column of encoded images, read a row group at a time.

The image column is binary, or a struct with a binary `bytes` field, as Hugging Face `datasets`
stores its Image feature (`{bytes, path}`) and publishes every image dataset; found by itself
where the file has one such column (`choose_columns`). Only the columns a run needs are read,
a few rows at a time and page by page, so memory stays bounded by the pages being decoded
whatever the row group's size (a writer that put a whole column chunk in one page, or in one
dictionary page, makes that page the bound).

Each row is one input: its image, or a reason it has none (a null, a struct holding only a
path: a path read from an input is data, never opened). A row group that cannot be read costs
its rows from there on (`Unread`: the run makes an error row of each); the next row group is
still read. Pages
are checked against their checksums where the writer wrote them (a damaged page is otherwise
read as it is, and its image fails to decode).
"""

from __future__ import annotations

import dataclasses
from typing import Any, BinaryIO, Iterator, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from segbeam import options as options_lib

# Rows decoded at a time: a handful of images, whatever the row group holds.
_BATCH_ROWS = 16
# Column chunks are read in pieces of this size rather than whole (pyarrow's buffered stream).
_READ_BUFFER_BYTES = 1 << 20
# Hugging Face's name for the image column, taken among several image-like ones.
_IMAGE_NAME = "image"
_LABEL_NAME = "label"


def _is_binary(data_type: pa.DataType) -> bool:
  """Variable-length binary in any of Arrow's layouts, dictionary-encoded too (pandas'
  categoricals). Not fixed-size binary: hashes and UUIDs, never encoded images."""
  if pa.types.is_dictionary(data_type):
    data_type = data_type.value_type
  return (
    pa.types.is_binary(data_type)
    or pa.types.is_large_binary(data_type)
    or pa.types.is_binary_view(data_type)
  )


def is_image_like(data_type: pa.DataType) -> bool:
  """Binary, or a struct with a binary `bytes` field (Hugging Face's Image)."""
  if _is_binary(data_type):
    return True
  if pa.types.is_struct(data_type):
    index = data_type.get_field_index("bytes")
    return index >= 0 and _is_binary(data_type.field(index).type)
  return False


@dataclasses.dataclass(frozen=True)
class Columns:
  """The columns a file is read by: `image` always; `label`, `id` where there are."""

  image: str
  label: Optional[str] = None
  id: Optional[str] = None


class ColumnsError(ValueError):
  """The file has no column the options name (`error_type` MissingColumn), or no single image
  column (NoImageColumn)."""

  def __init__(self, message: str, error_type: str = "MissingColumn"):
    super().__init__(message)
    self.error_type = error_type


def _describe(schema: pa.Schema) -> str:
  return ", ".join(f"{field.name} ({field.type})" for field in schema)[:500]


def choose_columns(schema: pa.Schema, wanted: options_lib.ParquetColumns) -> Columns:
  """The columns of a file with `schema` that hold the image, its label and its id.

  The image: `wanted.image`, else the one image-like column (`is_image_like`) that is not the
  label's, else the one of them named 'image'. The label: `wanted.label`, else a column named
  'label' where it is image-like. Raises ColumnsError saying what the file has."""
  names = schema.names

  def field(name: str, what: str, flag: str) -> pa.Field:
    if name not in names:
      raise ColumnsError(f"no column {name!r} ({flag}) for the {what}; it has {_describe(schema)}")
    if names.count(name) > 1:
      raise ColumnsError(f"two columns named {name!r} ({flag})")
    return schema.field(name)

  def images_in(name: str, what: str, flag: str) -> str:
    column_type = field(name, what, flag).type
    if not is_image_like(column_type):
      raise ColumnsError(
        f"column {name!r} ({flag}) holds {column_type}, not encoded images (binary, or a "
        "struct with a bytes field)"
      )
    return name

  label = None
  if wanted.label is not None:
    label = images_in(wanted.label, "label", "--label-column")
  elif (
    names.count(_LABEL_NAME) == 1
    and is_image_like(schema.field(_LABEL_NAME).type)
    and wanted.image != _LABEL_NAME  # --image-column label: the images, no ground truth
  ):
    label = _LABEL_NAME
  if wanted.image is not None:
    image = images_in(wanted.image, "image", "--image-column")
  else:
    candidates = [
      f.name for f in schema if is_image_like(f.type) and f.name not in (label, wanted.id)
    ]
    if len(candidates) == 1:
      image = candidates[0]
    elif candidates.count(_IMAGE_NAME) == 1:
      image = _IMAGE_NAME
    elif not candidates:
      taken = f"; {label!r} is taken as the labels (--image-column {label} for images)"
      raise ColumnsError(
        f"no column of encoded images (binary, or a struct with a bytes field)"
        f"{taken if label else ''}; it has {_describe(schema)}",
        "NoImageColumn",
      )
    else:
      raise ColumnsError(
        f"{len(candidates)} columns could hold the images ({', '.join(candidates)[:300]}): "
        "say which with --image-column",
        "NoImageColumn",
      )
  id_column = None
  if wanted.id is not None:
    field(wanted.id, "ids", "--id-column")
    id_column = wanted.id
  if label == image:
    raise ColumnsError(f"column {image!r} is both the image and the label column")
  return Columns(image, label, id_column)


@dataclasses.dataclass(frozen=True)
class Row:
  """One row as read: `image` its bytes, or `missing` why it has none."""

  index: int
  image: Optional[bytes]
  missing: Optional[str] = None
  label: Optional[bytes] = None  # None where the row has none (a null: no ground truth)
  path: Optional[str] = None  # a Hugging Face image's own path, as data
  id: Optional[Any] = None


@dataclasses.dataclass(frozen=True)
class Unread:
  """Rows `first` to `last` (inclusive) that could not be read: `reason`."""

  first: int
  last: int
  reason: str


def _values(column: pa.Array) -> tuple[list, list]:
  """(bytes or None per row, the struct's `path` or None per row)."""
  if pa.types.is_struct(column.type):
    data = column.field("bytes").to_pylist()
    path_index = column.type.get_field_index("path")
    paths = column.field(path_index).to_pylist() if path_index >= 0 else [None] * len(column)
    nulls = column.is_null().to_pylist()
    data = [None if null else value for null, value in zip(nulls, data)]
    paths = [None if null or not isinstance(p, str) else p for null, p in zip(nulls, paths)]
    return data, paths
  return column.to_pylist(), [None] * len(column)


def _why_missing(path: Optional[str], what: str) -> str:
  if path:
    return f"its {what} holds only a path ({path!r}), no bytes: the file does not carry it"
  return f"its {what} is null"


def iter_rows(
  stream: BinaryIO, columns_wanted: options_lib.ParquetColumns, first_row: int = 0
) -> Iterator[Union[Row, Unread]]:
  """Each row of the Parquet file in `stream` (seekable), in order, or the rows that could
  not be read. Raises ColumnsError, or pyarrow's error for what is not a Parquet file.

  Args:
    first_row: the rows before it are left out, their row groups unread.
  """
  # Pages are read as decoded (not a column chunk's bytes at once: pre_buffer), and checked
  # against their checksums where the writer wrote them.
  parquet = pq.ParquetFile(
    stream,
    buffer_size=_READ_BUFFER_BYTES,
    pre_buffer=False,
    page_checksum_verification=True,
  )
  columns = choose_columns(parquet.schema_arrow, columns_wanted)
  read = [c for c in (columns.image, columns.label, columns.id) if c is not None]
  first = 0
  for group in range(parquet.metadata.num_row_groups):
    rows = max(parquet.metadata.row_group(group).num_rows, 0)  # a damaged footer's can be < 0
    if first + rows <= first_row:
      first += rows
      continue
    index = first
    try:
      for batch in parquet.iter_batches(
        batch_size=_BATCH_ROWS, row_groups=[group], columns=read, use_threads=False
      ):
        images, paths = _values(batch.column(columns.image))
        labels = _values(batch.column(columns.label))[0] if columns.label else None
        ids = batch.column(columns.id).to_pylist() if columns.id else None
        for i, (image, path) in enumerate(zip(images, paths)):
          missing = None if image is not None else _why_missing(path, "image")
          label = labels[i] if labels else None
          if index >= first_row:
            yield Row(index, image, missing, label, path, ids[i] if ids else None)
          index += 1
    except Exception as error:  # a damaged row group: its rows from here on
      if index < first + rows:
        yield Unread(
          index,
          first + rows - 1,
          f"row group {group} could not be read: {type(error).__name__}: {error}"[:1000],
        )
    else:
      if index < first + rows:  # a damaged page can read as fewer values, unsaid
        yield Unread(
          index,
          first + rows - 1,
          f"row group {group} holds {rows} rows by the file's footer, but only "
          f"{index - first} could be read",
        )
    first = max(first + rows, index)  # a footer that says fewer rows: ids stay unique
  total, start = parquet.metadata.num_rows, max(first, first_row)
  if start < total:  # row groups missing from a damaged footer
    yield Unread(
      start, total - 1, f"the file's footer says it has {total} rows, its row groups {first}"
    )


def row_count(
  stream: BinaryIO, columns_wanted: options_lib.ParquetColumns = options_lib.ParquetColumns()
) -> int:
  """The inputs a Parquet file makes, as its footer says: its rows, or 1 (its one error row)
  where `columns_wanted` choose no columns in it."""
  parquet = pq.ParquetFile(stream)
  try:
    choose_columns(parquet.schema_arrow, columns_wanted)
  except ColumnsError:
    return 1
  metadata = parquet.metadata
  # As `iter_rows` reads them: a row group's negative count (a damaged footer) is no rows.
  return sum(max(0, metadata.row_group(i).num_rows) for i in range(metadata.num_row_groups))
