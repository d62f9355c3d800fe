"""Tiled inference through `SegmentImages(tile=...)` on Beam's runner: images that fit one tile
keep today's masks, a fully convolutional network tiled agrees with it run on the whole photo,
a mosaic of photos scores as the photos one by one, and settings or images no model can run
give a clear error, never a crash."""

import glob
import io
import os

import apache_beam as beam
import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from PIL import Image

from segbeam.model import config as config_lib
from segbeam.model import export as export_lib
from segbeam.model import labels
from segbeam.model import preprocessing
from segbeam.pipeline import elements
from segbeam.pipeline import tiled_inference as tiled
from segbeam.pipeline import tiling
from segbeam.pipeline import transforms
from tests import synthetic


def _segment(tmp_path, records, model_dir, name="out", **options):
  """Rows (by image id) and failures of `records` through SegmentImages, written and read
  back with segbeam's writers."""
  output = str(tmp_path / name)
  segment = transforms.SegmentImages(model_dir, run_id="tiles", distributed=False, **options)
  with TestPipeline() as pipeline:
    segmented = pipeline | beam.Create(records) | segment
    _ = segmented.rows | transforms.WriteSegments(output, segment.metadata.class_names)
    _ = segmented.failures | transforms.WriteErrors(output, segment.run_id)
  rows = {}
  for path in glob.glob(os.path.join(output, "segments", "*.parquet")):
    for row in pq.read_table(path).to_pylist():
      rows[row["image_id"]] = row
  failures = {}
  for path in glob.glob(os.path.join(output, "errors", "*.parquet")):
    for row in pq.read_table(path).to_pylist():
      failures[row["image_id"]] = row
  return rows, failures


def _mask(row) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(row["mask_png"])))


def _record(name: str, data: bytes) -> elements.ImageRecord:
  return elements.ImageRecord(name, f"memory://{name}", data)


def _png(width: int, height: int, seed: int) -> bytes:
  return synthetic.encode(synthetic.pet_scene(width, height, seed)[0], "PNG")


def test_images_the_model_takes_whole_get_todays_masks(tiny_export, tmp_path):
  """With `tile="auto"` (the 32-pixel input of the tiny model), an image no larger than a tile
  is segmented as without tiles; a larger one is tiled, at its full size."""
  export_dir, _ = tiny_export
  small = [_record(f"s{i}.png", _png(w, h, i)) for i, (w, h) in enumerate([(30, 20), (32, 32)])]
  large = _record("large.png", _png(150, 90, 7))
  today, _ = _segment(tmp_path, small, export_dir, "whole")
  rows, failures = _segment(tmp_path, [*small, large], export_dir, "tiled", tile="auto")
  assert not failures and sorted(rows) == ["large.png", "s0.png", "s1.png"]
  for name, row in today.items():
    assert rows[name] == row
  assert _mask(rows["large.png"]).shape == (90, 150)
  assert rows["large.png"]["width"] == 150 and rows["large.png"]["height"] == 90


def test_every_other_image_is_segmented_at_the_runs_scale(tiny_export, tmp_path):
  """An image larger than the model's input but within one tile, and with --scale any image,
  is one tile at the run's scale (padded), not resized to the model's input: a run segments
  every image at one scale."""
  settings = tiled.TileSettings.resolve("64", None, "centre", 1.0, tiny_export[1].serving_config)
  assert settings.whole(32, 32) and not settings.whole(33, 32) and not settings.whole(64, 64)
  scaled = tiled.TileSettings.resolve("64", None, "centre", 0.5, tiny_export[1].serving_config)
  assert not scaled.whole(20, 20)
  record = _record("mid.png", _png(60, 50, 3))
  today, _ = _segment(tmp_path, [record], tiny_export[0], "whole")
  rows, failures = _segment(tmp_path, [record], tiny_export[0], "tiled", tile=64)
  assert not failures and _mask(rows["mid.png"]).shape == (50, 60)
  assert rows["mid.png"]["mask_png"] != today["mid.png"]["mask_png"]


@pytest.fixture(scope="module")
def local_network_export(tmp_path_factory):
  """An export of a small, fully convolutional U-Net (two halvings, receptive field under 16
  pixels each way), exported as segbeam exports its own: tiles of any multiple of 32."""
  keras.utils.set_random_seed(3)
  layers = keras.layers
  image = keras.Input((None, None, 3))
  x = layers.Rescaling(1 / 127.5, offset=-1)(image)
  full = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
  half = layers.Conv2D(16, 3, padding="same", activation="relu")(layers.MaxPooling2D()(full))
  quarter = layers.Conv2D(16, 3, padding="same", activation="relu")(layers.MaxPooling2D()(half))
  up = layers.Concatenate()([layers.UpSampling2D()(quarter), half])
  up = layers.Conv2D(8, 3, padding="same", activation="relu")(up)
  up = layers.Concatenate()([layers.UpSampling2D()(up), full])
  # Scaled so that its classes are told apart as a trained network's are: an untrained one
  # scores them within a few hundredths everywhere, where float rounding alone decides.
  logits = layers.Rescaling(8.0)(layers.Conv2D(3, 1)(up))
  network = keras.Model(image, logits)
  config = config_lib.preset("mobilenetv2", input_size=64, num_classes=3)
  export_dir = str(tmp_path_factory.mktemp("local_network") / "export")
  export_lib.export_model(
    network, config, export_dir, label_map=labels.OXFORD_PET_TRIMAP, name="local"
  )
  return export_dir


def _whole_image_mask(export_dir: str, pixels: np.ndarray, plan: tiling.TilePlan) -> np.ndarray:
  """The network run once on the whole image (edge-padded to where the tiles reach, as they
  are), its argmax at the image's size."""
  padded = np.pad(
    pixels,
    ((0, plan.padded_height - plan.height), (0, plan.padded_width - plan.width), (0, 0)),
    mode="edge",
  )
  probabilities = export_lib.LoadedExport(export_dir).predict_pixels(padded[None])[0]
  return np.argmax(probabilities[: plan.height, : plan.width], axis=-1)


@pytest.mark.parametrize("blend", ["centre", "gaussian"])
def test_a_fully_convolutional_network_tiled_agrees_with_it_on_the_whole_photo(
  local_network_export, shared_data, tmp_path, blend
):
  names = ["Abyssinian_1.jpg", "Bengal_150.jpg", "american_bulldog_13.jpg"]
  records = []
  for name in names:
    with open(os.path.join(shared_data, "images", name), "rb") as f:
      records.append(_record(name, f.read()))
  rows, failures = _segment(
    tmp_path, records, local_network_export, tile="64", tile_overlap=32, tile_blend=blend
  )
  assert not failures
  settings = tiled.TileSettings(64, 32, blend)
  for record in records:
    pixels = preprocessing.decode_image(record.data, 3).numpy()
    plan = settings.plan(*pixels.shape[:2])
    assert plan.count() > 20  # tiled, not whole
    expected = _whole_image_mask(local_network_export, pixels, plan)
    agreement = np.mean(_mask(rows[record.image_id]) == expected)
    assert agreement >= 0.999, (record.image_id, agreement)


@pytest.mark.parametrize("shape", [(1, 50_000), (50_000, 1)], ids=["1x50000", "50000x1"])
def test_an_image_one_pixel_thin_gets_a_mask_of_its_size(tiny_export, tmp_path, shape):
  strip = np.tile(np.arange(256, dtype=np.uint8), 200)[:50_000]
  pixels = np.stack([strip, strip[::-1], np.full_like(strip, 90)], axis=-1).reshape(*shape, 3)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  rows, failures = _segment(
    tmp_path, [_record("strip.png", buffer.getvalue())], tiny_export[0], tile="64"
  )
  assert not failures
  row = rows["strip.png"]
  assert (row["height"], row["width"]) == shape
  assert _mask(row).shape == shape
  assert sum(row[f"pixels_{c}"] for c in ("pet", "background", "border")) == 50_000


def test_a_scaled_run_gives_masks_at_native_size_with_only_class_values(tiny_export, tmp_path):
  rows, failures = _segment(
    tmp_path, [_record("big.png", _png(301, 203, 4))], tiny_export[0], tile="64", scale=0.5
  )
  assert not failures
  mask = _mask(rows["big.png"])
  assert mask.shape == (203, 301)
  assert set(np.unique(mask)) <= {0, 1, 2}


def test_two_records_of_one_id_are_stitched_apart(tiny_export, tmp_path):
  """A user's pipeline may hand on two records of the same id: each gets its own mask."""
  records = [_record("same.png", _png(150, 90, 1)), _record("same.png", _png(90, 170, 2))]
  output = str(tmp_path / "out")
  segment = transforms.SegmentImages(tiny_export[0], tile="64", distributed=False)
  with TestPipeline() as pipeline:
    rows = (pipeline | beam.Create(records) | segment).rows
    _ = rows | transforms.WriteSegments(output, segment.metadata.class_names)
  (path,) = glob.glob(os.path.join(output, "segments", "*.parquet"))
  sizes = sorted(_mask(row).shape for row in pq.read_table(path).to_pylist())
  assert sizes == [(90, 150), (170, 90)]


def test_an_image_whose_pixels_do_not_decode_fails_alone(tiny_export, tmp_path):
  whole = _png(200, 150, 5)
  broken = whole[: len(whole) // 2]  # the header passes validation; the pixels are cut short
  rows, failures = _segment(
    tmp_path,
    [_record("broken.png", broken), _record("fine.png", whole)],
    tiny_export[0],
    tile="64",
  )
  assert sorted(rows) == ["fine.png"]
  assert failures["broken.png"]["stage"] == elements.STAGE_DECODE


def test_a_failed_tile_fails_its_image_with_where_it_was():
  info = elements.ImageInfo("a.png", "memory://a.png", "png", 200, 100)
  settings = tiled.TileSettings(64, 16)
  plan = settings.plan(100, 200)
  tiles = list(plan.tiles())
  keys = [tiled.TileKey("a.png#1", 100, 200, t, i) for i, t in enumerate(tiles)]
  from segbeam.pipeline import inference

  failure = inference.InferenceFailure(elements.STAGE_INFER, "InvalidArgumentError", "NaN seen")
  values = [tiled.ImagePlan(info, 100, 200, len(tiles))]
  probabilities = np.full((64, 64, 3), 1 / 3, np.float32)
  for key in keys:
    if key.index == 4:
      values.append(tiled.TileFailure(key, failure))
    else:
      values.append(tiling.CentreStitcher.piece(plan, key.tile, probabilities))
  context = _context()
  (output,) = list(tiled.StitchImages(context, settings, 3).process(("a.png#1", values)))
  assert output.tag == elements.FAILURES
  failed = output.value
  assert (failed.image_id, failed.stage, failed.error_type) == (
    "a.png",
    "infer",
    "InvalidArgumentError",
  )
  assert f"1 of its {len(tiles)} tiles failed; tile 5" in failed.message
  assert "NaN seen" in failed.message


def _context():
  from segbeam.pipeline import rows as rows_lib

  return rows_lib.RunContext("m", "v", ("pet", "background", "border"), "run")


@pytest.mark.parametrize(
  "options, message",
  [
    (dict(tile="48"), "--tile 48: the model takes tiles of any multiple of 32"),
    (dict(tile="0"), "--tile must be a size in pixels or 'auto'"),
    (dict(tile="x"), "--tile must be a size in pixels or 'auto'"),
    (dict(tile="64", tile_overlap=64), "--tile-overlap 64 must be smaller than the tile"),
    (dict(tile="auto", tile_overlap=40), "--tile-overlap 40 must be smaller than the tile"),
    (dict(tile="64", scale=0), "--scale must be more than 0 and at most 1"),
    (dict(tile="64", scale=1.5), "--scale must be more than 0 and at most 1"),
    (dict(scale=0.5), "--scale is for tiles: it needs --tile"),
    (dict(max_tiled_pixels=10), "--max-tiled-pixels is for tiles: it needs --tile"),
    (dict(tile="64", tile_blend="median"), "--tile-blend must be one of centre, gaussian"),
  ],
)
def test_settings_no_model_can_run_are_refused_when_the_pipeline_is_built(
  tiny_export, options, message
):
  with pytest.raises(ValueError, match=message):
    transforms.SegmentImages(tiny_export[0], **options)


def test_a_model_with_a_fixed_input_takes_tiles_of_its_size_only():
  """The embedded default (written before tiles) is served at its 128x128 input only."""
  default = transforms.SegmentImages(None, tile="auto")
  assert default._tiles.size == 128
  with pytest.raises(ValueError, match=r"--tile 256: .* 128x128 only"):
    transforms.SegmentImages(None, tile="256")


def _photo_and_trimap(shared_data: str, name: str) -> tuple[np.ndarray, np.ndarray]:
  photo = Image.open(os.path.join(shared_data, "images", name + ".jpg")).convert("RGB")
  trimap = Image.open(os.path.join(shared_data, "trimaps", name + ".png"))
  return np.asarray(photo), np.asarray(trimap)


def _encoded(pixels: np.ndarray, image_format: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=image_format)
  return buffer.getvalue()


def _mean_iou(rows) -> float:
  """Mean IoU over the classes, from the rows' ground-truth counts summed over images."""
  classes = ("pet", "background", "border")
  intersections = [sum(r[f"gt_intersection_{c}"] for r in rows) for c in classes]
  unions = [sum(r[f"gt_union_{c}"] for r in rows) for c in classes]
  return float(np.mean([i / u for i, u in zip(intersections, unions)]))


def test_a_mosaic_of_photos_scores_as_the_photos_one_by_one(shared_data, tmp_path):
  """Sixteen photos and their trimaps laid out in one large image, segmented tiled at half
  resolution by the embedded model, score the mean IoU of the photos segmented one by one,
  tiled at the same scale: the mosaic's many tiles, inferred in batches with other images'
  and brought back together by key, land where they belong.

  Each photo sits in the middle of a gray cell of the mosaic (its trimap's gray unmapped, so
  ignored), and is segmented alone on its cell: the embedded model's prediction at a pixel
  depends on all of its tile, so what a tile reaching past the photo sees must be the same
  both ways, gray. Cells are whole tile strides at half size (768 = 2 x 4 x 96), so the
  tiles over a photo are the same both ways too."""
  with open(os.path.join(shared_data, "val.txt")) as f:
    names = [line.split()[0] for line in f if line.strip()]
  pairs = []
  for name in names:
    photo, trimap = _photo_and_trimap(shared_data, name)
    if max(photo.shape[:2]) <= 500 and min(photo.shape[:2]) >= 300:
      pairs.append((name, photo, trimap))
    if len(pairs) == 16:
      break
  cell = 768
  mosaic = np.full((4 * cell, 4 * cell, 3), 127, np.uint8)
  truth = np.zeros((4 * cell, 4 * cell), np.uint8)
  records = []
  for i, (name, photo, trimap) in enumerate(pairs):
    alone = np.full((cell, cell, 3), 127, np.uint8)
    alone_truth = np.zeros((cell, cell), np.uint8)
    height, width = trimap.shape
    top, left = (cell - height) // 4 * 2, (cell - width) // 4 * 2  # even: on the half grid
    alone[top : top + height, left : left + width] = photo
    alone_truth[top : top + height, left : left + width] = trimap
    row, column = (i // 4) * cell, (i % 4) * cell
    mosaic[row : row + cell, column : column + cell] = alone
    truth[row : row + cell, column : column + cell] = alone_truth
    records.append(
      elements.ImageRecord(name, name, _encoded(alone, "PNG"), label=_encoded(alone_truth, "PNG"))
    )
  mosaic_record = elements.ImageRecord(
    "mosaic", "mosaic", _encoded(mosaic, "PNG"), label=_encoded(truth, "PNG")
  )
  options = dict(tile="auto", scale=0.5, label_map="oxford-pet-trimap")
  one_by_one, failures = _segment(tmp_path, records, None, "photos", **options)
  assert not failures and len(one_by_one) == 16
  tiled_mosaic, failures = _segment(tmp_path, [mosaic_record], None, "mosaic", **options)
  assert not failures
  (row,) = tiled_mosaic.values()
  assert (row["width"], row["height"]) == (4 * cell, 4 * cell)
  assert row["gt_pixels"] == sum(r["gt_pixels"] for r in one_by_one.values())
  assert abs(_mean_iou([row]) - _mean_iou(one_by_one.values())) <= 0.01


def test_a_model_trained_on_crops_scores_tiled_at_least_as_it_does_resized(tmp_path, capsys):
  """`segbeam train --crop` on 512 x 512 images whose classes differ only in a fine texture,
  then the export run on more such images tiled (at the resolution it was trained at) and whole
  (resized to its input): the tiled masks, full size, score at least as well."""
  from segbeam import cli

  images, masks = tmp_path / "images", tmp_path / "masks"
  images.mkdir()
  masks.mkdir()
  names = []
  for seed in range(12):
    image, trimap = synthetic.texture_scene(512, seed)
    names.append(f"t{seed:02d}")
    Image.fromarray(image).save(images / f"{names[-1]}.png")
    Image.fromarray(trimap).save(masks / f"{names[-1]}.png")
  (tmp_path / "train.txt").write_text("\n".join(names[:8]))
  (tmp_path / "val.txt").write_text("\n".join(names[8:10]))
  argv = ["train", "--images", str(images), "--masks", str(masks), "--output", str(tmp_path)]
  argv += ["--names", str(tmp_path / "train.txt"), "--val-names", str(tmp_path / "val.txt")]
  argv += ["--crop", "64", "--epochs", "40", "--batch-size", "8", "--learning-rate", "0.003"]
  assert cli.main(argv) == 0
  capsys.readouterr()
  export_dir = str(tmp_path / "export")
  records = [
    elements.ImageRecord(
      name,
      name,
      (images / f"{name}.png").read_bytes(),
      label=(masks / f"{name}.png").read_bytes(),
    )
    for name in names[10:]
  ]
  whole, failures = _segment(tmp_path, records, export_dir, "whole")
  assert not failures
  tiled_rows, failures = _segment(tmp_path, records, export_dir, "tiled", tile="auto")
  assert not failures
  for row in tiled_rows.values():
    assert _mask(row).shape == (512, 512)
  assert _mean_iou(tiled_rows.values()) >= _mean_iou(whole.values())


def test_tiles_spread_over_workers_give_the_same_rows(tiny_export, tmp_path):
  """With `distributed` the tiles go through a Reshuffle, so that one image's tiles are
  inferred on many workers; the rows are the same as without."""
  records = [_record(f"l{i}.png", _png(200, 130 + 10 * i, i)) for i in range(3)]
  local, _ = _segment(tmp_path, records, tiny_export[0], "local", tile="64")
  options = dict(tile="64", run_id="tiles", distributed=True)
  output = str(tmp_path / "spread")
  segment = transforms.SegmentImages(tiny_export[0], **options)
  with TestPipeline() as pipeline:
    rows = (pipeline | beam.Create(records) | segment).rows
    _ = rows | transforms.WriteSegments(output, segment.metadata.class_names)
  (path,) = glob.glob(os.path.join(output, "segments", "*.parquet"))
  spread = {row["image_id"]: row for row in pq.read_table(path).to_pylist()}
  assert spread == local


def _export_failing_on_blue_tiles(export_dir: str) -> str:
  """An export whose forward pass fails (CheckNumerics) on a batch holding a tile of pure
  blue, as a model fails on an image it cannot take; tiles of any multiple of 32."""
  import dataclasses

  import tensorflow as tf

  from segbeam.model import contract

  keras.utils.set_random_seed(5)
  layer = keras.layers.Conv2D(3, 1)
  layer.build((None, None, None, 3))

  def probabilities(pixels):
    blue = tf.reduce_min(pixels[..., 2] - pixels[..., 0], axis=[1, 2]) > 200
    poison = tf.where(blue, float("inf"), 0.0)
    checked = tf.debugging.check_numerics(poison, "the model's forward pass failed")
    return tf.nn.softmax(layer(pixels / 255.0), axis=-1) + tf.reduce_sum(checked) * 0.0

  config = config_lib.preset("mobilenetv2", input_size=32, num_classes=3)
  serving = dataclasses.replace(contract.unet_serving_config(config), tile_multiple=32)
  export_lib.write_archive(export_dir, probabilities, serving, track=[layer])
  export_lib.write_metadata(
    export_dir,
    contract.ModelMetadata(
      name="fails-on-blue",
      version="sha256:0000000000000001",
      config=contract.as_json(config.to_dict()),
      label_map=contract.as_json(labels.OXFORD_PET_TRIMAP.to_dict()),
      serving=contract.as_json(serving.to_dict()),
    ),
  )
  return export_dir


def test_one_image_whose_every_tile_fails_is_one_error_row_not_a_stopped_run(tmp_path):
  """Its 289 tiles fail in the model, more than the breaker's 24 images in a row at batch 8:
  they are one image's failure, counted once, and the run goes on."""
  export_dir = _export_failing_on_blue_tiles(str(tmp_path / "export"))
  blue = np.zeros((400, 400, 3), np.uint8)
  blue[..., 2] = 255
  records = [_record("blue.png", _encoded(blue, "PNG"))]
  records += [_record(f"fine{i}.png", _png(150, 90, i)) for i in range(5)]
  rows, failures = _segment(tmp_path, records, export_dir, tile="auto", batch_size=8)
  assert sorted(rows) == [f"fine{i}.png" for i in range(5)]
  failed = failures["blue.png"]
  assert failed["stage"] == elements.STAGE_INFER
  assert "289 of its 289 tiles failed" in failed["message"]
  assert "the model's forward pass failed" in failed["message"]


def test_tile_settings_from_python_are_checked_as_the_command_lines(tiny_export):
  with pytest.raises(ValueError, match="--tile-overlap must be a whole number of pixels"):
    transforms.SegmentImages(tiny_export[0], tile="64", tile_overlap=2.5)
  assert transforms.SegmentImages(tiny_export[0], tile=64)._tiles.size == 64
