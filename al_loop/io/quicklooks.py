"""Quicklook PNGs: what annotators see. Natural colour (B3/B2/B1) and the paper's false colour
(B5/B4/B2: snow and ice cyan, cloud white, rock brown), percentile stretched per scene, nodata
transparent. The stretch also covers SWIR 2 and the thermal bands, for the cloud view of
:mod:`al_loop.io.views`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

NATURAL = ("B3", "B2", "B1")
FALSE_COLOUR = ("B5", "B4", "B2")
QUICKLOOK_CHANNELS = tuple(dict.fromkeys(NATURAL + FALSE_COLOUR + ("B7", "B6_VCID_1", "B6_VCID_2")))


def scene_stretch(
    pixels: np.ndarray, channels: Sequence[str], valid: np.ndarray, percentiles: Sequence[float]
) -> dict[str, list[float]]:
    """Per-channel ``[low, high]`` stretch from the percentiles of the valid pixels of an
    overview of the scene (so neighbouring patches look alike)."""
    stretch = {}
    for name in QUICKLOOK_CHANNELS:
        if name not in channels:
            continue
        values = pixels[list(channels).index(name)][valid]
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        low, high = np.percentile(values, percentiles)
        stretch[name] = [float(low), float(max(high, low + 1e-6))]
    return stretch


def stretch_band(band: np.ndarray, low: float, high: float) -> np.ndarray:
    """``band`` linearly stretched from ``[low, high]`` to 0-255 (NaN as ``low``), uint8."""
    return np.clip((np.nan_to_num(band, nan=low) - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)


def render(
    pixels: np.ndarray,
    channels: Sequence[str],
    valid: np.ndarray,
    stretch: dict[str, list[float]],
    composite: Sequence[str],
) -> Image.Image | None:
    """An RGBA image of three channels; ``None`` when the scene lacks one of them."""
    if any(name not in channels or name not in stretch for name in composite):
        return None
    rgb = np.empty(valid.shape + (4,), dtype=np.uint8)
    for k, name in enumerate(composite):
        rgb[..., k] = stretch_band(pixels[list(channels).index(name)], *stretch[name])
    rgb[..., 3] = np.where(valid, 255, 0)
    return Image.fromarray(rgb, mode="RGBA")


def write_quicklooks(
    pixels: np.ndarray,
    channels: Sequence[str],
    valid: np.ndarray,
    stretch: dict[str, list[float]],
    stem: Path,
) -> tuple[Path | None, Path | None]:
    """Write ``<stem>_rgb.png`` and ``<stem>_false.png``; returns their paths (``None`` for a
    composite the scene lacks a band of)."""
    written: list[Path | None] = []
    for suffix, composite in (("rgb", NATURAL), ("false", FALSE_COLOUR)):
        image = render(pixels, channels, valid, stretch, composite)
        if image is None:
            written.append(None)
            continue
        path = stem.parent / f"{stem.name}_{suffix}.png"
        image.save(path, optimize=False, compress_level=1)
        written.append(path)
    return written[0], written[1]
