"""Label mappings: raw mask pixel values -> class indices, everything else ignored."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

# Class index written for pixels whose raw value the mapping does not name (e.g. a 255 border).
IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """How a dataset's mask values become classes.

  Attributes:
    mapping: (raw value, class index) pairs. Raw values not listed are ignored in training and
      evaluation.
    class_names: one name per class index, in index order.
  """

  mapping: tuple[tuple[int, int], ...]
  class_names: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "mapping", tuple(sorted((int(r), int(c)) for r, c in self.mapping)))
    object.__setattr__(self, "class_names", tuple(self.class_names))
    raws = [raw for raw, _ in self.mapping]
    if len(set(raws)) != len(raws):
      raise ValueError(f"a raw value is mapped twice in {self.mapping}")
    if len(self.class_names) > IGNORE_INDEX:
      raise ValueError(f"at most {IGNORE_INDEX} classes, {IGNORE_INDEX} marks ignored pixels")
    if not self.mapping:
      raise ValueError("a label map must map at least one raw value")
    classes = {c for _, c in self.mapping}
    if not classes <= set(range(len(self.class_names))):
      raise ValueError(
        f"the mapping's classes {sorted(classes)} must be within 0..{len(self.class_names) - 1}"
        f" (one per class name {list(self.class_names)})"
      )
    if any(not 0 <= raw < 65536 for raw in raws):
      raise ValueError("raw mask values must be in 0..65535")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def covered_classes(self) -> tuple[int, ...]:
    """Class indices some raw value maps to. Ground truth says nothing about the others (binary
    pet/background masks for a pet/background/border model), so they get no IoU."""
    return tuple(sorted({c for _, c in self.mapping}))

  @property
  def uncovered_class_names(self) -> tuple[str, ...]:
    covered = set(self.covered_classes)
    return tuple(n for i, n in enumerate(self.class_names) if i not in covered)

  def apply(self, raw_mask: np.ndarray) -> np.ndarray:
    """Raw mask (8- or 16-bit integers) -> uint8 class indices, IGNORE_INDEX where unmapped."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for raw, cls in self.mapping:
      table[raw] = cls
    return table[np.asarray(raw_mask).astype(np.uint16, copy=False)]

  def to_dict(self) -> dict[str, Any]:
    return {"mapping": {str(r): c for r, c in self.mapping}, "class_names": list(self.class_names)}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "LabelMap":
    return cls(
      mapping=tuple((int(r), int(c)) for r, c in data["mapping"].items()),
      class_names=tuple(data["class_names"]),
    )


def coverage_line(class_names: Sequence[str], covered: Sequence[str]) -> str:
  """'ground truth covers: pet, background (not: border)', as evaluate, summary and report say
  it."""
  missing = [name for name in class_names if name not in set(covered)]
  return f"ground truth covers: {', '.join(covered) or 'no class'}" + (
    f" (not: {', '.join(missing)})" if missing else ""
  )


# Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border; the TensorFlow tutorial subtracts 1.
OXFORD_PET_TRIMAP = LabelMap(
  mapping=((1, 0), (2, 1), (3, 2)), class_names=("pet", "background", "border")
)
# Binary masks saved as 0/255 images.
BINARY_0_255 = LabelMap(mapping=((0, 0), (255, 1)), class_names=("background", "foreground"))

PRESETS: Mapping[str, LabelMap] = {
  "oxford-pet-trimap": OXFORD_PET_TRIMAP,
  "binary-0-255": BINARY_0_255,
}


def parse_label_map(spec: str, class_names: tuple[str, ...] | None = None) -> LabelMap:
  """A preset name, or 'raw:class,raw:class' such as '1:0,2:1,3:2'.

  Class names default to the preset's, else to 'class_0' up to the highest class named.
  """
  if spec in PRESETS:
    preset = PRESETS[spec]
    return preset if class_names is None else LabelMap(preset.mapping, tuple(class_names))
  pairs = []
  for item in spec.split(","):
    raw, sep, cls = item.strip().partition(":")
    if not sep:
      raise ValueError(
        f"label map {spec!r}: expected a preset ({', '.join(PRESETS)}) or 'raw:class,...'"
      )
    try:
      pairs.append((int(raw), int(cls)))
    except ValueError:
      raise ValueError(f"label map {spec!r}: {item!r} is not 'int:int'") from None
  bad = sorted({c for _, c in pairs if not 0 <= c < IGNORE_INDEX})
  if bad:
    raise ValueError(f"label map {spec!r}: classes must be in 0..{IGNORE_INDEX - 1}, not {bad}")
  num_classes = max(c for _, c in pairs) + 1
  names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
  return LabelMap(mapping=tuple(pairs), class_names=names)
