"""Glacier outlines from a class mosaic: per-class masks with the minimum mapping unit applied,
traced into polygons (holes, i.e. nunataks, kept) with per-polygon statistics. Pure over arrays.

Each polygon is one 4-connected part of its class, traced along pixel edges, so its area is
exactly its pixel count times the pixel area (the test of an export); the mapping unit removes
parts and fills holes smaller than it on the raster first, so polygons and pixel counts agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from al_loop.classes import CLEAN_ICE, DEBRIS, GLACIER

LAYERS: dict[str, tuple[int, ...]] = {
    "clean_ice": (CLEAN_ICE,),
    "debris": (DEBRIS,),
    "glacier": (CLEAN_ICE, DEBRIS, GLACIER),  # their union, with glacier of unknown type
}
FOUR = ndimage.generate_binary_structure(2, 1)


def apply_mapping_unit(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` without 4-connected parts smaller than ``min_pixels`` and with the holes smaller
    than it filled (a hole: a part of the complement that does not touch the edge)."""
    if min_pixels <= 1:
        return mask.copy()
    parts, n = ndimage.label(mask, FOUR)
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    out = mask & (sizes >= min_pixels)[parts]
    holes, m = ndimage.label(~out, FOUR)
    hole_sizes = np.bincount(holes.ravel(), minlength=m + 1)
    edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = hole_sizes < min_pixels
    small[0] = False
    small[edge] = False
    return out | small[holes]


@dataclass
class Part:
    """One polygon of a layer and what its pixels say."""

    geometry: object  # shapely Polygon in the grid's CRS
    pixels: int
    sources: np.ndarray  # pixel counts per source code (index = code)
    confidence: float | None  # mean model confidence over its model-sourced pixels (0-1)
    inventory: int  # the inventory index most of its pixels lie in (0: none)


def trace(mask: np.ndarray, transform: Affine, source: np.ndarray, confidence: np.ndarray,
          inventory: np.ndarray | None = None, n_sources: int = 4) -> Iterator[Part]:
    """The polygons of ``mask`` (one per 4-connected part) with their statistics.

    ``source``: per-pixel source code (0..``n_sources``-1); ``confidence``: per-pixel model
    confidence in 0-255 (counted where the source is the model, code ``n_sources - 1``);
    ``inventory``: per-pixel index of the inventory glacier (0: none)."""
    parts, n = ndimage.label(mask, FOUR)
    if n == 0:
        return
    flat = parts.ravel()
    pixels = np.bincount(flat, minlength=n + 1)
    sources = np.zeros((n + 1, n_sources), np.int64)
    for code in range(n_sources):
        sources[:, code] = np.bincount(flat, weights=(source.ravel() == code), minlength=n + 1)
    model = source.ravel() == n_sources - 1
    conf_sum = np.bincount(flat, weights=np.where(model, confidence.ravel(), 0), minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)
    if inventory is not None:
        inside = (flat > 0) & (inventory.ravel() > 0)
        pairs, counts = np.unique(np.stack([flat[inside], inventory.ravel()[inside]]), axis=1, return_counts=True)
        best = np.zeros(n + 1, np.int64)
        for (part, glacier), count in zip(pairs.T, counts, strict=True):
            if count > best[part]:
                best[part], owner[part] = count, glacier
    for geometry, value in shapes(parts.astype(np.int32), mask=mask, connectivity=4, transform=transform):
        k = int(value)
        model_px = sources[k, n_sources - 1]
        yield Part(shape(geometry), int(pixels[k]), sources[k],
                   float(conf_sum[k] / model_px / 255.0) if model_px else None, int(owner[k]))
