"""Frozen configuration of a U-Net: encoder + decoder + head, and the named presets.

A `UNetConfig` fully determines an architecture. It is recorded in an exported model's metadata,
so `segbeam model summary --model DIR` can rebuild the same architecture without its weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

# Encoder trainability policies; an int N means "the top N weighted layers train".
TRAINABLE_AUTO = "auto"
TRAINABLE_FROZEN = "frozen"
TRAINABLE_ALL = "all"
EncoderTrainable = Union[str, int]

UPSAMPLE_TRANSPOSE = "transpose"
UPSAMPLE_UPSAMPLING = "upsampling"

# Every encoder's bottleneck has stride 32 and each decoder block doubles the resolution.
BOTTLENECK_STRIDE = 32


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Which encoder, where its weights come from and how much of it trains.

  Attributes:
    name: a registered encoder: 'mobilenetv2', 'resnet34' or 'vgg16'.
    weights: None for random initialisation, 'imagenet' for the weights Keras downloads, or the
      path of a weights file to load into the encoder.
    trainable: 'auto' (frozen when the weights are pretrained, trainable when random), 'frozen',
      'all', or an int N: only the top N weighted encoder layers train (fine-tuning).
  """

  name: str
  weights: Optional[str] = None
  trainable: EncoderTrainable = TRAINABLE_AUTO

  def __post_init__(self):
    if isinstance(self.trainable, bool) or not (
      self.trainable in (TRAINABLE_AUTO, TRAINABLE_FROZEN, TRAINABLE_ALL)
      or (isinstance(self.trainable, int) and self.trainable >= 0)
    ):
      raise ValueError(
        f"encoder trainable must be 'auto', 'frozen', 'all' or a layer count >= 0, "
        f"got {self.trainable!r}"
      )

  @property
  def pretrained(self) -> bool:
    return self.weights is not None

  @property
  def effective_trainable(self) -> EncoderTrainable:
    """The policy 'auto' resolves to: freeze pretrained weights, train random ones."""
    if self.trainable == TRAINABLE_AUTO:
      return TRAINABLE_FROZEN if self.pretrained else TRAINABLE_ALL
    return self.trainable


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The decoder: one block per entry of `filters`, each doubling the resolution.

  Attributes:
    filters: output channels of each decoder block, coarsest first.
    upsample: 'transpose' (Conv2DTranspose, stride 2, kernel `upsample_kernel` -> BatchNorm ->
      ReLU) or 'upsampling' (UpSampling2D, no weights).
    upsample_kernel: kernel size of the Conv2DTranspose when `upsample` is 'transpose'.
    convs_per_block: Conv3x3 -> BatchNorm -> ReLU layers after the skip concatenation. 0 gives the
      pix2pix block of the TensorFlow tutorial (the transpose convolution is the whole block).
    dropout_rate: dropout after the upsampling's BatchNorm (the pix2pix 'apply_dropout'); 0 = none.
  """

  filters: tuple[int, ...]
  upsample: str = UPSAMPLE_TRANSPOSE
  upsample_kernel: int = 3
  convs_per_block: int = 2
  dropout_rate: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
    if not self.filters or any(f <= 0 for f in self.filters):
      raise ValueError(f"decoder filters must be positive, got {self.filters}")
    if len(self.filters) not in (4, 5):
      raise ValueError(
        "a decoder needs 4 blocks (the head then upsamples x2) or 5 (full resolution), "
        f"got {len(self.filters)}"
      )
    if self.upsample not in (UPSAMPLE_TRANSPOSE, UPSAMPLE_UPSAMPLING):
      raise ValueError(
        f"decoder upsample must be 'transpose' or 'upsampling', got {self.upsample!r}"
      )
    if self.upsample == UPSAMPLE_UPSAMPLING and self.convs_per_block < 1:
      raise ValueError("an 'upsampling' decoder block needs at least one convolution")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

  @property
  def output_stride(self) -> int:
    return BOTTLENECK_STRIDE // 2 ** len(self.filters)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """A whole U-Net.

  Attributes:
    architecture: the preset this config came from (a registry name), kept for reports.
    encoder: see `EncoderConfig`.
    decoder: see `DecoderConfig`.
    input_size: height and width of the square model input; a multiple of 32.
    channels: 1 (grayscale) or 3 (RGB). Grayscale input is repeated to three channels before the
      encoder, so RGB encoder weights still apply.
    num_classes: output classes of the head (logits).
  """

  architecture: str
  encoder: EncoderConfig
  decoder: DecoderConfig
  input_size: int = 128
  channels: int = 3
  num_classes: int = 3

  def __post_init__(self):
    if self.input_size <= 0 or self.input_size % BOTTLENECK_STRIDE:
      raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
    if self.channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {self.channels}")
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")

  def replace(self, **changes: Any) -> "UNetConfig":
    """A copy with fields changed; `encoder_<field>` and `decoder_<field>` reach into the
    encoder and decoder configs (`encoder_weights=...`, `decoder_upsample=...`)."""
    nested = {"encoder": {}, "decoder": {}}
    for key in list(changes):
      part, _, field = key.partition("_")
      if part in nested and field:
        nested[part][field] = changes.pop(key)
    for part, part_changes in nested.items():
      if part_changes:
        changes[part] = dataclasses.replace(getattr(self, part), **part_changes)
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
    fields = dict(data)
    fields["encoder"] = EncoderConfig(**fields["encoder"])
    fields["decoder"] = DecoderConfig(**fields["decoder"])
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Optimisation settings.

  Attributes:
    epochs: passes over the training pairs.
    batch_size: pairs per step.
    learning_rate: Adam's initial rate, decayed along a cosine to 1% of it at the last step.
    augment: random flips, zoom-crops and brightness changes on the training pairs (with
      `crop`, flips and brightness only: a zoom would change the scale the model learns).
    seed: seeds weight initialisation, shuffling and augmentation.
    batchnorm_momentum: momentum of every BatchNorm's moving statistics while training, or None
      to keep the architecture's (Keras' MobileNetV2 uses 0.999). 0.9 lets the statistics of a
      randomly initialised encoder keep up within a short run; with the slow default they lag
      for ~1000 steps and validation in inference mode looks untrained.
    crop: None to train on whole images resized to the input size; N to train on random N x N
      crops at native resolution (times `scale`) instead, for models run tiled (`segbeam run
      --tile`). N is then the model's input size, a multiple of 32.
    scale: with `crop`, the factor (0 < scale <= 1) images are resized by before cropping: the
      scale the model is to be run at.
  """

  epochs: int = 60
  batch_size: int = 16
  learning_rate: float = 1e-3
  augment: bool = True
  seed: int = 0
  batchnorm_momentum: Optional[float] = 0.9
  crop: Optional[int] = None
  scale: float = 1.0

  def __post_init__(self):
    # Named as `segbeam train`'s flags, which are these fields.
    if self.crop is not None and (
      isinstance(self.crop, bool) or self.crop <= 0 or self.crop % BOTTLENECK_STRIDE
    ):
      raise ValueError(
        f"--crop must be a positive multiple of {BOTTLENECK_STRIDE} (the U-Net's "
        f"downsampling), got {self.crop}"
      )
    if self.scale != 1.0 and self.crop is None:
      raise ValueError("--scale sets the scale of --crop's crops: give --crop SIZE too")
    if not 0.0 < self.scale <= 1.0:  # NaN too
      raise ValueError(
        f"--scale must be more than 0 and at most 1 (a fraction of native resolution), got "
        f"{self.scale}"
      )


# The named presets. Only the architecture is fixed here; sizes, classes and weights are options.
PRESETS: Mapping[str, UNetConfig] = {
  # The TensorFlow segmentation tutorial's U-Net: pix2pix upsample blocks, no convs after the
  # concatenation, and a Conv2DTranspose head that doubles 64x64 to 128x128.
  "mobilenetv2": UNetConfig(
    architecture="mobilenetv2",
    encoder=EncoderConfig(name="mobilenetv2"),
    decoder=DecoderConfig(
      filters=(512, 256, 128, 64), upsample=UPSAMPLE_TRANSPOSE, upsample_kernel=3, convs_per_block=0
    ),
  ),
  # ResNet34-UNet as in segmentation_models: five blocks, the last without a skip.
  "resnet34": UNetConfig(
    architecture="resnet34",
    encoder=EncoderConfig(name="resnet34"),
    decoder=DecoderConfig(
      filters=(256, 128, 64, 32, 16), upsample=UPSAMPLE_UPSAMPLING, convs_per_block=2
    ),
  ),
  # VGG16 with a mirrored decoder: UpSampling2D undoes each of the five poolings.
  "vgg16": UNetConfig(
    architecture="vgg16",
    encoder=EncoderConfig(name="vgg16"),
    decoder=DecoderConfig(
      filters=(512, 512, 256, 128, 64), upsample=UPSAMPLE_UPSAMPLING, convs_per_block=2
    ),
  ),
}


def preset(name: str, **changes: Any) -> UNetConfig:
  """The named preset with `changes` applied (see `UNetConfig.replace`)."""
  try:
    config = PRESETS[name]
  except KeyError:
    raise ValueError(
      f"unknown architecture {name!r}; known: {', '.join(sorted(PRESETS))}"
    ) from None
  return config.replace(**changes)


# How an imported model's own pipeline prepared its pixels and what its output is
# (`segbeam export`). The names are the conventions users' training code follows.
PREPROCESS_UNIT = "unit"  # x / 255: the TensorFlow segmentation tutorial
PREPROCESS_SYMMETRIC = "symmetric"  # x / 127.5 - 1: Keras' MobileNet family
PREPROCESS_CAFFE = "caffe"  # RGB -> BGR, ImageNet mean subtracted: Keras' VGG16, ResNet50
PREPROCESS_TORCH = "torch"  # x / 255, ImageNet mean and std: most PyTorch-style encoders
PREPROCESS_NONE = "none"  # 0..255 as decoded (the model normalises itself)
PREPROCESS_CONVENTIONS = (
  PREPROCESS_UNIT,
  PREPROCESS_SYMMETRIC,
  PREPROCESS_CAFFE,
  PREPROCESS_TORCH,
  PREPROCESS_NONE,
)

# Resizing to the model's input. All but the last decode in full and resize as
# `tf.image.resize` does with that method ('antialias': bilinear with antialiasing), so the
# pixels equal those of the model's own tf.data pipeline. 'dct-antialias' is what `segbeam
# train` trains and serves with: a JPEG decoded at a reduced DCT scale (far less work on large
# photos), then 'antialias'; it gives other pixels than a full decode, so only segbeam's own
# models are served with it by default.
RESIZE_BILINEAR = "bilinear"
RESIZE_ANTIALIAS = "antialias"
RESIZE_AREA = "area"
RESIZE_NEAREST = "nearest"
RESIZE_DCT_ANTIALIAS = "dct-antialias"
RESIZE_METHODS = (
  RESIZE_BILINEAR,
  RESIZE_ANTIALIAS,
  RESIZE_AREA,
  RESIZE_NEAREST,
  RESIZE_DCT_ANTIALIAS,
)

OUTPUT_AUTO = "auto"
OUTPUT_SOFTMAX = "softmax"
OUTPUT_LOGITS = "logits"
OUTPUT_SIGMOID = "sigmoid"
OUTPUT_KINDS = (OUTPUT_AUTO, OUTPUT_SOFTMAX, OUTPUT_LOGITS, OUTPUT_SIGMOID)


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """How an export's serving graph turns encoded images into class probabilities.

  Attributes:
    input_height, input_width, channels: the model's input.
    num_classes: classes of the probabilities (2 for a single sigmoid channel).
    preprocess: one of PREPROCESS_CONVENTIONS, applied to 0..255 pixels after resizing.
    resize: one of RESIZE_METHODS.
    output: what the model outputs: 'softmax', 'logits' (softmax applied in the graph) or
      'sigmoid' (independent scores; one channel becomes background, foreground).
    threshold: foreground threshold of a single sigmoid channel; other outputs take the argmax.
    model_channels: the model's output channels (1 for a single sigmoid channel).
    tile_multiple: 0 where the `predict_pixels` signature takes only input_height x
      input_width pixels; N where it takes any height and width that are multiples of N (a
      fully convolutional model: tiles of any such size, `segbeam run --tile`).
  """

  input_height: int
  input_width: int
  channels: int
  num_classes: int
  preprocess: str = PREPROCESS_NONE
  resize: str = RESIZE_DCT_ANTIALIAS
  output: str = OUTPUT_LOGITS
  threshold: float = 0.5
  model_channels: Optional[int] = None
  tile_multiple: int = 0

  def __post_init__(self):
    if self.input_height <= 0 or self.input_width <= 0:
      raise ValueError(f"input size must be positive, got {self.input_height}x{self.input_width}")
    if self.channels not in (1, 3):
      raise ValueError(f"the model's input must have 1 or 3 channels, got {self.channels}")
    if self.preprocess not in PREPROCESS_CONVENTIONS:
      raise ValueError(
        f"unknown preprocessing {self.preprocess!r}; known: {', '.join(PREPROCESS_CONVENTIONS)}"
      )
    if self.preprocess in (PREPROCESS_CAFFE, PREPROCESS_TORCH) and self.channels != 3:
      raise ValueError(
        f"preprocessing {self.preprocess!r} is for RGB input; the model takes "
        f"{self.channels} channel(s)"
      )
    if self.resize not in RESIZE_METHODS:
      raise ValueError(f"unknown resize {self.resize!r}; known: {', '.join(RESIZE_METHODS)}")
    if self.output not in OUTPUT_KINDS or self.output == OUTPUT_AUTO:
      raise ValueError(f"output must be softmax, logits or sigmoid, got {self.output!r}")
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
    if self.num_classes < 2:
      raise ValueError(f"a segmentation needs at least 2 classes, got {self.num_classes}")
    if self.tile_multiple < 0:
      raise ValueError(f"tile_multiple must be 0 or more, got {self.tile_multiple}")

  def takes_tile(self, size: int) -> bool:
    """Whether the `predict_pixels` signature takes tiles of `size` x `size` pixels."""
    if self.tile_multiple:
      return size > 0 and size % self.tile_multiple == 0
    return size == self.input_height == self.input_width

  @property
  def binary_sigmoid(self) -> bool:
    """One sigmoid channel, served as two classes (background, foreground)."""
    return self.model_channels == 1

  @property
  def mask_threshold(self) -> Optional[float]:
    """The foreground threshold the mask takes when it is not the argmax's (0.5)."""
    return self.threshold if self.binary_sigmoid and self.threshold != 0.5 else None

  @property
  def description(self) -> str:
    """'preprocess unit, resize bilinear, scores sigmoid, foreground above 0.5'."""
    threshold = f", foreground above {self.threshold}" if self.binary_sigmoid else ""
    return f"preprocess {self.preprocess}, resize {self.resize}, scores {self.output}{threshold}"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "ServingConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in fields})
