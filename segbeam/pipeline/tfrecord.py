"""TFRecord framing, read record by record so a corrupt record costs only itself.

Each record is: uint64 length, uint32 masked CRC32C of the length, the data, uint32 masked
CRC32C of the data (little-endian). TensorFlow's reader stops a whole shard at the first bad
record; this one reports it and goes on while the framing can still be trusted.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import BinaryIO, Iterator, Union

import google_crc32c

_MASK_DELTA = 0xA282EAD8
# A length this large is framing garbage, not a record (images are far smaller).
MAX_RECORD_BYTES = 1 << 31


def masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return b"".join(
    (length, struct.pack("<I", masked_crc(length)), data, struct.pack("<I", masked_crc(data)))
  )


@dataclasses.dataclass(frozen=True)
class RecordError:
  """A record that could not be read; `fatal` when the rest of the shard is unreadable too.

  `error_type` names it in the errors table: CorruptRecord, or RecordTooLarge for a record
  skipped unread for its size.
  """

  index: int
  reason: str
  fatal: bool
  error_type: str = "CorruptRecord"


# Reads go by chunks of at most this size, so a length field pays for no more memory than the
# stream really holds.
_CHUNK_BYTES = 16 << 20


def read_up_to(stream: BinaryIO, count: int) -> bytes:
  """Up to `count` bytes, fewer only at the end of the stream (short reads are retried)."""
  chunks, remaining = [], count
  while remaining > 0:
    chunk = stream.read(min(remaining, _CHUNK_BYTES))
    if not chunk:
      break
    chunks.append(chunk)
    remaining -= len(chunk)
  return b"".join(chunks)


def _length_checksum_holds(header: bytes) -> bool:
  """Whether a record's 12-byte header (length, masked CRC32C of the length) is consistent."""
  return masked_crc(header[:8]) == struct.unpack("<I", header[8:12])[0]


def starts_with_a_record(stream: BinaryIO) -> bool:
  """Whether the stream begins as a TFRecord file does: a record length and its checksum.
  Other data passes by chance once in 2**32 (no image format's header does)."""
  header = read_up_to(stream, 12)
  return len(header) == 12 and _length_checksum_holds(header)


def skip(stream: BinaryIO, count: int) -> int:
  """Skips `count` bytes without keeping them; returns how many were there."""
  skipped = 0
  while skipped < count:
    chunk = stream.read(min(count - skipped, _CHUNK_BYTES))
    if not chunk:
      break
    skipped += len(chunk)
  return skipped


def read_records(
  stream: BinaryIO, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[tuple[int, Union[bytes, RecordError]]]:
  """Yields (record index, data or RecordError). A bad data CRC skips that record only, as does
  a record over `max_record_bytes` (skipped without being held in memory); a bad length CRC, a
  length beyond any real record, or a truncation ends the shard with a fatal RecordError."""
  index = 0
  while True:
    header = read_up_to(stream, 12)
    if not header:
      return
    if len(header) < 12:
      yield (
        index,
        RecordError(index, f"shard truncated inside the header of record {index}", fatal=True),
      )
      return
    if not _length_checksum_holds(header):
      yield (
        index,
        RecordError(
          index,
          f"length checksum mismatch at record {index}; the rest of the shard cannot be framed",
          fatal=True,
        ),
      )
      return
    (length,) = struct.unpack("<Q", header[:8])
    if length > MAX_RECORD_BYTES:
      yield index, RecordError(index, f"record {index} claims {length} bytes", fatal=True)
      return
    if length > max_record_bytes:
      if skip(stream, length + 4) < length + 4:
        yield index, RecordError(index, f"shard truncated inside record {index}", fatal=True)
        return
      yield (
        index,
        RecordError(
          index,
          f"record {index} is {length} bytes, over the {max_record_bytes}-byte limit",
          fatal=False,
          error_type="RecordTooLarge",
        ),
      )
      index += 1
      continue
    data = read_up_to(stream, length)
    footer = read_up_to(stream, 4)
    if len(data) < length:
      yield (
        index,
        RecordError(
          index,
          f"shard truncated inside record {index} ({len(data)} of {length} bytes)",
          fatal=True,
        ),
      )
      return
    if len(footer) < 4:
      yield (
        index,
        RecordError(
          index,
          f"shard truncated after the data of record {index} (its checksum is missing)",
          fatal=True,
        ),
      )
      return
    if masked_crc(data) != struct.unpack("<I", footer)[0]:
      yield index, RecordError(index, f"data checksum mismatch in record {index}", fatal=False)
    else:
      yield index, data
    index += 1
