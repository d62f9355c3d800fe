import io
import tracemalloc

import tensorflow as tf

from segbeam.pipeline import tfrecord


def _records(data: bytes):
  return [r for _, r in tfrecord.read_records(io.BytesIO(data))]


def test_framing_matches_tensorflows_writer(tmp_path):
  path = str(tmp_path / "x.tfrecord")
  payloads = [b"", b"a", b"hello" * 1000]
  with tf.io.TFRecordWriter(path) as writer:
    for payload in payloads:
      writer.write(payload)
  with open(path, "rb") as f:
    written = f.read()
  assert written == b"".join(tfrecord.encode_record(p) for p in payloads)
  assert _records(written) == payloads


def test_a_shard_is_told_by_its_first_record_header(tmp_path):
  path = str(tmp_path / "train-00000-of-00001")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b"payload")
  with open(path, "rb") as f:
    assert tfrecord.starts_with_a_record(f)
  header = bytearray(tfrecord.encode_record(b"payload")[:12])
  header[8] ^= 0x01  # the length's checksum no longer matches
  for other in (
    b"",
    b"\xff\xd8\xff\xe0" + b"\0" * 20,
    b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
    tfrecord.encode_record(b"payload")[:11],
    bytes(header),
  ):
    assert not tfrecord.starts_with_a_record(io.BytesIO(other)), other


def test_bad_data_checksum_costs_only_that_record():
  good, bad = tfrecord.encode_record(b"good"), bytearray(tfrecord.encode_record(b"flip"))
  bad[13] ^= 0xFF
  out = _records(good + bytes(bad) + good)
  assert out[0] == b"good" and out[2] == b"good"
  assert isinstance(out[1], tfrecord.RecordError) and not out[1].fatal
  assert "data checksum mismatch in record 1" in out[1].reason


def test_bad_length_checksum_ends_the_shard():
  bad = bytearray(tfrecord.encode_record(b"x"))
  bad[0] ^= 0x01
  out = _records(tfrecord.encode_record(b"ok") + bytes(bad) + tfrecord.encode_record(b"lost"))
  assert out[0] == b"ok" and len(out) == 2
  assert out[1].fatal and "length checksum" in out[1].reason


def test_truncation_inside_a_record_is_reported():
  data = tfrecord.encode_record(b"ok") + tfrecord.encode_record(b"y" * 100)
  for cut, words in (
    (len(data) - 50, "inside record 1"),
    (len(data) - 2, "checksum is missing"),
    (len(tfrecord.encode_record(b"ok")) + 5, "inside the header"),
  ):
    out = _records(data[:cut])
    assert out[0] == b"ok" and out[1].fatal and words in out[1].reason


def test_a_record_over_the_limit_is_skipped_unread_and_the_shard_goes_on():
  data = b"".join(tfrecord.encode_record(p) for p in (b"small", b"L" * 5000, b"after"))
  out = [r for _, r in tfrecord.read_records(io.BytesIO(data), max_record_bytes=100)]
  assert out[0] == b"small" and out[2] == b"after"
  assert out[1].error_type == "RecordTooLarge" and not out[1].fatal
  assert "record 1 is 5000 bytes, over the 100-byte limit" in out[1].reason


def test_a_length_claiming_more_than_the_shard_holds_costs_no_memory_for_it(tmp_path):
  # A believable frame (its length checksum is right) claiming 1.5 GB, then the shard ends.
  length = (1536 << 20).to_bytes(8, "little")
  path = tmp_path / "claim.tfrecord"
  path.write_bytes(length + tfrecord.masked_crc(length).to_bytes(4, "little") + b"only this")
  tracemalloc.start()
  try:
    with open(path, "rb") as stream:  # a file's read(n) allocates n bytes before reading
      out = [r for _, r in tfrecord.read_records(stream)]
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert len(out) == 1 and out[0].fatal and "(9 of 1610612736 bytes)" in out[0].reason
  assert peak < 64 << 20, f"{peak >> 20} MB"
