"""Property-based fuzzing of what touches untrusted bytes first: validation and the serving
graph's decode, the TFRecord framing, tf.Example parsing, and the tar and Parquet readers.

Any exception other than a recorded Failure (or, in the graph, the InvalidArgumentError the
pipeline records as a decode error) is a bug. Inputs are arbitrary bytes and valid images and
shards mutated by flips, overwrites, truncations, insertions and deletions, biased towards the
headers where sizes and lengths live.

Bounded and repeatable in CI: `derandomize=True` (Hypothesis derives its seed from each test's
name, so every run tries the same examples) with `database=None` (nothing saved between runs),
a fixed number of examples, and a per-example deadline that also catches inputs that take too
long to reject.
"""

from __future__ import annotations

import datetime
import functools
import io
import re
import types

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image

from segbeam import options as options_lib
from segbeam.pipeline import elements
from segbeam.pipeline import sources
from segbeam.pipeline import tfrecord
from segbeam.pipeline import validation
from tests.pipeline import hostile_corpus as corpus

FUZZ = settings(
  derandomize=True,
  database=None,
  max_examples=300,
  deadline=datetime.timedelta(seconds=5),
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Where the bugs were: the image headers (about 7 s on 2 cores).
FUZZ_MORE = settings(FUZZ, max_examples=1000)
# Small, so that a mutated header declaring a large size is refused fast, and what passes
# decodes in milliseconds.
MAX_PIXELS = 1 << 16


@functools.lru_cache(maxsize=None)
def seed_images() -> tuple[bytes, ...]:
  rgb = corpus.scene(12, 9)
  image = Image.fromarray(rgb)
  wide16 = Image.fromarray((np.arange(12 * 9).reshape(9, 12) * 600).astype(np.uint16))
  frames = [Image.new("P", (12, 9), i) for i in (1, 2)]
  return (
    corpus.encode(image, "JPEG"),
    corpus.encode(image.convert("L"), "JPEG", progressive=True),
    corpus.encode(image.convert("CMYK"), "JPEG"),
    corpus.encode(image, "JPEG", exif=corpus.exif_bytes(6)),
    corpus.encode(image, "PNG"),
    corpus.encode(image.convert("RGBA"), "PNG"),
    corpus.encode(image.convert("P"), "PNG", exif=corpus.exif_bytes(3)),
    corpus.encode(wide16, "PNG"),
    corpus.encode(image.convert("1"), "PNG"),
    corpus.encode(image.convert("P"), "GIF"),
    corpus.encode(image.convert("P"), "GIF", save_all=True, append_images=frames),
    corpus.encode(image, "BMP"),
    corpus.encode(image.convert("P"), "BMP"),
    corpus.encode(image.convert("1"), "BMP"),
  )


@st.composite
def mutated(draw, seeds) -> bytes:
  """One of `seeds`, mutated up to four times; positions favour the first 64 bytes, after the
  8 of the magic number (arbitrary bytes test those)."""
  data = bytearray(draw(st.sampled_from(seeds)))
  for _ in range(draw(st.integers(0, 4))):
    if len(data) <= 8:
      break
    head = draw(st.booleans())
    position = draw(st.integers(8, min(len(data), 64) - 1 if head else len(data) - 1))
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
    if kind == "flip":
      data[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
      data[position] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
    elif kind == "truncate":
      del data[position:]
    elif kind == "insert":
      data[position:position] = draw(st.binary(min_size=1, max_size=16))
    else:
      del data[position : position + draw(st.integers(1, 16))]
  return bytes(data)


@functools.lru_cache(maxsize=None)
def graph_decode():
  """The serving graph's decode (the export's own function), traced once."""
  import tensorflow as tf

  from segbeam.model import preprocessing

  return tf.function(
    lambda data: preprocessing.decode_for_size(data, 3, 32)[1:],
    input_signature=[tf.TensorSpec([], tf.string)],
  )


def check_validation(data: bytes) -> None:
  """validate() never raises, and what it hands on, the graph decodes within the pixel cap or
  refuses with the error the pipeline records as a decode failure."""
  import tensorflow as tf

  from segbeam.pipeline import inference

  result = validation.validate(elements.ImageRecord("fuzz", "mem", data), MAX_PIXELS)
  if isinstance(result, elements.Failure):
    assert result.stage in (elements.STAGE_VALIDATE, elements.STAGE_DECODE)
    assert result.error_type and result.message and "\n" not in result.message
    assert len(result.message) <= 1000
    # The same input gives the same row: no object addresses in the reason.
    assert not re.search(r" at 0x[0-9a-f]+", result.message), result.message
    return
  info, handed_on = result
  assert 1 <= info.width and 1 <= info.height and info.width * info.height <= MAX_PIXELS
  assert info.format == validation.sniff_format(data)
  assert 1 <= info.exif_orientation <= 8
  try:
    height, width = (int(x) for x in graph_decode()(tf.constant(handed_on)))
  except tf.errors.InvalidArgumentError as error:
    failure = inference._failure_for(error, handed_on)
    assert failure.stage == elements.STAGE_DECODE
    return
  # The graph decodes exactly the size validation checked against the cap: never more.
  assert (height, width) == (info.height, info.width), (height, width, info, data[:40])


@pytest.fixture(scope="module", autouse=True)
def warm_graph():
  """Traces the graph's decode before the deadline counts."""
  import tensorflow as tf

  graph_decode()(tf.constant(seed_images()[0]))


@FUZZ_MORE
@given(data=st.deferred(lambda: mutated(seed_images())))
def test_validation_and_graph_decode_on_mutated_images(data):
  check_validation(data)


@FUZZ
@given(
  data=st.one_of(
    st.binary(max_size=256),
    # Arbitrary bytes behind each magic number, so they reach each format's header parser.
    st.tuples(st.sampled_from(list(validation.SUPPORTED)), st.binary(max_size=256)).map(
      lambda parts: parts[0] + parts[1]
    ),
  )
)
def test_validation_and_graph_decode_on_arbitrary_bytes(data):
  check_validation(data)


PAYLOADS = (b"", b"a", b"record two" * 30, bytes(range(256)), b"last")


class ShortReads(io.RawIOBase):
  """A stream that returns at most `step` bytes per read, as network streams may."""

  def __init__(self, data: bytes, step: int):
    super().__init__()
    self._data, self._at, self._step = data, 0, step

  def readable(self):
    return True

  def read(self, size=-1):
    size = self._step if size < 0 else min(size, self._step)
    chunk = self._data[self._at : self._at + size]
    self._at += len(chunk)
    return chunk


def read_all(data: bytes, step: int, max_record_bytes: int = tfrecord.MAX_RECORD_BYTES):
  """The reader's output, checked for consecutive indices and nothing after a fatal error."""
  out = list(tfrecord.read_records(ShortReads(data, step), max_record_bytes))
  assert [index for index, _ in out] == list(range(len(out)))
  fatal = [
    i
    for i, (_, record) in enumerate(out)
    if isinstance(record, tfrecord.RecordError) and record.fatal
  ]
  assert fatal in ([], [len(out) - 1])
  return [record for _, record in out]


@FUZZ
@given(
  position=st.integers(0, len(corpus.shard(list(PAYLOADS))) - 1),
  bit=st.integers(0, 7),
  step=st.integers(1, 64),
)
def test_a_flipped_bit_costs_at_most_its_record_or_the_rest_of_the_shard(position, bit, step):
  frames = [tfrecord.encode_record(payload) for payload in PAYLOADS]
  data = bytearray(b"".join(frames))
  data[position] ^= 1 << bit
  out = read_all(bytes(data), step)
  starts = np.cumsum([0] + [len(frame) for frame in frames])
  hit = int(np.searchsorted(starts, position, side="right")) - 1  # the damaged record
  offset = position - starts[hit]
  assert out[:hit] == list(PAYLOADS[:hit])  # records before the damage are all kept
  assert isinstance(out[hit], tfrecord.RecordError)
  if offset < 12:  # the length or its checksum: the framing is lost from here on
    assert out[hit].fatal and len(out) == hit + 1
  else:  # the data or its checksum: that record alone is lost
    assert not out[hit].fatal and out[hit + 1 :] == list(PAYLOADS[hit + 1 :])


@FUZZ
@given(
  cut=st.integers(0, len(corpus.shard(list(PAYLOADS)))),
  step=st.integers(1, 64),
  max_record_bytes=st.sampled_from([tfrecord.MAX_RECORD_BYTES, 100]),
)
def test_a_truncated_shard_keeps_every_whole_record(cut, step, max_record_bytes):
  frames = [tfrecord.encode_record(payload) for payload in PAYLOADS]
  out = read_all(b"".join(frames)[:cut], step, max_record_bytes)
  ends = np.cumsum([len(frame) for frame in frames])
  whole = int(np.searchsorted(ends, cut, side="right"))  # records that end before the cut
  for payload, record in zip(PAYLOADS[:whole], out):
    if len(payload) > max_record_bytes:  # skipped unread, and the shard goes on
      assert record.error_type == "RecordTooLarge" and not record.fatal
    else:
      assert record == payload
  cut_inside_a_record = cut not in (0, *ends)
  assert len(out) == whole + cut_inside_a_record
  if cut_inside_a_record:
    assert out[-1].fatal and "truncated" in out[-1].reason


@FUZZ
@given(
  data=st.one_of(
    st.binary(max_size=512),
    st.deferred(
      lambda: mutated(
        (
          corpus.shard(
            [corpus.example("a.jpg", b"\xff\xd8\xff"), corpus.example(None, b"x"), b"\x08\x01"]
          ),
        )
      )
    ),
  ),
  step=st.integers(1, 64),
)
def test_reading_any_shard_bytes_gives_records_or_failures(data, step):
  """Arbitrary bytes as a shard, through framing and tf.Example parsing: one item per record,
  each an Example or a recorded read Failure."""

  readable = types.SimpleNamespace(  # what iter_shard uses of Beam's ReadableFile
    metadata=types.SimpleNamespace(path="/shards/fuzz.tfrecord"),
    open=lambda: ShortReads(data, step),
  )
  items = list(sources.iter_shard(readable, "fuzz.tfrecord", "image/filename"))
  assert [index for index, _, _ in items] == list(range(len(items)))
  for index, filename, item in items:
    assert isinstance(filename, str)
    if isinstance(item, elements.Failure):
      assert item.stage == elements.STAGE_READ and item.error_type in (
        "CorruptRecord",
        "NotAnExample",
        "RecordTooLarge",
      )
      assert item.image_id == f"fuzz.tfrecord#{index}"
    else:
      assert type(item).__name__ == "Example"


def _tar_shard() -> bytes:
  """A WebDataset shard as `tarfile` writes one with pax headers (long names): three samples,
  one with a mask, one in a subfolder over the fuzz limit, one with no image."""
  import tarfile

  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name, data in (
      ("a.jpg", b"\xff\xd8\xff" + b"a" * 300),
      ("a.seg.png", b"\x89PNG" + b"m" * 40),
      ("dir/" + "b" * 120 + ".png", b"\x89PNG" + b"b" * 700),
      ("c.json", b"{}"),
    ):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def _parquet_file() -> bytes:
  import pyarrow as pa
  import pyarrow.parquet as pq

  image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  table = pa.table(
    {
      "image": pa.array(
        [{"bytes": b"\xff\xd8\xff" + bytes([i]) * 200, "path": f"{i}.jpg"} for i in range(6)]
        + [None],
        image,
      ),
      "name": [f"n{i}" for i in range(7)],
    }
  )
  buffer = io.BytesIO()
  pq.write_table(table, buffer, row_group_size=3)
  return buffer.getvalue()


_SHARD_READ_ERRORS = {
  "MissingImage",
  "FileTooLarge",
  "NotAFile",
  "DuplicateKey",
  "RepeatedMember",
  "TruncatedShard",
  "DamagedShard",
  "NotASampleMember",
  "UnreadableRows",
  "NoImageColumn",
  "MissingColumn",
  "NotATar",
  "MissingId",
  "DuplicateId",
}


def _read_with(kind: str, data: bytes, step: int, **options) -> list:
  """What `ReadFile` makes of `data` as a shard of `kind` ('webdataset' or 'parquet'), read in
  reads of at most `step` bytes (Parquet needs a seekable file: whole reads). An object
  store's path: no local file is looked at."""
  name = {"webdataset": "fuzz.tar", "parquet": "fuzz.parquet"}[kind]
  root = "gs://fuzz/shards/"
  read = sources.ReadFile(root=root, input_format=kind, max_file_bytes=500, **options)
  read.setup()

  def open_file(compression_type=None):
    del compression_type
    return ShortReads(data, step) if kind == "webdataset" else io.BytesIO(data)

  readable = types.SimpleNamespace(
    metadata=types.SimpleNamespace(path=f"{root}{name}", size_in_bytes=len(data)),
    open=open_file,
  )
  outputs, _ = read._outputs(readable)
  return list(read._counted(outputs))


def _check_shard_outputs(outputs: list, shard: str) -> None:
  """Each output an ImageRecord or a read Failure of a known kind; no id twice."""
  ids = []
  for output in outputs:
    if isinstance(output, beam_tagged()):
      failure = output.value
      assert failure.stage == elements.STAGE_READ
      assert failure.error_type in _SHARD_READ_ERRORS or failure.image_id == shard, failure
      assert failure.error_type != "NotARegularFile"
      ids.append(failure.image_id)
    else:
      assert isinstance(output, elements.ImageRecord) and isinstance(output.data, bytes)
      assert output.image_id.startswith(shard + "#")
      ids.append(output.image_id)
  assert len(ids) == len(set(ids)), ids


def beam_tagged():
  import apache_beam as beam

  return beam.pvalue.TaggedOutput


@FUZZ
@given(
  data=st.one_of(st.binary(max_size=2048), st.deferred(lambda: mutated((_tar_shard(),)))),
  step=st.integers(1, 700),
)
def test_reading_any_tar_bytes_gives_samples_or_failures(data, step):
  """Arbitrary and mutated tar shards: never an exception, each output a sample's record or a
  read failure, ids unique."""
  _check_shard_outputs(_read_with("webdataset", data, step), "fuzz.tar")


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.deferred(lambda: mutated((_parquet_file(),)))))
def test_reading_any_parquet_bytes_gives_rows_or_failures(data):
  """Arbitrary and mutated Parquet files, with and without an id column: never an exception,
  each output a row's record or a read failure, ids unique."""
  for columns in (options_lib.ParquetColumns(), options_lib.ParquetColumns(id="name")):
    _check_shard_outputs(_read_with("parquet", data, 1, parquet_columns=columns), "fuzz.parquet")
