"""Glacier labels from vector files (any CRS, any attribute scheme) and from label rasters.

Vector labels are read once into a :class:`VectorLabels` (polygons in the scene CRS with a
spatial index) and rasterised patch window by patch window with :func:`rasterize_window`.
Raster labels are reprojected onto each window with nearest-neighbour resampling by
:func:`read_raster_labels_window`. Both give masks in the :mod:`al_loop.classes` encoding.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fiona
import numpy as np
import rasterio
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.features import rasterize
from rasterio.transform import array_bounds
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from shapely.geometry import shape as to_shapely

from al_loop.classes import (
    BACKGROUND,
    CLEAN_ICE,
    DEBRIS,
    GLACIER,
    LABEL_CODES,
    UNLABELED,
    label_code,
)

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.io import DatasetReader

# Later classes are painted over earlier ones. Debris polygons are usually drawn inside glacier
# (and sometimes clean-ice) outlines, so debris must win its overlaps; a glacier-only outline is
# the least specific label and goes first. Explicit background polygons are corrections (rock
# outcrops, nunataks, "not glacier" edits) and carve out whatever lies under them; polygons
# mapped to ``unlabeled`` (doubtful areas) carve out everything: no label there.
PAINT_ORDER: tuple[int, ...] = (GLACIER, CLEAN_ICE, DEBRIS, BACKGROUND, UNLABELED)
_PAINT_RANK = np.zeros(256, dtype=np.int64)
_PAINT_RANK[list(PAINT_ORDER)] = np.arange(len(PAINT_ORDER))

_POLYGONAL = ("Polygon", "MultiPolygon")


class LabelInputError(ValueError):
    """A label file cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


@dataclass(frozen=True)
class VectorLabels:
    """Label polygons in one CRS, with their class codes and a spatial index."""

    source: Path
    crs: CRS
    geometries: np.ndarray  # shapely (Multi)Polygons in ``crs``
    codes: np.ndarray  # uint8 class code of each geometry
    tree: shapely.STRtree
    # features read, kept, repaired (were invalid), empty (null or empty geometry), not_polygonal
    # (no area, even after repair), unmapped {attribute value: n}
    counts: dict[str, Any]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of all polygons in ``crs``."""
        minx, miny, maxx, maxy = (float(v) for v in shapely.total_bounds(self.geometries))
        return minx, miny, maxx, maxy


def load_vector_labels(
    path: Path,
    target_crs: Any,
    attribute: str | None = None,
    mapping: dict[str, str] | None = None,
    default_class: str = "glacier",
) -> VectorLabels:
    """Read a vector label file and reproject its polygons to ``target_crs``.

    Without ``attribute`` every feature is ``default_class`` (an RGI outline is plain glacier).
    With it, ``str(feature[attribute])`` goes through ``mapping`` (value -> class name; without
    a mapping the values must be class names); features with other values are skipped and
    counted. Invalid polygons are repaired, empty and non-polygonal ones skipped and counted.
    """
    path = Path(path)
    target_crs = CRS.from_user_input(target_crs)
    codes_by_value = _codes_by_value(path, attribute, mapping, default_class)
    with _open_vector(path) as src:
        if not src.crs:
            raise LabelInputError(path, "has no coordinate reference system")
        _check_attribute(path, src, attribute)
        source_crs = ProjCRS.from_wkt(src.crs.to_wkt())
        geometries, codes, counts = _read_features(src, attribute, codes_by_value)
    geometries = _reproject(geometries, source_crs, ProjCRS.from_wkt(target_crs.to_wkt()))
    geometries, codes = _clean(geometries, codes, counts)
    if len(geometries) == 0:
        raise LabelInputError(path, f"no label polygons left after mapping and cleaning ({counts})")
    counts["kept"] = len(geometries)
    return VectorLabels(path, target_crs, geometries, codes, shapely.STRtree(geometries), counts)


def _codes_by_value(
    path: Path, attribute: str | None, mapping: dict[str, str] | None, default_class: str
) -> dict[str | None, int]:
    """Attribute value -> class code (key None when there is no attribute)."""
    if attribute is None:
        if mapping is not None:
            raise LabelInputError(path, "a class mapping was given without an attribute to map")
        names: dict[str | None, str] = {None: default_class}
    else:
        chosen = mapping if mapping is not None else {name: name for name in LABEL_CODES}
        names = {value: name for value, name in chosen.items()}
    try:
        return {value: label_code(name) for value, name in names.items()}
    except ValueError as error:
        raise LabelInputError(path, f"bad class mapping: {error}") from None


def _open_vector(path: Path) -> fiona.Collection:
    if not path.exists():
        raise LabelInputError(path, "file does not exist")
    try:
        return fiona.open(path)
    except fiona.errors.FionaError as error:
        raise LabelInputError(path, f"not a readable vector file ({error})") from None


def _check_attribute(path: Path, src: fiona.Collection, attribute: str | None) -> None:
    columns = list(src.schema["properties"])
    if attribute is not None and attribute not in columns:
        raise LabelInputError(
            path, f"has no column {attribute!r}; available columns: {', '.join(columns)}"
        )


def _read_features(
    src: fiona.Collection, attribute: str | None, codes_by_value: dict[str | None, int]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Shapely geometries (source CRS) and class codes of the mapped, non-empty features."""
    geometries, codes = [], []
    counts: dict[str, Any] = {"features": 0, "repaired": 0, "empty": 0, "not_polygonal": 0}
    unmapped: Counter[str | None] = Counter()
    for feature in src:
        counts["features"] += 1
        value = None if attribute is None else str(feature.properties[attribute])
        if value not in codes_by_value:
            unmapped[value] += 1
            continue
        geometry = None if feature.geometry is None else to_shapely(feature.geometry)
        if geometry is None or geometry.is_empty:
            counts["empty"] += 1
            continue
        geometries.append(geometry)
        codes.append(codes_by_value[value])
    counts["unmapped"] = dict(unmapped)
    return np.array(geometries, dtype=object), np.array(codes, dtype=np.uint8), counts


def _reproject(geometries: np.ndarray, source: ProjCRS, target: ProjCRS) -> np.ndarray:
    if source == target:
        return geometries
    transformer = Transformer.from_crs(source, target, always_xy=True)
    return shapely.transform(
        geometries, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


def _clean(geometries: np.ndarray, codes: np.ndarray, counts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Repair invalid geometries, keep polygonal parts, drop what ends up empty."""
    invalid = ~shapely.is_valid(geometries)
    counts["repaired"] = int(invalid.sum())
    geometries = geometries.copy()
    geometries[invalid] = shapely.make_valid(geometries[invalid])
    polygonal = np.array([_polygonal_part(g) for g in geometries], dtype=object)
    keep = ~shapely.is_empty(polygonal)
    counts["not_polygonal"] = int((~keep).sum())
    return polygonal[keep], codes[keep]


def _polygonal_part(geometry: shapely.Geometry) -> shapely.Geometry:
    if geometry.geom_type in _POLYGONAL:
        return geometry
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type in _POLYGONAL]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def rasterize_window(labels: VectorLabels, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """The uint8 class mask of one window (its Affine ``transform`` and ``(rows, cols)``).

    Background (0) where no polygon lies; overlaps follow :data:`PAINT_ORDER`.
    """
    west, south, east, north = array_bounds(shape[0], shape[1], transform)
    hits = labels.tree.query(shapely.box(west, south, east, north), predicate="intersects")
    if len(hits) == 0:
        return np.zeros(shape, dtype=np.uint8)
    hits = hits[np.argsort(_PAINT_RANK[labels.codes[hits]], kind="stable")]
    # Clipping to the window (plus a pixel) first makes rasterising a large outline ~7x faster.
    pad = max(abs(transform.a), abs(transform.e))
    clipped = shapely.clip_by_rect(
        labels.geometries[hits], west - pad, south - pad, east + pad, north + pad
    )
    keep = ~shapely.is_empty(clipped)
    if not keep.any():
        return np.zeros(shape, dtype=np.uint8)
    return rasterize(
        zip(clipped[keep], labels.codes[hits][keep].tolist(), strict=True),
        out_shape=shape,
        transform=transform,
        fill=BACKGROUND,
        dtype=np.uint8,
    )


def labels_overlap(labels: VectorLabels, bounds: tuple[float, float, float, float]) -> bool:
    """Whether any label polygon intersects ``bounds`` (minx, miny, maxx, maxy in labels.crs)."""
    return len(labels.tree.query(shapely.box(*bounds), predicate="intersects")) > 0


def read_raster_labels_window(
    path: Path,
    dst_crs: Any,
    dst_transform: Affine,
    shape: tuple[int, int],
    value_mapping: dict[int, str] | None = None,
) -> np.ndarray:
    """A label raster on any grid reprojected (nearest) onto one window, as a uint8 class mask.

    Source nodata and pixels outside the raster's coverage are 255 (unlabeled). Raster values go
    through ``value_mapping`` (value -> class name or ``unlabeled``); without it they must already
    be class codes (0-3, 255). Any other value is an error.
    """
    path = Path(path)
    codes_by_value = _raster_codes(path, value_mapping)
    dst_crs = CRS.from_user_input(dst_crs)
    with _open_raster(path) as src:
        if src.crs is None:
            raise LabelInputError(path, "has no coordinate reference system")
        window = _source_window(path, src, dst_crs, dst_transform, shape)
        values = np.where(
            src.read_masks(1, window=window) > 0,
            src.read(1, window=window).astype(np.float64),
            np.nan,
        )
        warped = np.full(shape, np.nan)
        reproject(
            values,
            warped,
            src_transform=src.window_transform(window),
            src_crs=src.crs,
            src_nodata=np.nan,
            dst_transform=dst_transform,
            dst_crs=dst_crs,
            dst_nodata=np.nan,
            resampling=Resampling.nearest,
        )
    return _values_to_codes(path, warped, codes_by_value)


def _raster_codes(path: Path, value_mapping: dict[int, str] | None) -> dict[float, int]:
    if value_mapping is None:
        return {float(code): code for code in LABEL_CODES.values()}
    try:
        return {float(value): label_code(name) for value, name in value_mapping.items()}
    except ValueError as error:
        raise LabelInputError(path, f"bad value mapping: {error}") from None


def _open_raster(path: Path) -> DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioIOError as error:
        raise LabelInputError(path, f"not a readable raster ({error})") from None


def _source_window(
    path: Path, src: DatasetReader, dst_crs: CRS, dst_transform: Affine, shape: tuple[int, int]
) -> Window:
    """The source pixels covering the destination window, padded by one pixel."""
    bounds = transform_bounds(dst_crs, src.crs, *array_bounds(shape[0], shape[1], dst_transform))
    window = from_bounds(*bounds, transform=src.transform)
    col0 = max(math.floor(window.col_off) - 1, 0)
    row0 = max(math.floor(window.row_off) - 1, 0)
    col1 = min(math.ceil(window.col_off + window.width) + 1, src.width)
    row1 = min(math.ceil(window.row_off + window.height) + 1, src.height)
    if col1 <= col0 or row1 <= row0:
        raise LabelInputError(path, "label raster does not overlap the window")
    return Window(col0, row0, col1 - col0, row1 - row0)


def _names(codes_by_value: dict[float, int]) -> dict[float, str]:
    names = {code: name for name, code in LABEL_CODES.items()}
    return {value: names[code] for value, code in codes_by_value.items()}


def _values_to_codes(
    path: Path, values: np.ndarray, codes_by_value: dict[float, int]
) -> np.ndarray:
    mask = np.full(values.shape, UNLABELED, dtype=np.uint8)
    found = np.unique(values[~np.isnan(values)])
    unknown = [int(v) if v.is_integer() else v for v in found.tolist() if v not in codes_by_value]
    if unknown:
        mapped = ", ".join(f"{int(v) if float(v).is_integer() else v}={n}" for v, n in _names(codes_by_value).items())
        raise LabelInputError(
            path,
            f"raster values {unknown[:20]} are not mapped to classes (mapped: {mapped}); map each with "
            f"--map VALUE=CLASS, CLASS one of {', '.join(LABEL_CODES)} (e.g. --map {unknown[0]}=unlabeled "
            "for pixels that say nothing)",
        )
    for value in found.tolist():
        mask[values == value] = codes_by_value[value]
    return mask
