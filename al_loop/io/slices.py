"""The HKH dataset's ``slices/`` folder: 512x512 patch images and masks as ``.npy`` files.

* images ``slice_<tile>_img_<n>.npy``: ``(H, W, 15)`` float32, channels last;
* masks ``slice_<tile>_mask_<n>.npy``: ``(H, W, 3)`` uint8;
* a footprint GeoJSON (``slices.geojson``) whose features name the files (``img_slice``,
  ``mask_slice``, absolute paths of the original machine: matched by file name) and hold each
  slice's polygon footprint.

Two mask conventions exist: ``"slices"`` (any glacier, clean ice, debris) and ``"splits"``
(one-hot clean ice, debris, background). :func:`mask_to_classes` turns either into the
:mod:`al_loop.classes` encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import fiona
import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_bounds

from al_loop.bands import CHANNELS
from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER, UNLABELED

CONVENTIONS = ("slices", "splits")
_SLICE_FILE = re.compile(r"slice_(?P<tile>.+)_(?P<kind>img|mask)_(?P<n>[^_]+)\.npy")


@dataclass(frozen=True)
class SliceEntry:
    """One slice: its files and, when the footprints are known, its place on the ground."""

    name: str  # "slice_<tile>_<n>"
    image_path: Path | None
    mask_path: Path | None
    bounds: tuple[float, float, float, float] | None  # footprint (minx, miny, maxx, maxy) in crs
    crs: CRS | None
    transform: Affine | None  # of the slice grid, from the footprint and the array shape

    @property
    def image(self) -> Path:
        """The image file, for slices known to have one."""
        if self.image_path is None:
            raise ValueError(f"{self.mask_path}: a mask without its image")
        return self.image_path


def find_slices(folder: Path, footprints: Path | None = None) -> list[SliceEntry]:
    """Pair the image and mask files of a slices folder with their footprints, sorted by name.

    ``footprints`` defaults to ``<folder>.geojson`` beside the folder, else ``slices.geojson``
    in its parent; without one, entries have no bounds, CRS or transform.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of slices")
    files: dict[str, dict[str, Path]] = {}
    for path in folder.glob("slice_*.npy"):
        match = _SLICE_FILE.fullmatch(path.name)
        if match:
            name = f"slice_{match['tile']}_{match['n']}"
            files.setdefault(name, {})[match["kind"]] = path
    footprints = footprints if footprints is not None else _default_footprints(folder)
    bounds, crs = _read_footprints(footprints) if footprints is not None else ({}, None)
    return [_entry(name, parts, bounds, crs) for name, parts in sorted(files.items())]


def _default_footprints(folder: Path) -> Path | None:
    for candidate in (folder.with_name(folder.name + ".geojson"), folder.parent / "slices.geojson"):
        if candidate.is_file():
            return candidate
    return None


def _read_footprints(path: Path) -> tuple[dict[str, tuple[float, ...]], CRS | None]:
    """Footprint bounds by slice file name, and the footprints' CRS."""
    try:
        with fiona.open(path) as src:
            crs = CRS.from_wkt(src.crs.to_wkt()) if src.crs else None
            bounds = {}
            for feature in src:
                box = fiona.bounds(feature.geometry)
                for key in ("img_slice", "mask_slice"):
                    if feature.properties.get(key):
                        # Paths of the machine that made the slices: split on "/" and "\\".
                        bounds[PureWindowsPath(feature.properties[key]).name] = box
    except fiona.errors.FionaError as error:
        raise ValueError(f"{path}: not a readable footprint file ({error})") from None
    return bounds, crs


def _entry(name: str, parts: dict[str, Path], footprints: dict, crs: CRS | None) -> SliceEntry:
    image, mask = parts.get("img"), parts.get("mask")
    located = next((p for p in (mask, image) if p and p.name in footprints), None)
    box = transform = None
    if located is not None:
        box = footprints[located.name]
        rows, cols = np.load(located, mmap_mode="r").shape[:2]
        transform = from_bounds(*box, width=cols, height=rows)
    return SliceEntry(name, image, mask, box, crs if box is not None else None, transform)


def read_slice_image(path: Path) -> np.ndarray:
    """A slice image as a (15, H, W) float32 view of the memory-mapped file (not read yet)."""
    image = np.load(path, mmap_mode="r")
    if image.ndim != 3 or image.shape[2] != len(CHANNELS) or image.dtype != np.float32:
        raise ValueError(
            f"{path}: expected a slice image of shape (H, W, {len(CHANNELS)}) float32, "
            f"found {image.shape} {image.dtype}"
        )
    return image.transpose(2, 0, 1)


def read_slice_mask(path: Path, convention: str | None = None) -> np.ndarray:
    """A slice mask file as a uint8 (H, W) class mask; the convention is detected if not given."""
    mask = np.load(path)
    try:
        return mask_to_classes(mask, convention or detect_mask_convention(mask))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def detect_mask_convention(mask: np.ndarray) -> str:
    """``"splits"`` if every pixel is one-hot, ``"slices"`` if channel 0 covers channels 1 and 2."""
    _check_mask(mask)
    one_hot = bool((mask.sum(axis=2, dtype=np.int64) == 1).all())
    nested = not (mask[..., 1:].any(axis=2) & (mask[..., 0] == 0)).any()
    if one_hot != nested:
        return "splits" if one_hot else "slices"
    reason = "fits both conventions" if one_hot else "fits neither convention"
    raise ValueError(
        f"mask {reason} ('slices': any glacier, clean, debris with channel 0 covering 1 and 2; "
        "'splits': one-hot clean, debris, background); give the convention explicitly"
    )


def mask_to_classes(mask_hwc: np.ndarray, convention: str) -> np.ndarray:
    """A (H, W, 3) mask in ``convention`` as a uint8 (H, W) mask in the classes encoding."""
    _check_mask(mask_hwc)
    channels = [mask_hwc[..., i] == 1 for i in range(3)]
    if convention == "slices":
        glacier, clean, debris = channels
        classes = np.full(glacier.shape, BACKGROUND, dtype=np.uint8)
        classes[glacier] = GLACIER  # glacier of unknown type unless a type channel says more
        classes[clean] = CLEAN_ICE
        classes[debris] = DEBRIS
        return classes
    if convention == "splits":
        clean, debris, background = channels
        if (mask_hwc.sum(axis=2, dtype=np.int64) > 1).any():
            raise ValueError("'splits' mask has pixels with more than one class set")
        classes = np.full(clean.shape, UNLABELED, dtype=np.uint8)
        classes[clean] = CLEAN_ICE
        classes[debris] = DEBRIS
        classes[background] = BACKGROUND
        return classes
    raise ValueError(f"unknown mask convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


def _check_mask(mask: np.ndarray) -> None:
    if mask.ndim != 3 or mask.shape[2] != 3:
        raise ValueError(f"expected a mask of shape (H, W, 3), found {mask.shape}")
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"mask values must be 0 or 1, found {np.unique(mask)[:10].tolist()}")
