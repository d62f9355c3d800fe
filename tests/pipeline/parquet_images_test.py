"""Parquet files of encoded images as `parquet_images` reads them: Hugging Face's Image columns
and plain binary ones, the columns chosen by `choose_columns`' rules, and every row accounted
for (a row, or rows told unread) whatever damage the file has."""

import io
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segbeam import constants
from segbeam import options as options_lib
from segbeam.pipeline import parquet_images as pi
from segbeam.pipeline import sources

AUTO = options_lib.ParquetColumns()


def _parquet(table: pa.Table, **kwargs) -> bytes:
  buffer = io.BytesIO()
  pq.write_table(table, buffer, **kwargs)
  return buffer.getvalue()


def _rows(data: bytes, columns=AUTO, **kwargs) -> list:
  return list(pi.iter_rows(io.BytesIO(data), columns, **kwargs))


def _images(count: int, size: int = 100, seed: int = 0) -> list[bytes]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(count)]


def _accounted(rows, count: int) -> None:
  """Every row index below `count` is a Row or in an Unread, once."""
  seen = []
  for row in rows:
    if isinstance(row, pi.Unread):
      assert row.first <= row.last and row.reason
      seen += range(row.first, row.last + 1)
    else:
      seen.append(row.index)
  assert sorted(seen) == list(range(count))


def test_hugging_face_image_columns_as_datasets_writes_them(tmp_path):
  image, label = _images(2)
  local = tmp_path / "not_carried.jpg"  # datasets keeps a local file's path only
  local.write_bytes(image)
  dataset = datasets.Dataset.from_dict(
    {
      "image": [
        {"bytes": image, "path": "cats/a.jpg"},
        {"bytes": None, "path": str(local)},
        None,
        {"bytes": image, "path": None},
      ],
      "label": [{"bytes": label, "path": "cats/a.png"}, None, None, None],
      "name": ["a", "b", "c", "d"],
    }
  )
  dataset = dataset.cast_column("image", datasets.Image()).cast_column("label", datasets.Image())
  path = str(tmp_path / "train-00000-of-00001.parquet")
  dataset.to_parquet(path)
  local.unlink()  # a path read from an input is data, never opened
  with open(path, "rb") as f:
    rows = list(pi.iter_rows(f, AUTO))
  assert [(r.index, r.image, r.label, r.path, r.missing) for r in rows] == [
    (0, image, label, "cats/a.jpg", None),
    (
      1,
      None,
      None,
      str(local),
      f"its image holds only a path ({str(local)!r}), no bytes: the file does not carry it",
    ),
    (2, None, None, None, "its image is null"),
    (3, image, None, None, None),
  ]
  with open(path, "rb") as f:
    assert pi.row_count(f) == 4
  with open(path, "rb") as f:
    by_name = list(pi.iter_rows(f, options_lib.ParquetColumns(id="name")))
  assert [r.id for r in by_name] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
  "array",
  [
    pa.array([b"a", None, b"c"], pa.binary()),
    pa.array([b"a", None, b"c"], pa.large_binary()),
    pa.array([b"a", None, b"c"], pa.binary_view()),
    pa.array([b"a", None, b"c"]).dictionary_encode(),  # as pandas' categoricals are written
    pa.StructArray.from_arrays(
      [pa.array([b"a", b"", b"c"])], ["bytes"], mask=pa.array([False, True, False])
    ),
    pa.StructArray.from_arrays(
      [pa.array([b"a", None, b"c"], pa.large_binary()), pa.array([1, 2, 3])], ["bytes", "path"]
    ),
  ],
  ids=["binary", "large_binary", "binary_view", "dictionary", "struct_no_path", "odd_path"],
)
def test_binary_columns_in_any_layout_are_images(array):
  data = _parquet(pa.table({"pixels": array, "n": pa.array([1, 2, 3])}))
  assert pi.is_image_like(pq.read_schema(io.BytesIO(data)).field("pixels").type)
  rows = _rows(data)
  assert [(r.image, r.path, r.missing) for r in rows] == [
    (b"a", None, None),
    (None, None, "its image is null"),
    (b"c", None, None),
  ]


def _schema(**types: pa.DataType) -> pa.Schema:
  return pa.schema(list(types.items()))


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.mark.parametrize(
  "schema,wanted,expected",
  [
    (_schema(img=pa.binary(), n=pa.int64()), AUTO, ("img", None, None)),
    (_schema(image=HF_IMAGE, label=HF_IMAGE), AUTO, ("image", "label", None)),
    (_schema(image=HF_IMAGE, thumb=pa.binary()), AUTO, ("image", None, None)),
    (_schema(photo=HF_IMAGE, label=pa.int64()), AUTO, ("photo", None, None)),  # class labels
    (_schema(photo=HF_IMAGE, label=pa.binary()), AUTO, ("photo", "label", None)),
    (
      _schema(a=pa.binary(), b=pa.binary(), key=pa.string()),
      options_lib.ParquetColumns(image="b", label="a", id="key"),
      ("b", "a", "key"),
    ),
    (  # the label column named as the images: no ground truth, no clash
      _schema(label=pa.binary()),
      options_lib.ParquetColumns(image="label"),
      ("label", None, None),
    ),
    (_schema(md5=pa.binary(16), img=pa.binary()), AUTO, ("img", None, None)),
  ],
)
def test_columns_are_chosen_by_their_rules(schema, wanted, expected):
  assert pi.choose_columns(schema, wanted) == pi.Columns(*expected)


@pytest.mark.parametrize(
  "schema,wanted,words",
  [
    (_schema(a=pa.binary(), b=pa.binary()), AUTO, "2 columns could hold the images (a, b)"),
    (_schema(image=pa.binary(), photo=HF_IMAGE, label=HF_IMAGE, extra=pa.binary()), AUTO, None),
    (_schema(a=HF_IMAGE, b=pa.large_binary()), AUTO, "say which with --image-column"),
    (_schema(label=pa.binary()), AUTO, "no column of encoded images"),
    (_schema(text=pa.string(), n=pa.int64()), AUTO, "it has text (string), n (int64)"),
    (
      _schema(images=pa.list_(HF_IMAGE)),  # datasets' Sequence(Image()): several per row
      AUTO,
      "no column of encoded images",
    ),
    (
      _schema(images=pa.list_(pa.binary())),
      options_lib.ParquetColumns(image="images"),
      "column 'images' (--image-column) holds list<item: binary>, not encoded images",
    ),
    (
      _schema(img=pa.struct([("bytes", HF_IMAGE)])),
      options_lib.ParquetColumns(image="img"),
      "not encoded images",
    ),
    (_schema(img=pa.binary()), options_lib.ParquetColumns(image="photo"), "no column 'photo'"),
    (
      _schema(img=pa.binary(), n=pa.int64()),
      options_lib.ParquetColumns(label="n"),
      "column 'n' (--label-column) holds int64",
    ),
    (_schema(img=pa.binary()), options_lib.ParquetColumns(id="key"), "no column 'key'"),
    (
      _schema(img=pa.binary()),
      options_lib.ParquetColumns(image="img", label="img"),
      "both the image and the label column",
    ),
    (
      pa.schema([("img", pa.binary()), ("img", pa.binary())]),
      options_lib.ParquetColumns(image="img"),
      "two columns named 'img'",
    ),
  ],
)
def test_columns_that_cannot_be_chosen_are_refused_with_a_reason(schema, wanted, words):
  if words is None:  # two image-like columns besides the label, one named 'image'
    assert pi.choose_columns(schema, wanted) == pi.Columns("image", "label")
    return
  with pytest.raises(pi.ColumnsError) as refused:
    pi.choose_columns(schema, wanted)
  assert words in str(refused.value)


def test_a_nested_image_column_is_refused_when_reading_too():
  table = pa.table({"images": pa.array([[b"a", b"b"]], pa.list_(pa.binary()))})
  with pytest.raises(pi.ColumnsError, match="no column of encoded images"):
    _rows(_parquet(table))


@pytest.mark.parametrize("checksums", [True, False])
def test_a_damaged_second_row_group_costs_only_its_rows(checksums):
  images = _images(15, size=200)
  table = pa.table({"image": pa.array(images), "n": pa.array(range(15))})
  data = _parquet(table, row_group_size=5, compression="snappy", write_page_checksum=checksums)
  chunk = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(1).column(0)
  start = chunk.dictionary_page_offset or chunk.data_page_offset
  told = 0
  for offset in range(start, start + chunk.total_compressed_size):
    damaged = bytearray(data)
    damaged[offset] ^= 0x5A
    rows = _rows(bytes(damaged))
    _accounted(rows, 15)
    read = {r.index: r.image for r in rows if isinstance(r, pi.Row)}
    assert all(read[i] == images[i] for i in (*range(5), *range(10, 15))), offset
    unread = [r for r in rows if isinstance(r, pi.Unread)]
    assert all(5 <= r.first and r.last == 9 and "row group 1" in r.reason for r in unread)
    told += bool(unread)
    if checksums:  # a damaged page is found out, never read as an image
      assert all(read[i] == images[i] for i in read), offset
  # Page headers' statistics are outside the checksums: most of the rest is found out.
  assert told > (chunk.total_compressed_size // 2 if checksums else 0)


def test_a_damaged_footer_raises_or_reads_every_row_it_can_tell():
  images = _images(30, size=300)
  data = _parquet(pa.table({"image": pa.array(images)}), row_group_size=10)
  footer = int.from_bytes(data[-8:-4], "little")
  outcomes = set()
  for offset in range(len(data) - 8 - footer, len(data)):
    damaged = bytearray(data)
    damaged[offset] ^= 0x01
    try:
      rows = _rows(bytes(damaged))
    except Exception as error:  # not Parquet after all: one error row for the file
      outcomes.add(type(error).__name__)
      continue
    told = sum(r.last - r.first + 1 for r in rows if isinstance(r, pi.Unread))
    assert sum(isinstance(r, pi.Row) for r in rows) + told >= 30, offset
    outcomes.add("read")
  assert {"read", "ArrowInvalid", "OSError"} <= outcomes


@pytest.mark.parametrize(
  "data",
  [b"", b"PAR1", b"\xff\xd8\xff\xe0 a jpeg" * 10, b"PAR1" + b"\0" * 100 + b"PAR1"],
  ids=["empty", "magic", "jpeg", "no_footer"],
)
def test_a_file_that_is_no_parquet_raises(data):
  with pytest.raises((pa.ArrowInvalid, OSError)):
    _rows(data)


def test_files_with_no_rows_or_no_row_groups_have_no_rows():
  empty = _parquet(pa.table({"image": pa.array([], pa.binary())}))
  buffer = io.BytesIO()
  pq.ParquetWriter(buffer, pa.schema([("image", pa.binary())])).close()
  for data, groups in ((empty, 1), (buffer.getvalue(), 0)):
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == groups
    assert _rows(data) == []
    assert pi.row_count(io.BytesIO(data)) == 0


def test_very_many_small_row_groups_are_read_in_order():
  images = _images(3000, size=8)
  data = _parquet(pa.table({"image": pa.array(images)}), row_group_size=1)
  assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 3000
  rows = _rows(data)
  assert [r.image for r in rows] == images and [r.index for r in rows] == list(range(3000))


def test_a_parquet_file_without_a_telling_name_is_sniffed_as_parquet():
  data = _parquet(pa.table({"image": pa.array([b"x"])}))
  kind = sources.input_kind(
    "/d/train-00000-of-00004", constants.FORMAT_AUTO, open_file=lambda: io.BytesIO(data)
  )
  assert kind == constants.FORMAT_PARQUET


# The child's peak resident memory while it reads (Linux's VmHWM: a process's own, where
# getrusage's ru_maxrss carries the parent's across exec), less its resident memory before.
_MEASURE = textwrap.dedent(
  """
  import sys
  from segbeam import options
  from segbeam.pipeline import parquet_images

  def status(field):
    with open("/proc/self/status") as f:
      return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak from here on
  before, count = status("VmRSS"), 0
  with open(sys.argv[1], "rb") as f:
    for row in parquet_images.iter_rows(f, options.ParquetColumns()):
      count += len(row.image)
  print(count, status("VmHWM") - before)
  """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads Linux's VmHWM")
def test_a_large_row_group_is_read_in_bounded_memory(tmp_path):
  count, size = 800, 200_000  # 160 MB of images in one row group, in pages of a few images
  path = str(tmp_path / "one_group.parquet")
  blob = _images(1, size=size + count)[0]
  images = pa.array([blob[i : i + size] for i in range(count)])
  pq.write_table(
    pa.table({"image": images}),
    path,
    row_group_size=count,
    compression="none",
    use_dictionary=False,
    write_batch_size=4,
  )
  assert pq.ParquetFile(path).metadata.num_row_groups == 1
  result = subprocess.run(
    [sys.executable, "-c", _MEASURE, path],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  )
  total, growth = map(int, result.stdout.split())
  assert total == count * size
  assert growth < count * size // 2, f"peak RSS grew {growth >> 20} MiB"
  os.remove(path)
