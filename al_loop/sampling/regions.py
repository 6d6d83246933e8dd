"""Region queries: the part of a chosen patch an expert is asked to label.

A patch is mostly easy pixels (bare rock, obvious clean ice); the ambiguity sits in a debris
tongue or under a cloud edge. A region query asks for a square window of the patch, the one whose
pixels the model is most unsure about, and leaves the rest unlabelled (the masked loss ignores
it). Pure functions over arrays: the round that chooses patches calls them, the store keeps the
window, the labelling tool shows it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """A window of a patch in pixel offsets from its top-left corner; ``row1``/``col1`` exclusive."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def pixels(self) -> int:
        return (self.row1 - self.row0) * (self.col1 - self.col0)

    def as_list(self) -> list[int]:
        return [self.row0, self.col0, self.row1, self.col1]

    @classmethod
    def from_list(cls, values: object, height: int, width: int) -> Region:
        """A stored window, checked against the patch shape (ValueError naming what is wrong)."""
        if not isinstance(values, (list, tuple)) or len(values) != 4 or not all(type(v) is int for v in values):
            raise ValueError(f"a region is four integers [row0, col0, row1, col1], found {values!r}")
        region = cls(*values)
        if not (0 <= region.row0 < region.row1 <= height and 0 <= region.col0 < region.col1 <= width):
            raise ValueError(f"region {values} does not lie inside the {height} x {width} px patch")
        return region

    def mask(self, height: int, width: int) -> np.ndarray:
        """True inside the window."""
        out = np.zeros((height, width), dtype=bool)
        out[self.row0 : self.row1, self.col0 : self.col1] = True
        return out


def region_side(height: int, width: int, fraction: float, multiple: int = 8) -> int:
    """Side of a square window holding about ``fraction`` of a patch's pixels, a multiple of
    ``multiple`` pixels, at least ``multiple`` and at most the patch's shorter side."""
    if not 0 < fraction <= 1:
        raise ValueError(f"region fraction must be in (0, 1], found {fraction}")
    side = int(round(math.sqrt(fraction * height * width) / multiple)) * multiple
    return max(multiple, min(side, height, width))


def ambiguity_map(maps: Mapping[str, np.ndarray], weights: Mapping[str, float], valid: np.ndarray) -> np.ndarray:
    """Weighted mean of per-pixel component maps, each scaled by its maximum over the patch's valid
    pixels (components live on different scales; within one patch only where matters)."""
    used = {name: w for name, w in weights.items() if name in maps and w > 0}
    if not used:
        raise ValueError(f"no weighted component among the maps given ({sorted(maps)})")
    total = np.zeros(valid.shape, dtype=np.float64)
    for name, weight in used.items():
        values = np.where(valid, np.nan_to_num(np.asarray(maps[name], dtype=np.float64)), 0.0)
        top = values.max(initial=0.0)
        if top > 0:
            total += weight * values / top
    return total / sum(used.values())


def best_window(score_map: np.ndarray, side: int, stride: int = 8) -> Region:
    """The ``side`` x ``side`` window with the largest summed score, searched on a ``stride`` grid
    (the last row and column of windows flush with the patch edge); ties go to the first."""
    height, width = score_map.shape
    if not 0 < side <= min(height, width):
        raise ValueError(f"window side must be in [1, {min(height, width)}] for a {height} x "
                         f"{width} patch, found {side}")
    integral = np.zeros((height + 1, width + 1), dtype=np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(np.nan_to_num(score_map.astype(np.float64)), axis=0), axis=1)
    rows = sorted(set(range(0, height - side + 1, stride)) | {height - side})
    cols = sorted(set(range(0, width - side + 1, stride)) | {width - side})
    r, c = np.meshgrid(rows, cols, indexing="ij")
    sums = integral[r + side, c + side] - integral[r, c + side] - integral[r + side, c] + integral[r, c]
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return Region(rows[i], cols[j], rows[i] + side, cols[j] + side)
