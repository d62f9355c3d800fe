"""The HTML report: parses, every image inlined and decodable, nothing referenced outside."""

import base64
import html.parser
import io
import os

import pytest
from PIL import Image

from segbeam import cli
from segbeam.commands import pack
from segbeam.pipeline import tfrecord
from segbeam.results import output as output_lib
from segbeam.results import report
from tests import accounting
from tests import synthetic


class _Collector(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.tags, self.references, self.text = [], [], []

  def handle_starttag(self, tag, attrs):
    self.tags.append(tag)
    self.references += [(tag, v) for k, v in attrs if k in ("src", "href") and v is not None]

  def handle_data(self, data):
    self.text.append(data)


def _parse(page):
  collector = _Collector()
  collector.feed(page)
  collector.close()
  return collector


def _check_self_contained(collector, expected_images):
  images = [v for tag, v in collector.references if tag == "img"]
  assert len(images) == expected_images
  for src in images:
    assert src.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as picture:
      assert picture.format == "JPEG" and max(picture.size) <= report.THUMBNAIL
  assert all(v.startswith(("data:", "#")) for _, v in collector.references)


def test_report_of_a_run(small_run, tmp_path, capsys):
  target = tmp_path / "report.html"
  assert cli.main(["report", small_run, "--out", str(target)]) == 0
  collector = _parse(target.read_text())
  _check_self_contained(collector, expected_images=6)
  assert collector.tags.count("svg") == 3  # one histogram per class
  text = " ".join(collector.text)
  assert "notes.jpg" in text and "UnsupportedFormat" in text
  assert "Against ground truth" not in text
  assert "source unreadable" not in text


def test_report_with_ground_truth_reads_sources_back_from_shards(tiny_export, pet_folder, tmp_path):
  images, masks, _ = pet_folder
  prefix = str(tmp_path / "shards")
  pack.pack(images, prefix, masks_dir=masks, num_shards=2)
  output = str(tmp_path / "out")
  accounting.run_and_account(
    ["--input", prefix + "-*", "--output", output, "--model", tiny_export[0]], inputs_seen=6
  )
  page = report.build_report(output_lib.RunOutput(output), samples=3)
  collector = _parse(page)
  _check_self_contained(collector, expected_images=3 + 3)  # samples + worst images
  text = " ".join(collector.text)
  assert "Against ground truth" in text and "source unreadable" not in text


def test_report_refuses_an_unfinished_run(small_run, tmp_path, capsys):
  import shutil

  broken = tmp_path / "partial"
  shutil.copytree(small_run, broken)
  os.remove(broken / "manifest.json")
  assert cli.main(["report", str(broken), "--out", str(tmp_path / "r.html")]) == 2
  assert "did not complete" in capsys.readouterr().err
  assert not (tmp_path / "r.html").exists()


def test_read_source_of_a_record_in_a_shard_named_without_extension(tmp_path):
  shard = tmp_path / "train-00000-of-00001"
  shard.write_bytes(
    tfrecord.encode_record(pack.make_example("a.jpg", b"first"))
    + tfrecord.encode_record(pack.make_example("b.jpg", b"second"))
  )
  assert report.read_source(f"{shard}#1") == b"second"
  (tmp_path / "photo#2").write_bytes(b"a file named so")  # not a shard: the file itself
  assert report.read_source(str(tmp_path / "photo#2")) == b"a file named so"


def test_read_source_of_a_missing_record(tmp_path):
  with pytest.raises(FileNotFoundError):
    report.read_source(str(tmp_path / "none.tfrecord") + "#3")


def test_overlay_turns_the_photo_upright_like_the_run_did():
  import base64
  import io

  import numpy as np
  from PIL import Image

  from segbeam.results import report

  photo = io.BytesIO()
  Image.new("RGB", (40, 20), (250, 0, 0)).save(photo, format="PNG")  # landscape as stored
  mask = io.BytesIO()
  Image.fromarray(np.zeros((40, 20), np.uint8), "L").save(mask, format="PNG")  # portrait mask

  def red_of(uri: str) -> float:
    data = base64.b64decode(uri.split(",", 1)[1])
    return float(np.asarray(Image.open(io.BytesIO(data)), np.float32)[..., 0].mean())

  upright = red_of(report.overlay(photo.getvalue(), mask.getvalue(), exif_orientation=6))
  unturned = red_of(report.overlay(photo.getvalue(), mask.getvalue()))  # sizes disagree
  assert upright > unturned + 100  # the photo shows through only when turned to the mask


@pytest.mark.parametrize("shard_format", ["parquet", "webdataset"])
def test_read_source_of_a_parquet_row_and_a_tar_sample(tmp_path, shard_format):
  """The report shows the image behind a Parquet row or a WebDataset sample, as `pack` wrote
  them (row groups skipped by their footer counts)."""
  images = tmp_path / "images"
  images.mkdir()
  photos = {}
  for i in range(3):
    photos[f"p{i}"] = synthetic.encode(synthetic.pet_scene(20 + i, 16, i)[0], "PNG")
    (images / f"p{i}.png").write_bytes(photos[f"p{i}"])
  (shard,) = pack.pack(str(images), str(tmp_path / "s"), shard_format=shard_format).shards
  where = {"parquet": "2", "webdataset": "p2"}[shard_format]
  assert report.read_source(f"{shard}#{where}") == photos["p2"]
  with pytest.raises(FileNotFoundError):
    report.read_source(f"{shard}#{ {'parquet': '9', 'webdataset': 'p9'}[shard_format] }")


def test_read_source_takes_the_runs_image_column(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  path = str(tmp_path / "two.parquet")
  pq.write_table(pa.table({"thumb": [b"small"], "full": [b"large"]}), path)
  options = {"image_column": "full"}
  assert report.read_source(f"{path}#0", options) == b"large"
  with pytest.raises(Exception, match="--image-column"):
    report.read_source(f"{path}#0")  # two image columns: the run had to say which


def test_read_source_of_a_sample_whose_key_holds_a_hash(tmp_path):
  import tarfile

  shard = tmp_path / "with#hash.tar"
  with tarfile.open(shard, "w") as tar:
    for name, data in (("a#b.jpg", b"first"), ("c.jpg", b"second")):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  assert report.read_source(f"{shard}#a#b") == b"first"
  assert report.read_source(f"{shard}#c") == b"second"
