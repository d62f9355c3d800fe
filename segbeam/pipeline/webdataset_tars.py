"""WebDataset tar shards: members read one by one and grouped into samples by key.

A member's name splits into key and extension as WebDataset splits it (`split_name`: at the
first dot of its base name, 'cats/0001.seg.png' -> ('cats/0001', 'seg.png'), the extension
lower-cased), and consecutive members of one key are one sample (`iter_samples`). Its metadata
members ('__index__', ...) are skipped as WebDataset skips them; directories are no members.

The tar framing (512-byte blocks) is read here rather than by Python's tarfile, which in stream
mode, as WebDataset and Ray Data use it, ends a shard at its first damaged header: here a
damaged header costs the bytes up to the next header that reads, a truncation the sample it
cuts, and the rest of the shard is still read. A shard that ends without tar's end marker (zero
blocks) was cut, maybe between two members of its last sample: that sample is cut too. Headers
are parsed by tarfile (`TarInfo.frombuf`: checksums, ustar prefixes, base-256 sizes), long names
from GNU and pax headers. Only the members asked for (`wanted`) are held, each up to a size
limit; any other is skipped unread. A member's name is data: it is never opened, joined to a
path or extracted. A shard that starts as gzip is read decompressed ('.tgz', or a '.tar.gz'
under --input-format webdataset; Beam decompresses '.gz' names itself).
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import tarfile
from typing import BinaryIO, Callable, Iterator, Optional, Union

from segbeam.pipeline import tfrecord

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
# A long name or pax header larger than this is no real one: the shard is damaged there.
_MAX_HEADER_DATA = 1 << 20
_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$", re.S)  # WebDataset's `base_plus_ext`
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's default `skip_meta`
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# Headers whose data is about the next header: a long name, a pax header.
_EXTENDED_TYPES = (
  tarfile.GNUTYPE_LONGNAME,
  tarfile.GNUTYPE_LONGLINK,
  tarfile.XHDTYPE,
  tarfile.SOLARIS_XHDTYPE,
  tarfile.XGLTYPE,
)


def split_name(name: str) -> tuple[Optional[str], Optional[str]]:
  """(key, extension lower-cased) of a member name as WebDataset splits it; (None, None) for a
  name with no extension ('README'), which belongs to no sample."""
  match = _NAME.match(name)
  if not match:
    return None, None
  return match.group(1), match.group(2).lower()


def is_meta(name: str) -> bool:
  """Whether WebDataset skips `name` as metadata ('__index__', '__meta__/...')."""
  return bool(_META.match(name))


@dataclasses.dataclass(frozen=True)
class Member:
  """A member of the shard.

  Attributes:
    name: as the tar names it (long names included), decoded UTF-8 with its other bytes kept
      as surrogates.
    offset: of its (first) header in the shard, decompressed.
    size: its data's size as the header says.
    data: its bytes, where wanted, a regular file and within the limit; else None.
    regular: whether it is a regular file (not a link, device, FIFO, ...).
    too_large: wanted, but over the limit: skipped unread.
  """

  name: str
  offset: int
  size: int
  data: Optional[bytes] = None
  regular: bool = True
  too_large: bool = False


@dataclasses.dataclass(frozen=True)
class Damage:
  """Where the shard could not be read. `fatal`: nothing after it could be (a truncation); else
  the reader found the next header past it. `not_a_tar`: no header anywhere in the file."""

  offset: int
  reason: str
  fatal: bool
  # The member the shard ends inside or after (the end marker not read): its sample is cut.
  member: Optional[str] = None
  not_a_tar: bool = False


def _header(block: bytes) -> Optional[tarfile.TarInfo]:
  try:
    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
  except tarfile.HeaderError:
    return None
  return info if info.size >= 0 else None  # a negative base-256 size: no header


def _pax_fields(data: bytes) -> dict[str, str]:
  """A pax header's records ('<length> <key>=<value>\\n' each); what does not parse is left."""
  fields, position = {}, 0
  while position < len(data):
    space = data.find(b" ", position)
    if space < 0:
      break
    try:
      length = int(data[position:space])
    except ValueError:
      break
    if length <= 0:
      break
    record = data[space + 1 : position + length].rstrip(b"\n")
    key, sep, value = record.partition(b"=")
    if sep:
      fields[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    position += length
  return fields


def _maybe_gunzip(stream: BinaryIO) -> BinaryIO:
  """The stream decompressed where it starts as gzip; else as it was (from its start)."""
  head = tfrecord.read_up_to(stream, 2)
  rest = _Prepended(head, stream)
  if head == b"\x1f\x8b":
    return gzip.GzipFile(fileobj=rest, mode="rb")
  return rest


class _Guarded:
  """`stream` whose failing read (a gzip stream cut short or damaged, a connection lost) reads
  as its end; `error` says what failed, for the damage it makes."""

  def __init__(self, stream: BinaryIO):
    self._stream = stream
    self.error: Optional[str] = None

  def read(self, size: int = -1) -> bytes:
    if self.error is not None:
      return b""
    try:
      return self._stream.read(size)
    except Exception as error:  # any failing read ends the shard here
      self.error = f"{type(error).__name__}: {error}"
      return b""


class _Prepended:
  """`stream` with `head` (bytes already read from it) put back in front."""

  def __init__(self, head: bytes, stream: BinaryIO):
    self._head, self._stream = head, stream

  def read(self, size: int = -1) -> bytes:
    if self._head:
      if size < 0:
        data, self._head = self._head + self._stream.read(), b""
        return data
      data, self._head = self._head[:size], self._head[size:]
      if len(data) < size:
        data += self._stream.read(size - len(data))
      return data
    return self._stream.read(size)


def iter_members(
  stream: BinaryIO, wanted: Callable[[str], bool], max_member_bytes: int
) -> Iterator[Union[Member, Damage]]:
  """The shard's file members and what could not be read, in order; directories are left out.

  Args:
    stream: the shard, from its start (gzip is decompressed).
    wanted: whether a member's data is needed, by its name.
    max_member_bytes: a wanted member larger is skipped unread (`Member.too_large`).
  """
  raw = _Guarded(stream)
  decompressed = _Guarded(_maybe_gunzip(raw))

  def error() -> Optional[str]:
    return decompressed.error or raw.error

  ended = False
  for item in _members(decompressed, wanted, max_member_bytes):
    if isinstance(item, Damage) and item.fatal:
      ended = True
      if error() is not None:
        item = dataclasses.replace(item, reason=f"{item.reason} ({error()})")
    yield item
  if error() is not None and not ended:  # a failure between members, or in the end's padding
    yield Damage(-1, f"the shard could not be read to its end ({error()})", fatal=True)


def _data_size(info: tarfile.TarInfo, pax: dict[str, str]) -> Optional[int]:
  """The bytes of data that follow `info`'s header: its size, or its pax header's 'size' (that
  of a member, never of another extended header); None where the pax size is no size."""
  if "size" not in pax or info.type in _EXTENDED_TYPES:
    return info.size
  try:
    size = int(pax["size"])
  except ValueError:
    return None
  return size if size >= 0 else None


def _cut_in_header(offset: int, last: Optional[str]) -> Damage:
  """The shard ends inside the header at `offset`: `last`'s sample may be cut."""
  return Damage(
    offset, f"the shard ends inside the header at byte {offset}", fatal=True, member=last
  )


def _members(
  stream: BinaryIO, wanted: Callable[[str], bool], max_member_bytes: int
) -> Iterator[Union[Member, Damage]]:
  """`iter_members` of a stream whose failing reads read as its end."""
  offset = 0
  long_name: Optional[str] = None  # from a GNU long-name member, for the next header
  pax: dict[str, str] = {}  # from a pax header, for the next header
  # Whether the archive's end marker (a zero block) came after the last header: a shard that
  # ends without one was cut (or written without its end), maybe inside the sample of `last`.
  ended = False
  last: Optional[str] = None  # the last member read, while no end marker or damage followed it
  discard = False  # the next member's extended header was skipped: its name is unknown
  while True:
    block = tfrecord.read_up_to(stream, BLOCK)
    if len(block) < BLOCK:
      if offset == 0:  # tarfile refuses such a shard ('empty file') too
        yield Damage(
          0, f"the file is {len(block)} bytes, no tar (512-byte blocks)", True, not_a_tar=True
        )
      elif block.strip(b"\0") and not ended:  # bytes after the end marker are no member
        yield _cut_in_header(offset, last)
      elif not block and not ended:
        yield Damage(
          offset,
          f"the shard ends at byte {offset} without the tar end marker: it was cut there (or "
          "written without its end)",
          fatal=True,
          member=last,
        )
      return
    if block == _ZERO_BLOCK:  # the end marker and its padding; a concatenated shard goes on
      offset += BLOCK
      ended, last, long_name, pax, discard = True, None, None, {}, False
      continue
    ended = False
    info = _header(block)
    size = None if info is None else _data_size(info, pax)
    if size is None:  # a damaged header: on to the next block that reads as one
      start = offset
      info = None
      while info is None:
        offset += BLOCK
        block = tfrecord.read_up_to(stream, BLOCK)
        if len(block) < BLOCK:
          if start == 0:
            yield Damage(0, "no tar header anywhere in the file", True, not_a_tar=True)
          else:
            yield Damage(
              start, f"a damaged tar header at byte {start}, and no member after it", True
            )
          return
        info = _header(block) if block != _ZERO_BLOCK else None
      yield Damage(
        start,
        f"a damaged tar header at byte {start}: {offset - start} bytes skipped to the next member",
        fatal=False,
      )
      long_name, pax, last, discard = None, {}, None, False
      size = info.size
    header_offset = offset
    offset += BLOCK
    padded = size + (-size) % BLOCK
    if info.type in _EXTENDED_TYPES:
      if size > _MAX_HEADER_DATA:  # no real name is this long: skipped with its member
        read = tfrecord.skip(stream, padded)
        offset += read
        if read < size:
          yield Damage(
            header_offset,
            f"the shard ends inside the {size}-byte extended header at byte {header_offset}",
            fatal=True,
            member=last,
          )
          return
        yield Damage(
          header_offset,
          f"a {size}-byte extended header at byte {header_offset}, over the "
          f"{_MAX_HEADER_DATA}-byte limit: skipped, and the member it names",
          fatal=False,
        )
        long_name, pax, last, discard = None, {}, None, True
        continue
      data = tfrecord.read_up_to(stream, padded)
      offset += len(data)
      if len(data) < size:
        yield _cut_in_header(header_offset, last)
        return
      data = data[:size]
      if info.type == tarfile.GNUTYPE_LONGNAME:
        long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
      elif info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
        pax = _pax_fields(data)
      continue
    sparse = info.type == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.sparse.") for k in pax)
    name = pax.get("GNU.sparse.name") or pax.get("path") or long_name or info.name
    while name.startswith("./"):  # `tar -C DIR .` names every member so: keys without it
      name = name[2:]
    long_name, pax = None, {}
    if info.type == tarfile.GNUTYPE_SPARSE and block[482]:  # more of its map in blocks of its own
      while True:
        extension = tfrecord.read_up_to(stream, BLOCK)
        offset += len(extension)
        if len(extension) < BLOCK:
          yield _cut_in_header(header_offset, last)
          return
        if not extension[504]:
          break
    # A link's target is a name, never followed; a sparse file's data is not the file's: only
    # regular files are read.
    regular = info.type in _FILE_TYPES and not sparse
    data = None
    too_large = False
    take = regular and not discard and wanted(name)
    if take and size > max_member_bytes:
      take, too_large = False, True
    if take:
      data = tfrecord.read_up_to(stream, size)
      read = len(data)
      if read == size:
        read += tfrecord.skip(stream, padded - size)
    else:
      read = tfrecord.skip(stream, padded)
    offset += read
    if read < size:
      yield Damage(
        header_offset,
        f"the shard ends inside member {name} ({read} of its {size} bytes)",
        fatal=True,
        member=None if discard else name,
      )
      return
    if discard:  # told by the damage before it
      discard = False
      continue
    if info.type == tarfile.DIRTYPE:
      continue
    last = name
    yield Member(name, header_offset, size, data, regular, too_large)


@dataclasses.dataclass(frozen=True)
class Sample:
  """Consecutive members of one key.

  Attributes:
    key: the members' key ('cats/0001').
    members: by extension ('jpg', 'seg.png').
    offset: of its first member's header.
    repeated: the name of a member whose extension the sample already had (WebDataset refuses
      such a sample); None.
    cut: why the sample may be incomplete (the shard ends inside it, or damage fell in it);
      None.
  """

  key: str
  members: dict[str, Member]
  offset: int
  repeated: Optional[str] = None
  cut: Optional[str] = None
  damaged: bool = False  # `cut` by damage the shard went on after, rather than by its end


@dataclasses.dataclass(frozen=True)
class Stray:
  """A file member that belongs to no sample: a name with no extension ('README')."""

  member: Member


def iter_samples(
  stream: BinaryIO, wanted_extensions: frozenset[str], max_member_bytes: int
) -> Iterator[Union[Sample, Stray, Damage]]:
  """The shard's samples, in order, with its stray members and its damage.

  A sample is closed by a member of another key or by the shard's end; one the shard ends
  inside, or after without tar's end marker, is `cut`, and that fatal damage is told by it
  alone. Damage the shard goes on after is told, and the samples on either side of it are
  `cut` (`damaged`) too: either may have lost a member in the damaged bytes.

  Args:
    wanted_extensions: the extensions whose data is read (the image's and the label's).
  """

  def wanted(name: str) -> bool:
    return split_name(name)[1] in wanted_extensions and not is_meta(name)

  current: Optional[Sample] = None
  after_damage: Optional[str] = None  # damage just skipped: the next sample may have lost to it
  for item in iter_members(stream, wanted, max_member_bytes):
    if isinstance(item, Damage):
      key = None if item.member is None else split_name(item.member)[0]
      if current is not None and key is not None and key == current.key:
        yield dataclasses.replace(current, cut=item.reason)
        return
      if item.fatal:
        if current is not None:
          yield current
        if key is not None and not is_meta(item.member):  # the sample it starts is cut
          yield Sample(key, {}, item.offset, cut=item.reason)
        else:
          yield item
        return
      yield item
      # Which sample the damaged bytes held members of is unknown: the ones on either side of
      # them may each have lost one (a mask, say), so neither is taken as whole.
      if current is not None:
        current = dataclasses.replace(current, cut=item.reason, damaged=True)
      after_damage = item.reason
      continue
    if is_meta(item.name):
      continue
    key, extension = split_name(item.name)
    if key is None:
      if current is not None:
        yield current
        current = None
      yield Stray(item)
      continue
    if current is not None and key != current.key:
      yield current
      current = None
    if current is None:
      current = Sample(key, {extension: item}, item.offset)
      if after_damage is not None:
        current = dataclasses.replace(current, cut=after_damage, damaged=True)
    elif extension in current.members:
      if current.repeated is None:
        current = dataclasses.replace(current, repeated=item.name)
    else:
      current.members[extension] = item
    after_damage = None
  if current is not None:
    yield current
