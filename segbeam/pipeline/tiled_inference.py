"""Tiled inference in Beam (`segbeam run --tile`): large images segmented at full resolution in
overlapping tiles, stitched back into one mask per image.

(ImageInfo, bytes) -> `CutTiles` (decoded once, scaled, cut; the image's `ImagePlan` beside
its tiles) -> [Reshuffle, where the runner spreads work: tiles of one image go to many
workers] -> RunInference (`inference.TileHandler`: the export's `predict_pixels`, tiles of
every image batched together) -> `ReducePieces` (each tile's prediction made a small
`tiling.Piece` where it was inferred) -> grouped by image with its plan -> `StitchImages`
(the mask at full resolution, then the usual row, `rows.mask_row`). `SplitBySize` first sends
the images the model takes whole, as without tiles, the other way.

What is held per image is its compressed pieces and one mask being assembled (a band of
probabilities more for Gaussian blending); what is held per worker for inference is a batch of
tiles. The geometry and the stitchers are `tiling`'s.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Iterable, Iterator, Optional, Union

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference
from PIL import Image

from segbeam import constants
from segbeam import messages
from segbeam import options as options_lib
from segbeam.model import config as config_lib
from segbeam.model import postprocess
from segbeam.model import preprocessing
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
    input_height, input_width: the model's input size: an image no larger, at scale 1, is
      segmented whole (`whole`); 0 for none.
  """

  size: int
  overlap: int
  blend: str = constants.BLEND_CENTRE
  scale: float = 1.0
  channels: int = 3
  input_height: int = 0
  input_width: int = 0

  @classmethod
  def resolve(
    cls,
    tile: Union[str, int],
    overlap: Optional[int],
    blend: str,
    scale: float,
    serving: config_lib.ServingConfig,
  ) -> "TileSettings":
    """`--tile` ('auto', or a size, as a string or an int), `--tile-overlap`, `--tile-blend`
    and `--scale` for a model served as `serving`; raises ValueError for tiles the model cannot
    take."""
    tile = str(tile) if isinstance(tile, int) and not isinstance(tile, bool) else tile
    options_lib.check(tile=tile, tile_overlap=overlap, tile_blend=blend, scale=scale)
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int)):
      raise ValueError(f"--tile-overlap must be a whole number of pixels, got {overlap!r}")
    if isinstance(scale, bool):
      raise ValueError(f"--scale must be a number, got {scale!r}")
    if not serving.tile_multiple and serving.input_height != serving.input_width:
      raise ValueError(
        f"--tile: the model takes {serving.input_width}x{serving.input_height} pixels only, and "
        "tiles are square: it cannot be tiled"
      )
    if tile == constants.TILE_AUTO:
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
    return cls(
      size,
      overlap,
      blend,
      scale,
      serving.channels,
      serving.input_height,
      serving.input_width,
    )

  def scaled(self, width: int, height: int) -> tuple[int, int]:
    """(width, height) of an image of `width` x `height` at `scale`; at least 1 pixel."""
    return max(1, round(width * self.scale)), max(1, round(height * self.scale))

  def whole(self, width: int, height: int) -> bool:
    """Whether an image is segmented whole, resized to the model's input as without tiles: at
    scale 1, one no larger than that input (it fits one tile of `--tile auto`, and gets the
    mask it gets without tiles). Every other image is segmented at `scale` in tiles, one tile
    for an image that fits one, so that a run segments every image at one scale."""
    return self.scale == 1.0 and width <= self.input_width and height <= self.input_height

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
  """A tile's inference key.

  Attributes:
    image: the key its image's pieces are grouped by: its id and a token of its own, since
      a pipeline of a user's may hand on two records of the same id.
    height, width: the image's size as segmented (after the scale).
    tile: the tile's place in the image.
    index: its number among the image's tiles, row by row from 0.
  """

  image: str
  height: int
  width: int
  tile: tiling.Tile
  index: int


@dataclasses.dataclass(frozen=True)
class TileFailure:
  """A tile the model failed on; its image fails with it."""

  key: TileKey
  failure: inference.InferenceFailure


def scale_pixels(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
  """`pixels` resized to `width` x `height`, bilinear with antialiasing (Pillow widens its
  filter when it shrinks), on uint8 so that a large image is not widened to floats."""
  if pixels.shape[:2] == (height, width):
    return pixels
  image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
  return resized.reshape(height, width, pixels.shape[-1])


class SplitBySize(beam.DoFn):
  """(ImageInfo, bytes) -> the same, on the main output where the image is segmented whole, as
  without tiles (`TileSettings.whole`), on TILED where it is tiled."""

  TILED = "tiled"

  def __init__(self, settings: TileSettings):
    self._settings = settings

  def process(self, element: tuple[elements.ImageInfo, bytes]) -> Iterator:
    info, _ = element
    if self._settings.whole(info.width, info.height):
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
      # As the serving graph decodes (and training does); validation has turned upright what
      # had to be.
      pixels = preprocessing.decode_image(data, settings.channels).numpy()
    except Exception as error:  # undecodable bytes: this image's failure
      yield self._failure(info, type(error).__name__, inference.shown(messages.one_line(error)))
      return
    if pixels.shape[:2] != (info.height, info.width):
      yield self._failure(
        info,
        "SizeMismatch",
        f"decoded {pixels.shape[1]}x{pixels.shape[0]}, the header declares "
        f"{info.width}x{info.height}",
      )
      return
    width, height = settings.scaled(info.width, info.height)
    try:  # all that can fail before the image's first tile goes: then it is one error row
      pixels = scale_pixels(pixels, width, height)
      plan = settings.plan(height, width)
      count = plan.count()
    except Exception as error:  # an image no tile plan fits
      yield self._failure(info, type(error).__name__, messages.one_line(error))
      return
    self._tiles.inc(count)  # again where Beam retries the bundle: progress only
    image = f"{info.image_id}#{uuid.uuid4().hex}"
    yield beam.pvalue.TaggedOutput(PLANS, (image, ImagePlan(info, height, width, count)))
    for index, tile in enumerate(plan.tiles()):
      # A copy: a view would keep the whole image alive for as long as the tile is.
      yield (
        TileKey(image, height, width, tile, index),
        np.array(plan.cut(pixels, tile)),
      )

  def _failure(self, info: elements.ImageInfo, error_type: str, message: str):
    self._failed.inc()
    return beam.pvalue.TaggedOutput(
      elements.FAILURES,
      elements.Failure(
        info.image_id, info.source, elements.STAGE_DECODE, error_type, message, info.filename
      ),
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
    if not isinstance(result, inference.InferenceFailure):
      try:
        plan = self._settings.plan(key.height, key.width)
        piece = _STITCHERS[self._settings.blend].piece(
          plan, key.tile, np.asarray(result), self._threshold
        )
      except Exception as error:  # an output no piece can be made of: this image's failure
        result = inference.InferenceFailure(
          elements.STAGE_POSTPROCESS, type(error).__name__, messages.one_line(error)
        )
      else:
        yield key.image, piece
        return
    yield key.image, TileFailure(key, result)


_STITCHERS = {
  constants.BLEND_CENTRE: tiling.CentreStitcher,
  constants.BLEND_GAUSSIAN: tiling.GaussianStitcher,
}


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
        yield self._failure(self._tile_failure(failed, plan))
        return
      if len(pieces) != plan.tiles:
        raise RuntimeError(f"{len(pieces)} of its {plan.tiles} tiles came back")
      row = self._row(plan, pieces)
    except Exception as error:  # one image's stitching: its error row
      yield self._failure(
        elements.Failure.from_exception(
          info.image_id, info.source, elements.STAGE_POSTPROCESS, error, info.filename
        ),
      )
      return
    self._segmented.inc()
    yield row

  def _row(self, plan: ImagePlan, pieces: list[tiling.Piece]) -> dict[str, Any]:
    stitcher = _STITCHERS[self._settings.blend](
      self._settings.plan(plan.height, plan.width),
      num_classes=self._num_classes,
      threshold=self._context.mask_threshold,
    )
    for piece in sorted(pieces, key=lambda p: (p.tile.top, p.tile.left)):
      stitcher.add_piece(piece)
    mask = stitcher.finish()
    confidence = stitcher.confidence_sum / mask.size
    info = plan.info
    mask = postprocess.enlarged_mask(mask, info.height, info.width)
    return rows_lib.mask_row(info, mask, confidence, self._context, info.label)

  def _tile_failure(self, failed: list[TileFailure], plan: ImagePlan) -> elements.Failure:
    first = min(failed, key=lambda f: f.key.index)
    key, failure = first.key, first.failure
    info, tile, size = plan.info, key.tile, self._settings.size
    return elements.Failure(
      info.image_id,
      info.source,
      failure.stage,
      failure.error_type,
      f"{len(failed)} of its {plan.tiles} tiles failed; tile {key.index + 1}, columns "
      f"{tile.left}-{tile.left + size} and rows {tile.top}-{tile.top + size} of the image at "
      f"{plan.width}x{plan.height}: {failure.message}",
      info.filename,
    )

  def _failure(self, failure: elements.Failure):
    self._failed.inc()
    return beam.pvalue.TaggedOutput(elements.FAILURES, failure)


class SegmentTiled(beam.PTransform):
  """(ImageInfo, bytes) of images to tile -> `elements.Outputs`: segments rows and failures
  (see the module docstring).

  Args:
    handler: the keyed, isolating handler of tiles (`inference.create_handler` with `tile`).
    settings: the tiling, resolved against the model (`TileSettings.resolve`).
    context: what every row records.
    num_classes: the model's classes.
    distributed: whether the runner spreads work over workers: then the tiles are reshuffled,
      so that one large image's tiles are inferred on many; a local runner would only hold
      them all in memory for it.
  """

  def __init__(
    self,
    handler: inference.IsolatingModelHandler,
    settings: TileSettings,
    context: rows_lib.RunContext,
    num_classes: int,
    *,
    distributed: bool = True,
  ):
    super().__init__()
    self._handler = handler
    self._settings = settings
    self._context = context
    self._num_classes = num_classes
    self._distributed = distributed

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
