"""WebDataset tar shards as `webdataset_tars` reads them: as the `webdataset` package groups
well-formed shards, and without an exception or a silent loss whatever a careless or hostile
producer wrote (damaged and cut headers, odd member types, gzip cut short)."""

import gzip
import inspect
import io
import os
import re
import shutil
import subprocess
import tarfile
from typing import Optional

import pytest
import webdataset
from webdataset import tariterators

from segbeam import constants
from segbeam.pipeline import sources
from segbeam.pipeline import webdataset_tars as wt

WANTED = frozenset({"jpg", "png", "seg.png"})
LIMIT = 1 << 20
# Past ustar's 100-byte name field: a GNU long name, a pax path or ustar's prefix, by format.
LONG_DIR = "cats/" + "x" * 150


def _payload(tag: str, size: int) -> bytes:
  """Member data that no tar header can be read from (the resync must not land inside it)."""
  return (tag.encode() * size)[:size]


def _tar(entries, tar_format=tarfile.GNU_FORMAT) -> bytes:
  """A shard of `entries`: (name, bytes) for a regular file, or a TarInfo without data."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
    for entry in entries:
      if isinstance(entry, tarfile.TarInfo):
        tar.addfile(entry)
        continue
      name, data = entry
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  info.type, info.linkname = kind, linkname
  return info


def _with_checksum(block: bytes) -> bytes:
  """A header block with its checksum recomputed (after a field was patched)."""
  block = bytearray(block)
  block[148:156] = b" " * 8
  block[148:156] = b"%06o\0 " % (sum(block) & 0o777777)
  return bytes(block)


def _raw_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
  info = tarfile.TarInfo(name)
  info.size, info.type = size, kind
  return info.tobuf(tarfile.USTAR_FORMAT)


def _pax(**fields: bytes) -> bytes:
  """A pax header and its records ('<length> <key>=<value>\\n', the length counting itself)."""
  records = b""
  for key, value in fields.items():
    body = b" " + key.replace("_", ".").encode() + b"=" + value + b"\n"
    length = len(body)
    while len(str(length)) + len(body) != length:
      length = len(str(length)) + len(body)
    records += str(length).encode() + body
  return (
    _raw_header("././@PaxHeader", len(records), tarfile.XHDTYPE)
    + records
    + bytes(-len(records) % wt.BLOCK)
  )


def _member(name: str, data: bytes) -> bytes:
  """One regular member as raw blocks: header, data, padding."""
  return _raw_header(name, len(data)) + data + bytes(-len(data) % wt.BLOCK)


END = bytes(2 * wt.BLOCK)


def _items(data: bytes, wanted=WANTED, limit: int = LIMIT) -> list:
  return list(wt.iter_samples(io.BytesIO(data), wanted, limit))


def _complete(items) -> list[tuple[str, dict]]:
  """(key, {extension: data}) of the samples read whole, regular members only."""
  return [
    (item.key, {ext: m.data for ext, m in item.members.items() if m.regular})
    for item in items
    if isinstance(item, wt.Sample) and item.cut is None
  ]


def _problems(items) -> list:
  return [i for i in items if not (isinstance(i, wt.Sample) and i.cut is None)]


def _webdataset(data: bytes) -> list[tuple[str, dict]]:
  """What the webdataset package makes of a shard: (key, {extension: data}) per sample."""
  files = tariterators.tar_file_iterator(io.BytesIO(data))
  samples = tariterators.group_by_keys({**f, "__url__": "shard"} for f in files)
  return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in samples]


def _ours_like_webdataset(data: bytes) -> list[tuple[str, dict]]:
  extensions = frozenset(ext for _, sample in _webdataset(data) for ext in sample)
  items = _items(data, wanted=extensions)
  assert not _problems(items), _problems(items)
  return [(key, members) for key, members in _complete(items) if members]


# Members both readers must agree on: long names (GNU long-name members, pax paths or ustar
# prefixes, by format), keys in folders, dots in folder names, several extensions, upper-case
# ones, names that are not ASCII, metadata members, directories and links (never samples).
WELL_FORMED = [
  _special("cats", tarfile.DIRTYPE),
  ("__index__", b"index"),
  ("cats/0001.jpg", _payload("a", 700)),
  ("cats/0001.seg.png", _payload("m", 10)),
  ("cats/0001.cls", b"3"),
  ("v1.2/0002.JPG", _payload("b", 513)),
  ("v1.2/0002.Seg.Png", _payload("n", 512)),
  (f"{LONG_DIR}/0003.jpg", _payload("c", 1)),
  (f"{LONG_DIR}/0003.seg.png", b""),
  ("chats/Éloïse 4.jpg", _payload("d", 1024)),
  ("0005.tar.gz.json", b"{}"),
]


@pytest.mark.parametrize(
  "tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]
)
def test_samples_are_webdatasets_on_shards_tarfile_writes(tar_format):
  link = _special("cats/0001.txt", tarfile.SYMTYPE, "/etc/passwd")
  shard = _tar(WELL_FORMED[:4] + [link] + WELL_FORMED[4:], tar_format)
  ours = _ours_like_webdataset(shard)
  assert ours == _webdataset(shard)
  keys = ["cats/0001", "v1.2/0002", f"{LONG_DIR}/0003", "chats/Éloïse 4", "0005"]
  assert [key for key, _ in ours] == keys
  assert ours[0][1] == {"jpg": _payload("a", 700), "seg.png": _payload("m", 10), "cls": b"3"}
  assert ours[1][1] == {"jpg": _payload("b", 513), "seg.png": _payload("n", 512)}


@pytest.mark.parametrize("name", ["shard.tar", "shard.tgz"])
def test_samples_are_webdatasets_on_shards_its_tar_writer_writes(tmp_path, name):
  path = str(tmp_path / name)
  with webdataset.TarWriter(path) as writer:
    for index in range(5):
      writer.write(
        {
          "__key__": f"{LONG_DIR}/{index:04d}" if index == 3 else f"s{index:04d}",
          "jpg": _payload(str(index), 100 * index + 1),
          "seg.png": _payload("m", index),
          "json": {"index": index},
        }
      )
  with open(path, "rb") as f:
    raw = f.read()
  shard = gzip.decompress(raw) if name.endswith("tgz") else raw
  assert raw.startswith(b"\x1f\x8b") == name.endswith("tgz")
  ours = _ours_like_webdataset(raw)  # gzip is read by its bytes, whatever the name
  assert ours == _webdataset(shard)
  assert len(ours) == 5 and ours[3][0] == f"{LONG_DIR}/0003"
  assert ours[2][1]["jpg"] == _payload("2", 201)


@pytest.mark.parametrize(
  "name",
  [
    "a.jpg",
    "a.seg.png",
    "a.SEG.PNG",
    "d/e/f.jpg",
    "d.e/f.g.h",
    "x/.hidden.jpg",
    ".hidden",
    "README",
    "dir/",
    "a\nb.jpg",
    "caf\udce9.jpg",
    "__index__",
    "__meta__/x.jpg",
    "x/__meta__",
  ],
)
def test_names_split_and_meta_as_webdataset_does(name):
  key, extension = tariterators.base_plus_ext(name)
  assert wt.split_name(name) == (key, extension and extension.lower())
  skip_meta = inspect.signature(tariterators.tar_file_iterator).parameters["skip_meta"].default
  assert wt.is_meta(name) == bool(re.match(skip_meta, name))


def test_base256_sizes_pax_sizes_and_names_are_read_as_tarfile_reads_them():
  base256 = bytearray(_raw_header("big/k0.jpg", 0))
  base256[124:136] = b"\x80" + (5).to_bytes(11, "big")  # GNU's binary number form
  long_path = "pax/" + "p" * 200 + "/k1.jpg"
  shard = b"".join(
    [
      _with_checksum(bytes(base256)) + b"12345" + bytes(507),
      _pax(size=b"7", path=long_path.encode()),
      _raw_header("placeholder.jpg", 0) + b"1234567" + bytes(505),  # sized by the pax header
      _pax(path=b"raw/caf\xe9.jpg", hdrcharset=b"BINARY"),
      _member("raw/placeholder.jpg", b"nonutf8"),
      END,
    ]
  )
  items = _items(shard)
  assert not _problems(items)
  assert _complete(items) == [
    ("big/k0", {"jpg": b"12345"}),
    (long_path[:-4], {"jpg": b"1234567"}),
    ("raw/caf\udce9", {"jpg": b"nonutf8"}),  # bytes that are not UTF-8 kept as surrogates
  ]
  assert _complete(items) == _webdataset(shard)


@pytest.mark.parametrize(
  "kind",
  [tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE],
)
def test_links_and_special_members_named_like_images_are_never_read(kind):
  shard = _tar([("k0.jpg", b"A"), _special("k1.jpg", kind, "k0.jpg"), ("k2.jpg", b"C")])
  items = _items(shard)
  assert not _problems(items)
  assert [i.key for i in items] == ["k0", "k1", "k2"]
  link = items[1].members["jpg"]
  assert not link.regular and link.data is None
  assert items[2].members["jpg"].data == b"C"


def test_directories_are_no_members_even_named_like_images():
  folder = _special("k1.jpg/", tarfile.DIRTYPE)
  old_style = _raw_header("k2.jpg/", 0, tarfile.AREGTYPE)  # V7's directory: a trailing slash
  shard = _tar([("k0.jpg", b"A"), folder]) + old_style + _tar([("k3.jpg", b"D")])
  items = _items(shard)
  assert not _problems(items)
  assert _complete(items) == [("k0", {"jpg": b"A"}), ("k3", {"jpg": b"D"})]


def test_metadata_members_are_skipped_and_keep_a_sample_whole():
  shard = _tar(
    [
      ("__index__", b"x"),
      ("k0.jpg", b"A"),
      ("__meta__/k0.jpg", b"not an image"),
      ("k0.seg.png", b"M"),
      ("__index__.json", b"{}"),  # no metadata: webdataset's sample '__index__' too
    ]
  )
  items = _items(shard)
  assert not _problems(items)
  assert [i.key for i in items] == [k for k, _ in _webdataset(shard)] == ["k0", "__index__"]
  assert _complete(items)[0] == ("k0", {"jpg": b"A", "seg.png": b"M"})


def test_names_without_an_extension_are_strays_and_close_the_sample():
  shard = _tar([("k0.jpg", b"A"), ("README", b"r"), (".hidden", b"h"), ("k0.seg.png", b"M")])
  items = _items(shard)
  assert [type(i).__name__ for i in items] == ["Sample", "Stray", "Stray", "Sample"]
  assert [i.member.name for i in items[1:3]] == ["README", ".hidden"]
  assert items[0].key == items[3].key == "k0"  # a second sample of one key: refused by its reader


def test_repeated_keys_and_extensions_are_told():
  shard = _tar(
    [
      ("k0.jpg", b"A"),
      ("k1.jpg", b"B"),
      ("k1.JPG", b"B2"),
      ("k1.jpg", b"B3"),
      ("k0.jpg", b"A2"),
    ]
  )
  items = _items(shard)
  assert [(i.key, i.repeated) for i in items] == [("k0", None), ("k1", "k1.JPG"), ("k0", None)]
  assert items[1].members["jpg"].data == b"B"  # the first one, as read
  assert items[2].members["jpg"].data == b"A2"
  with pytest.raises(ValueError, match="duplicate file name"):
    _webdataset(shard)


def test_concatenated_shards_are_read_whole():
  shard = _tar([("k0.jpg", b"A")]) + _tar([("k1.jpg", b"B")], tarfile.PAX_FORMAT)
  assert _complete(_items(shard)) == [("k0", {"jpg": b"A"}), ("k1", {"jpg": b"B"})]


def test_members_not_wanted_or_over_the_limit_are_skipped_unread():
  shard = _tar([("k0.txt", b"t" * 100), ("k0.jpg", b"j" * 2000), ("k1.jpg", b"B")])
  items = _items(shard, limit=1000)
  k0 = items[0].members
  assert k0["txt"].data is None and k0["txt"].regular and not k0["txt"].too_large
  assert k0["jpg"].data is None and k0["jpg"].too_large and k0["jpg"].size == 2000
  assert items[1].members["jpg"].data == b"B"


@pytest.mark.parametrize(
  "data,size",
  [(b"", 0), (b"\0" * 100, 100), (b"a" * 511, 511), (b"\x1f\x8b", 0)],
  ids=["empty", "zeros", "text", "gzip_magic_only"],
)
def test_a_shard_shorter_than_a_header_is_damage(data, size):
  (damage,) = _items(data)
  assert isinstance(damage, wt.Damage) and damage.fatal and damage.offset == 0
  assert damage.not_a_tar and f"the file is {size} bytes" in damage.reason


@pytest.mark.parametrize("data", [b"\xff\xd8\xff" + b"j" * 5000, b"Dear diary. " * 100])
def test_a_file_with_no_tar_header_anywhere_is_not_a_tar(data):
  (damage,) = _items(data)
  assert damage.fatal and damage.not_a_tar and "no tar header" in damage.reason


@pytest.mark.parametrize("blocks", [1, 2, 20])
def test_a_shard_of_zero_blocks_is_empty(blocks):
  assert _items(bytes(blocks * wt.BLOCK)) == []
  assert _items(gzip.compress(bytes(blocks * wt.BLOCK))) == []


def test_trailing_garbage_after_the_end_is_told_and_costs_nothing():
  shard = _tar([("k0.jpg", b"A"), ("k1.jpg", b"B")])
  items = _items(shard + b"garbage" * 300)
  assert _complete(items) == [("k0", {"jpg": b"A"}), ("k1", {"jpg": b"B"})]
  (damage,) = _problems(items)
  assert damage.fatal and damage.offset == len(shard) and "no member after it" in damage.reason


def test_a_shard_without_its_end_marker_cuts_its_last_sample():
  shard = _member("k0.jpg", b"A") + _member("k1.jpg", b"B") + _member("k1.seg.png", b"M")
  for cut, last in ((len(shard), "k1"), (2 * wt.BLOCK * 2, "k1"), (2 * wt.BLOCK, "k0")):
    items = _items(shard[:cut])
    assert isinstance(items[-1], wt.Sample) and items[-1].key == last
    assert "without the tar end marker" in items[-1].cut
  assert _complete(_items(shard + END)) == [
    ("k0", {"jpg": b"A"}),
    ("k1", {"jpg": b"B", "seg.png": b"M"}),
  ]


@pytest.mark.parametrize("size", [1 << 40, (1 << 88) - 1])
def test_a_header_claiming_an_enormous_size_cuts_only_its_sample(size):
  huge = bytearray(_raw_header("k1.jpg", 0))
  huge[124:136] = b"\x80" + size.to_bytes(11, "big")
  shard = _member("k0.jpg", b"A") + _with_checksum(bytes(huge)) + _member("k2.jpg", b"C") + END
  items = _items(shard)
  assert _complete(items) == [("k0", {"jpg": b"A"})]
  (cut,) = _problems(items)
  assert cut.key == "k1" and "ends inside member k1.jpg" in cut.cut


def test_a_negative_size_is_a_damaged_header():
  negative = bytearray(_raw_header("k1.jpg", 0))
  negative[124:136] = b"\xff" * 12  # base-256 minus one
  shard = (
    _member("a.jpg", b"0")
    + _member("k0.jpg", b"A")
    + _with_checksum(bytes(negative))
    + _member("k2.jpg", b"C")
    + _member("z.jpg", b"9")
  )
  items = _items(shard + END)
  # The samples on either side of the damage may have lost a member to it: cut, not whole.
  assert _complete(items) == [("a", {"jpg": b"0"}), ("z", {"jpg": b"9"})]
  damage, *cut = _problems(items)
  assert not damage.fatal and damage.offset == wt.BLOCK * 4
  assert [(c.key, c.damaged) for c in cut] == [("k0", True), ("k2", True)]


@pytest.mark.parametrize("size", [b"-3", b"lots", b"1e3"])
def test_a_pax_size_that_is_no_size_is_damage(size):
  shard = (
    _member("a.jpg", b"0")
    + _member("k0.jpg", b"A")
    + _pax(size=size)
    + _member("k1.jpg", b"B" * 600)
    + _member("k2.jpg", b"C")
    + _member("z.jpg", b"9")
    + END
  )
  items = _items(shard)
  assert ("a", {"jpg": b"0"}) in _complete(items) and ("z", {"jpg": b"9"}) in _complete(items)
  assert all(key != "k1" for key, _ in _complete(items))
  assert any(isinstance(i, wt.Damage) and not i.fatal for i in items)


def test_a_pax_size_sizes_its_member_not_the_next_extended_header():
  long_name = b"k1.jpg\0"
  shard = (
    _pax(size=b"600")
    + _raw_header("././@LongLink", len(long_name), tarfile.GNUTYPE_LONGNAME)
    + long_name
    + bytes(-len(long_name) % wt.BLOCK)
    + _raw_header("k1.jp", 0)
    + b"B" * 600
    + bytes(-600 % wt.BLOCK)
    + _member("k2.jpg", b"C")
    + END
  )
  items = _items(shard)
  assert _complete(items) == [("k1", {"jpg": b"B" * 600}), ("k2", {"jpg": b"C"})]
  assert _complete(items) == _webdataset(shard)


def test_an_extended_header_over_the_limit_costs_its_member_and_its_neighbours():
  shard = (
    _member("a.jpg", b"0")
    + _member("k0.jpg", b"A")
    + _pax(SCHILY_xattr_user_big=b"x" * (2 << 20))  # a big extended attribute, as bsdtar writes
    + _member("k1.jpg", b"B")
    + _member("k2.jpg", b"C")
    + _member("z.jpg", b"9")
    + END
  )
  items = _items(shard)
  assert _complete(items) == [("a", {"jpg": b"0"}), ("z", {"jpg": b"9"})]
  damage, *cut = _problems(items)
  assert not damage.fatal and "extended header" in damage.reason
  assert [c.key for c in cut] == ["k0", "k2"]  # whose member the skipped one was is unknown
  *whole, cut = _items(shard[: 1 << 20])  # inside it: k0 may have had more members
  assert [w.key for w in whole] == ["a"] and cut.key == "k0"
  assert "the shard ends inside the" in cut.cut


def _gnu_tar() -> Optional[str]:
  tar = shutil.which("tar")
  if tar is None:
    return None
  version = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
  return tar if "GNU tar" in version else None


@pytest.mark.skipif(_gnu_tar() is None, reason="writes sparse members with GNU tar")
@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_sparse_members_are_never_read_and_the_rest_stays_aligned(tmp_path, tar_format):
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "k0.jpg").write_bytes(b"A")
  with open(folder / "k1.jpg", "wb") as f:  # holes between many data regions: in GNU's old
    for region in range(12):  # format, its map needs extension blocks after the header
      f.seek(region * 100_000)
      f.write(b"data")
    f.truncate(1_300_000)
  (folder / "k2.jpg").write_bytes(b"C")
  shard = tmp_path / "sparse.tar"
  subprocess.run(
    [_gnu_tar(), f"--format={tar_format}", "--sparse", "-cf", str(shard), "-C", str(folder)]
    + ["k0.jpg", "k1.jpg", "k2.jpg"],
    check=True,
  )
  items = _items(shard.read_bytes())
  assert not _problems(items)
  assert [i.key for i in items] == ["k0", "k1", "k2"]
  sparse = items[1].members["jpg"]
  assert sparse.name == "k1.jpg" and not sparse.regular and sparse.data is None
  assert items[2].members["jpg"].data == b"C"


def _layout(shard: bytes) -> tuple[list[tuple[str, int]], int]:
  """(key, end of its first member's header) per sample, and where the end marker starts."""
  firsts, end = [], 0
  with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
    for info in tar:
      key = wt.split_name(info.name)[0]
      if not firsts or firsts[-1][0] != key:
        firsts.append((key, info.offset_data))
      end = info.offset_data + info.size + (-info.size % wt.BLOCK)
  return firsts, end


LOOP_ENTRIES = [
  ("k0.jpg", _payload("a", 700)),
  ("k0.seg.png", _payload("m", 10)),
  (f"{LONG_DIR}/k1.jpg", _payload("b", 1000)),
  (f"{LONG_DIR}/k1.seg.png", _payload("n", 5)),
  ("k2.jpg", _payload("c", 513)),
  ("k3.jpg", b""),
]


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_shard_cut_at_any_byte_gives_the_samples_before_the_cut_and_tells_it(tar_format):
  shard = _tar(LOOP_ENTRIES, tar_format)
  whole = _complete(_items(shard))
  assert [key for key, _ in whole] == ["k0", f"{LONG_DIR}/k1", "k2", "k3"]
  firsts, end = _layout(shard)
  for cut in range(len(shard)):
    items = _items(shard[:cut])
    # A sample is whole once the next one's first header is read (or the end marker begun):
    # till then the shard may have held more of it.
    bounds = [first for _, first in firsts[1:]] + [end + 1]
    done = sum(cut >= bound for bound in bounds)
    assert _complete(items) == whole[:done], cut
    problems = _problems(items)
    if done == len(whole):
      assert problems == [], cut
    elif cut < wt.BLOCK:
      assert len(problems) == 1 and problems[0].fatal, cut
    else:
      assert len(problems) == 1 and problems[0].key == whole[done][0] and problems[0].cut, cut


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_damaged_byte_in_any_header_costs_at_most_its_sample_and_their_neighbours(tar_format):
  shard = _tar(LOOP_ENTRIES, tar_format)
  whole = _complete(_items(shard))
  blocks = []  # (offset, the key of the member it describes) of header blocks and their data
  with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
    for info in tar:
      key = wt.split_name(info.name)[0]
      blocks += [(offset, key) for offset in range(info.offset, info.offset_data, wt.BLOCK)]
  assert len(blocks) > len(LOOP_ENTRIES) + 1  # the long name's extended header and its data
  for offset, key in blocks:
    is_header = _header_reads(shard[offset : offset + wt.BLOCK])
    hit = [k for k, _ in whole].index(key)
    others = [sample for i, sample in enumerate(whole) if abs(i - hit) > 1]
    for position in range(wt.BLOCK):
      damaged = bytearray(shard)
      damaged[offset + position] ^= 0x5A
      items = _items(bytes(damaged))
      read = _complete(items)
      assert [s for s in read if s in others] == others, (offset, position)
      if is_header and not _header_reads(damaged[offset : offset + wt.BLOCK]):
        assert any(isinstance(i, wt.Damage) for i in items), (offset, position)


def _header_reads(block) -> bool:
  try:
    tarfile.TarInfo.frombuf(bytes(block), "utf-8", "surrogateescape")
  except tarfile.HeaderError:
    return False
  return True


def test_a_gzip_shard_cut_or_damaged_anywhere_never_raises_and_tells_it():
  shard = _tar(LOOP_ENTRIES)
  whole = _complete(_items(shard))
  packed = gzip.compress(shard, mtime=0)
  assert _complete(_items(packed)) == whole
  for cut in range(len(packed)):
    items = _items(packed[:cut])
    read = _complete(items)
    assert read == whole[: len(read)], cut
    assert len(_problems(items)) == 1, cut  # the gzip stream cut short always shows
  for position in range(len(packed)):
    damaged = bytearray(packed)
    damaged[position] ^= 0x5A
    items = _items(bytes(damaged))
    read = _complete(items)
    if read != whole:
      assert _problems(items), position
    problems = [i for i in _problems(items) if isinstance(i, wt.Damage)]
    if problems and problems[-1].offset == -1:
      assert "could not be read to its end" in problems[-1].reason


def test_a_stream_that_fails_midway_ends_the_shard_with_its_error():
  class Failing(io.BytesIO):
    def read(self, size=-1):
      if self.tell() >= 3 * wt.BLOCK:
        raise ConnectionError("connection reset")
      return super().read(size)

  shard = _tar([("k0.jpg", b"A"), ("k1.jpg", b"B" * 600)])
  items = list(wt.iter_samples(Failing(shard), WANTED, LIMIT))
  assert _complete(items) == [("k0", {"jpg": b"A"})]
  (cut,) = _problems(items)
  assert cut.key == "k1" and "ConnectionError: connection reset" in cut.cut


@pytest.mark.parametrize(
  "tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]
)
def test_a_tar_or_gzipped_tar_without_a_telling_name_is_sniffed_as_webdataset(tar_format):
  shard = _tar([("k" * 60 + "/" + "k" * 60 + ".jpg", os.urandom(2000))], tar_format)
  for data in (shard, gzip.compress(shard)):
    kind = sources.input_kind(
      "/d/train-00000-of-00004", constants.FORMAT_AUTO, open_file=lambda d=data: io.BytesIO(d)
    )
    assert kind == constants.FORMAT_WEBDATASET
  for other in (gzip.compress(b"not a tar" * 100), b"\x1f\x8b" + os.urandom(600)):
    kind = sources.input_kind(
      "/d/train-00000-of-00004", constants.FORMAT_AUTO, open_file=lambda d=other: io.BytesIO(d)
    )
    assert kind == constants.FORMAT_IMAGES


def _damaged(member: bytes) -> bytes:
  """`member` with its header's checksum broken."""
  return member[:148] + b"99999\0 " + member[155:]


def test_damage_inside_a_sample_cuts_it_and_the_next_sample_is_whole():
  """k0's mask header is damaged: k0 may have lost its mask, so it is cut (damaged), not
  segmented without ground truth nor told again as a second k0; k1 is read whole."""
  shard = (
    _member("k0.jpg", b"A")
    + _damaged(_member("k0.seg.png", b"M"))
    + _member("k0.json", b"{}")
    + _member("k1.jpg", b"B")
    + bytes(2 * wt.BLOCK)
  )
  items = _items(shard)
  damage, cut = _problems(items)
  assert isinstance(damage, wt.Damage) and not damage.fatal and damage.offset == 2 * wt.BLOCK
  assert cut.key == "k0" and cut.damaged and cut.cut == damage.reason
  assert _complete(items) == [("k1", {"jpg": b"B"})]


def test_damage_between_samples_cuts_both_neighbours():
  """The damaged header is k1's image's, which nothing after it can tell: k0 (it may have had
  one more member) and k1 (it may have lost its first) are both cut, not taken as whole."""
  shard = (
    _member("k0.jpg", b"A")
    + _damaged(_member("k1.jpg", b"B"))
    + _member("k1.seg.png", b"M")
    + bytes(2 * wt.BLOCK)
  )
  items = _items(shard)
  damage, k0, k1 = items
  assert isinstance(damage, wt.Damage) and not damage.fatal
  assert (k0.key, k0.damaged, k0.cut) == ("k0", True, damage.reason)
  assert (k1.key, k1.damaged) == ("k1", True) and "jpg" not in k1.members
