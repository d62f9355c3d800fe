import io

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
  for cut, words in ((len(data) - 50, "inside record 1"), (len(data) - 2, "checksum is missing"),
                     (len(tfrecord.encode_record(b"ok")) + 5, "inside the header")):
    out = _records(data[:cut])
    assert out[0] == b"ok" and out[1].fatal and words in out[1].reason
