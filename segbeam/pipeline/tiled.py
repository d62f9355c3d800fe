"""Tiled inference in Beam (`segbeam run --tile`): large images segmented at full resolution in
overlapping tiles, stitched back into one mask per image.

(ImageInfo, bytes) -> `CutTiles` (decoded once, scaled, cut; the image's `ImagePlan` beside
its tiles) -> [Reshuffle, where the runner spreads work: tiles of one image go to many
workers] -> RunInference (`inference.TileHandler`: the export's `predict_pixels`, tiles of
every image batched together) -> `ReducePieces` (each tile's prediction made a small
`tiling.Piece` where it was inferred) -> grouped by image id with its plan -> `StitchImages`
(the mask at full resolution, then the usual row, `rows.mask_row`).

What is held per image is its compressed pieces and one mask being assembled (a band of
probabilities more for Gaussian blending); what is held per worker for inference is a batch of
tiles. The geometry and the stitchers are `tiling`'s.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import RunInference
from PIL import Image

from segbeam import constants
from segbeam import messages
from segbeam import options as options_lib
from segbeam.model import config as config_lib
from segbeam.pipeline import elements
from segbeam.pipeline import inference
from segbeam.pipeline import progress
from segbeam.pipeline import rows as rows_lib
from segbeam.pipeline import tiling

PLANS = "plans"


@dataclasses.dataclass(frozen=True)
class TileSettings:
  """How images are tiled, resolved against the model (`resolve`).

  Attributes:
    size: the tiles' side in pixels of the image as segmented (after `scale`).
    overlap: pixels each tile overlaps its neighbours by.
    blend: `constants.BLEND_CENTRE` or `constants.BLEND_GAUSSIAN` (`tiling`'s stitchers).
    scale: the fraction of native resolution the image is segmented at.
    channels: the model's input channels.
  """

  size: int
  overlap: int
  blend: str = constants.BLEND_CENTRE
  scale: float = 1.0
  channels: int = 3

  @classmethod
  def resolve(
    cls,
    tile: str,
    overlap: Optional[int],
    blend: str,
    scale: float,
    serving: config_lib.ServingConfig,
  ) -> "TileSettings":
    """`--tile`, `--tile-overlap`, `--tile-blend` and `--scale` for a model served as
    `serving`; raises ValueError for tiles the model cannot take."""
    options_lib.check(tile=tile, tile_overlap=overlap, tile_blend=blend, scale=scale)
    if tile == constants.TILE_AUTO:
      if serving.input_height != serving.input_width:
        raise ValueError(
          f"--tile auto: the model's input is {serving.input_width}x{serving.input_height}, "
          "and tiles are square; give --tile SIZE"
        )
      size = serving.input_height
    else:
      size = int(tile)
    if not serving.takes_tile(size):
      takes = (
        f"any multiple of {serving.tile_multiple}"
        if serving.tile_multiple
        else f"{serving.input_height}x{serving.input_width} only (its pixels signature is fixed: "
        "--tile auto)"
      )
      raise ValueError(f"--tile {size}: the model takes tiles of {takes}")
    overlap = size // 4 if overlap is None else overlap
    options_lib.check_overlap(size, overlap)
    return cls(size, overlap, blend, scale, serving.channels)

  def scaled(self, width: int, height: int) -> tuple[int, int]:
    """(width, height) of an image of `width` x `height` at `scale`; at least 1 pixel."""
    return max(1, round(width * self.scale)), max(1, round(height * self.scale))

  def fits(self, width: int, height: int) -> bool:
    """Whether the image fits one tile once scaled: then it is segmented whole, as without
    tiles."""
    scaled_width, scaled_height = self.scaled(width, height)
    return scaled_width <= self.size and scaled_height <= self.size

  @property
  def align(self) -> int:
    """Tile origins are multiples of the U-Net's stride where the tile is (`tiling.TilePlan`)."""
    stride = config_lib.BOTTLENECK_STRIDE
    return stride if self.size % stride == 0 else 1

  def plan(self, height: int, width: int) -> tiling.TilePlan:
    return tiling.TilePlan(height, width, self.size, self.overlap, align=self.align)


@dataclasses.dataclass(frozen=True)
class ImagePlan:
  """What the stitching needs to know of an image besides its tiles' pieces.

  Attributes:
    info: the image, as validated (its size native).
    height, width: its size as segmented (after the scale).
    tiles: how many pieces make its mask.
  """

  info: elements.ImageInfo
  height: int
  width: int
  tiles: int


@dataclasses.dataclass(frozen=True)
class TileKey:
  """A tile's inference key: its image, the image's size as segmented, and its place.

  Attributes:
    image: the key its image's pieces are grouped by: its id and a token of its own, since
      a pipeline of a user's may hand on two records of the same id.
    index, count: the tile's place among its image's `count` tiles, row by row.
  """

  image: str
  height: int
  width: int
  tile: tiling.Tile
  index: int
  count: int


@dataclasses.dataclass(frozen=True)
class TileFailure:
  """A tile the model failed on; its image fails with it."""

  key: TileKey
  failure: inference.InferenceFailure


def decode_pixels(data: bytes, channels: int) -> np.ndarray:
  """The image's pixels, uint8 [height, width, channels], decoded as the serving graph decodes
  (16-bit PNGs brought to 8 bits as it does); validation has turned what it must upright."""
  decoded = tf.io.decode_image(data, channels=channels, expand_animations=False)
  return decoded.numpy()


def scale_pixels(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
  """`pixels` resized to `width` x `height`, bilinear with antialiasing (Pillow widens its
  filter when it shrinks), on uint8 so that a large image is not widened to floats."""
  if pixels.shape[:2] == (height, width):
    return pixels
  image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
  return resized.reshape(height, width, pixels.shape[-1])


class SplitBySize(beam.DoFn):
  """(ImageInfo, bytes) -> the same, on the main output where the image fits one tile (it is
  segmented whole, as without tiles), on TILED where it does not."""

  TILED = "tiled"

  def __init__(self, settings: TileSettings):
    self._settings = settings

  def process(self, element: tuple[elements.ImageInfo, bytes]) -> Iterator:
    info, _ = element
    if self._settings.fits(info.width, info.height):
      yield element
    else:
      yield beam.pvalue.TaggedOutput(self.TILED, element)


class CutTiles(beam.DoFn):
  """(ImageInfo, bytes) -> (TileKey, uint8 tile) per tile, and (`TileKey.image`, ImagePlan)
  on PLANS; or a Failure on FAILURES where the image does not decode."""

  def __init__(self, settings: TileSettings):
    self._settings = settings
    self._failed = progress.Counter(progress.FAILED)
    self._tiles = progress.Counter(progress.TILES_CUT)

  def process(self, element: tuple[elements.ImageInfo, bytes]) -> Iterator:
    info, data = element
    settings = self._settings
    try:
      pixels = decode_pixels(data, settings.channels)
    except Exception as error:  # undecodable bytes: this image's failure
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure.from_exception(
          info.image_id, info.source, elements.STAGE_DECODE, error, info.filename
        ),
      )
      return
    if pixels.shape[:2] != (info.height, info.width):
      self._failed.inc()
      yield beam.pvalue.TaggedOutput(
        elements.FAILURES,
        elements.Failure(
          info.image_id,
          info.source,
          elements.STAGE_DECODE,
          "SizeMismatch",
          f"decoded {pixels.shape[1]}x{pixels.shape[0]}, the header declares "
          f"{info.width}x{info.height}",
          info.filename,
        ),
      )
      return
    width, height = settings.scaled(info.width, info.height)
    pixels = scale_pixels(pixels, width, height)
    plan = settings.plan(height, width)
    count = plan.count()
    self._tiles.inc(count)
    image = f"{info.image_id}#{uuid.uuid4().hex}"
    yield beam.pvalue.TaggedOutput(PLANS, (image, ImagePlan(info, height, width, count)))
    for index, tile in enumerate(plan.tiles()):
      # A copy: a view would keep the whole image alive for as long as the tile is.
      yield (
        TileKey(image, height, width, tile, index, count),
        np.array(plan.cut(pixels, tile)),
      )


class ReducePieces(beam.DoFn):
  """(TileKey, probabilities or InferenceFailure) -> (`TileKey.image`, `tiling.Piece` or
  `TileFailure`): what travels to the stitching is the piece, not the probabilities."""

  def __init__(self, settings: TileSettings, threshold: Optional[float]):
    self._settings = settings
    self._threshold = threshold
    self._inferred = progress.Counter(progress.TILES_INFERRED)

  def process(self, element: tuple[TileKey, Any]) -> Iterator:
    key, result = element
    self._inferred.inc()
    try:
      result = inference.resolve(result)
    except elements.ModelFailureError:  # not this tile's failure: it stops the run
      raise
    except Exception as error:  # the slice failed as a whole
      result = inference.InferenceFailure(
        elements.STAGE_INFER, type(error).__name__, messages.one_line(error)
      )
    if isinstance(result, inference.InferenceFailure):
      yield key.image, TileFailure(key, result)
      return
    plan = self._settings.plan(key.height, key.width)
    stitcher = _STITCHERS[self._settings.blend]
    yield key.image, stitcher.piece(plan, key.tile, np.asarray(result), self._threshold)


_STITCHERS = {
  constants.BLEND_CENTRE: tiling.CentreStitcher,
  constants.BLEND_GAUSSIAN: tiling.GaussianStitcher,
}


def _native_size(mask: np.ndarray, width: int, height: int) -> np.ndarray:
  """The mask at the image's own size: enlarged with nearest neighbour (classes are never
  interpolated)."""
  if mask.shape == (height, width):
    return mask
  return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


class StitchImages(beam.DoFn):
  """(`TileKey.image`, [its ImagePlan and every tile's Piece or TileFailure]) -> segments row,
  or a Failure on FAILURES: the image's, where a tile of it failed."""

  def __init__(self, context: rows_lib.RunContext, settings: TileSettings, num_classes: int):
    self._context = context
    self._settings = settings
    self._num_classes = num_classes
    self._segmented = progress.Counter(progress.SEGMENTED)
    self._failed = progress.Counter(progress.FAILED)

  def process(self, element: tuple[str, Iterable[Any]]) -> Iterator:
    image, values = element
    plans = []
    pieces = []
    failed = []
    for value in values:
      if isinstance(value, ImagePlan):
        plans.append(value)
      elif isinstance(value, TileFailure):
        failed.append(value)
      else:
        pieces.append(value)
    if len(plans) != 1:  # a plan comes with its tiles, whatever runs them: never seen
      raise RuntimeError(f"image {image!r} has {len(plans)} tile plans, not 1")
    (plan,) = plans
    info = plan.info
    try:
      if failed:
        yield self._failure(info, self._tile_failure(failed, plan))
        return
      if len(pieces) != plan.tiles:
        raise RuntimeError(f"{len(pieces)} of its {plan.tiles} tiles came back")
      row = self._row(plan, pieces)
    except Exception as error:  # one image's stitching: its error row
      yield self._failure(
        info,
        elements.Failure.from_exception(
          info.image_id, info.source, elements.STAGE_POSTPROCESS, error, info.filename
        ),
      )
      return
    self._segmented.inc()
    yield row

  def _row(self, plan: ImagePlan, pieces: list[tiling.Piece]) -> dict[str, Any]:
    geometry = self._settings.plan(plan.height, plan.width)
    threshold = self._context.mask_threshold
    if self._settings.blend == constants.BLEND_GAUSSIAN:
      stitcher = tiling.GaussianStitcher(geometry, self._num_classes, threshold=threshold)
    else:
      stitcher = tiling.CentreStitcher(geometry, threshold=threshold)
    for piece in sorted(pieces, key=lambda p: (p.tile.top, p.tile.left)):
      stitcher.add_piece(piece)
    mask = stitcher.finish()
    confidence = stitcher.confidence_sum / mask.size
    info = plan.info
    mask = _native_size(mask, info.width, info.height)
    return rows_lib.mask_row(info, mask, confidence, self._context, info.label)

  def _tile_failure(self, failed: list[TileFailure], plan: ImagePlan) -> elements.Failure:
    first = min(failed, key=lambda f: f.key.index).key
    failure = min(failed, key=lambda f: f.key.index).failure
    info, tile, size = plan.info, first.tile, self._settings.size
    return elements.Failure(
      info.image_id,
      info.source,
      failure.stage,
      failure.error_type,
      f"{len(failed)} of its {plan.tiles} tiles failed; tile {first.index + 1}, columns "
      f"{tile.left}-{tile.left + size} and rows {tile.top}-{tile.top + size} of the image at "
      f"{plan.width}x{plan.height}: {failure.message}",
      info.filename,
    )

  def _failure(self, info: elements.ImageInfo, failure: elements.Failure):
    self._failed.inc()
    return beam.pvalue.TaggedOutput(elements.FAILURES, failure)


class SegmentTiled(beam.PTransform):
  """(ImageInfo, bytes) of images larger than a tile -> `elements.Outputs`: segments rows and
  failures (see the module docstring).

  Args:
    model_dir: the export, as `SegmentImages` takes it.
    settings: the tiling, resolved against the model (`TileSettings.resolve`).
    context: what every row records.
    num_classes: the model's classes.
    distributed: whether the runner spreads work over workers: then the tiles are reshuffled,
      so that one large image's tiles are inferred on many; a local runner would only hold
      them all in memory for it.
    batch_size, inference_slices, trust_model, require_gpu, breaker: as `SegmentImages`'.
  """

  def __init__(
    self,
    model_dir: str,
    settings: TileSettings,
    context: rows_lib.RunContext,
    num_classes: int,
    *,
    distributed: bool = True,
    batch_size: int = constants.DEFAULT_BATCH_SIZE,
    inference_slices: int = constants.DEFAULT_INFERENCE_SLICES,
    trust_model: bool = False,
    require_gpu: bool = False,
    breaker: Optional[options_lib.BreakerLimits] = None,
  ):
    super().__init__()
    self._settings = settings
    self._context = context
    self._num_classes = num_classes
    self._distributed = distributed
    self._handler = inference.create_handler(
      constants.HANDLER_SAVED_MODEL,
      model_dir,
      max_batch_size=batch_size,
      slices=inference_slices,
      trust_model=trust_model,
      require_gpu=require_gpu,
      breaker=breaker,
      tile=(settings.size, settings.channels),
    )

  def expand(self, images) -> elements.Outputs:
    cut = images | "CutTiles" >> beam.ParDo(CutTiles(self._settings)).with_outputs(
      elements.FAILURES, PLANS, main="tiles"
    )
    tiles = cut.tiles
    if self._distributed:
      tiles = tiles | "SpreadTiles" >> beam.Reshuffle()
    pieces = (
      tiles
      | "InferTiles" >> RunInference(self._handler)
      | "Pieces" >> beam.ParDo(ReducePieces(self._settings, self._context.mask_threshold))
    )
    stitched = (
      (cut[PLANS], pieces)
      | "PlansAndPieces" >> beam.Flatten()
      | "ByImage" >> beam.GroupByKey()
      | "Stitch"
      >> beam.ParDo(StitchImages(self._context, self._settings, self._num_classes)).with_outputs(
        elements.FAILURES, main="rows"
      )
    )
    failures = (cut[elements.FAILURES], stitched[elements.FAILURES]) | "Failures" >> beam.Flatten()
    return elements.Outputs(stitched.rows, failures)
