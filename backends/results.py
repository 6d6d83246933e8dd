"""Conversions between al-loop label masks and Label Studio results (brush RLE and polygons).

Masks use the :mod:`al_loop.classes` encoding; labels and tag names come from
:mod:`backends.label_config`. Decisions:

* Predictions: one brush region per class present; one polygon region per connected part (4-
  connectivity) of a class. Unlabeled pixels (255) give no region. Background regions are left
  out unless asked for: an annotation is read as complete by default (below), so they add nothing.
* Holes: Label Studio polygons have none. Holes smaller than ``min_hole_px`` are filled (specks
  of another class inside a prediction); larger ones are cut open by splitting the polygon along
  a vertical line through the hole, repeatedly, so that the pieces cover exactly the polygon.
* Reading annotations back: pixels covered by no region are background when the annotation is
  ``complete`` (an expert labels every glacier in the patch), else unlabeled. Overlaps follow
  :data:`al_loop.io.labels.PAINT_ORDER`: debris over clean ice, an explicit background region
  over both (a correction); "unsure" and "cloud / no data" over everything (unlabeled, counted).
* An annotation with nothing painted says nothing (:class:`EmptyAnnotation`), unless the expert
  chose "no glacier in this patch": then it is all background outside unsure or cloud paint,
  whatever class paint it holds (the pre-label an expert did not bother to erase).
* Region queries: a ``region`` box (RectangleLabels, not rotated) bounds what the annotation
  says: pixels outside every box are unlabeled, whatever was painted there; inside, the rules
  above hold. No box: the whole patch.
* Results from Label Studio are checked strictly; any problem raises :class:`ResultError` naming
  the region and nothing is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.features import rasterize
from shapely.geometry import LineString, Polygon
from shapely.ops import split

from al_loop.classes import BACKGROUND, UNLABELED
from al_loop.io.labels import PAINT_ORDER
from al_loop.prelabels import simplify_outlines
from al_loop.sampling.regions import Region
from backends import rle as rle_codec
from backends.label_config import (
    ALL_LABELS,
    BRUSH_NAME,
    IGNORE_LABELS,
    IMAGE_NAME,
    LABEL_CODES,
    LABEL_NAMES,
    NO_GLACIER,
    POLYGON_NAME,
    REGION_LABEL,
    REGION_NAME,
    VERDICT_NAME,
)

if TYPE_CHECKING:
    from label_studio_sdk.label_interface import LabelInterface

BRUSH_TYPE = "brushlabels"
POLYGON_TYPE = "polygonlabels"
REGION_TYPE = "rectanglelabels"  # the box of a region query (see backends.label_config)
CHOICES_TYPE = "choices"  # the verdict (see backends.label_config)
_FROM_NAMES = {BRUSH_TYPE: BRUSH_NAME, POLYGON_TYPE: POLYGON_NAME}
_PERCENT_EPS = 1e-3  # how far past 0-100 a polygon point may lie (floating-point slack)
_ALPHA_PAINTED = 128  # brush alpha from which a pixel counts as painted


class ResultError(ValueError):
    """A Label Studio result cannot be read; the message names the region and the problem."""


class EmptyAnnotation(ResultError):
    """An annotation that paints nothing and does not say "no glacier here": no label at all."""


@dataclass(frozen=True)
class ReadAnnotation:
    """An annotation's label mask and what it said besides."""

    mask: np.ndarray
    ignored: dict[str, int]  # pixels marked unsure / cloud (unlabeled in the mask), by IGNORE_LABELS key
    no_glacier: bool  # the expert chose "no glacier in this patch"


def _error(index: int, problem: str) -> ResultError:
    return ResultError(f"result region {index}: {problem}")


def _codes_present(mask: np.ndarray, include_background: bool) -> list[int]:
    """Codes in ``mask`` that get regions, in label order; ValueError on codes with no label."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    present = set(np.unique(mask).tolist())
    unknown = sorted(present - set(LABEL_NAMES) - {UNLABELED})
    if unknown:
        raise ValueError(f"mask holds class codes {unknown} that have no Label Studio label")
    return [
        code
        for code in LABEL_CODES.values()
        if code in present and (include_background or code != BACKGROUND)
    ]


def _region(kind: str, mask: np.ndarray, value: dict[str, Any]) -> dict[str, Any]:
    height, width = mask.shape
    return {
        "from_name": _FROM_NAMES[kind],
        "to_name": IMAGE_NAME,
        "type": kind,
        "original_width": width,
        "original_height": height,
        "value": value,
    }


def mask_to_brush_results(mask: np.ndarray, include_background: bool = False) -> list[dict]:
    """One BrushLabels region per class present in ``mask`` (H, W): exact, pixel for pixel."""
    return [
        _region(
            BRUSH_TYPE,
            mask,
            {"format": "rle", "rle": rle_codec.encode_mask(mask == code), BRUSH_TYPE: [LABEL_NAMES[code]]},
        )
        for code in _codes_present(mask, include_background)
    ]


def _cut_holes(polygon: Polygon) -> list[Polygon]:
    """Hole-free polygons covering ``polygon``: split along a vertical line through a hole."""
    if not polygon.interiors:
        return [polygon]
    x = Polygon(polygon.interiors[0]).representative_point().x
    _, miny, _, maxy = polygon.bounds
    pieces = split(polygon, LineString([(x, miny - 1), (x, maxy + 1)])).geoms
    return [part for piece in pieces for part in _cut_holes(piece)]


def mask_to_polygon_results(
    mask: np.ndarray,
    simplify_tolerance_px: float = 2.0,
    min_hole_px: float = 4.0,
    include_background: bool = False,
    min_part_px: int = 1,
) -> list[dict]:
    """PolygonLabels regions tracing each class in ``mask`` (H, W), points in percent of the size.

    Outlines follow pixel edges and are simplified together as one coverage by
    ``simplify_tolerance_px`` (:func:`al_loop.prelabels.simplify_outlines`): neighbouring
    polygons share their simplified boundary, neither overlapping nor leaving gaps; 0 keeps the
    exact pixel outlines. Parts smaller than ``min_part_px`` pixels are left out: a weak model's
    speckle would otherwise make thousands of regions. Holes are filled or cut as the module
    docstring says.
    """
    codes = _codes_present(mask, include_background)
    height, width = mask.shape
    results = []
    for code, outline in simplify_outlines(mask, simplify_tolerance_px, codes):
        if min_part_px > 1 and outline.area < min_part_px:  # area after simplification: about the pixels
            continue
        holes = [ring for ring in outline.interiors if Polygon(ring).area >= min_hole_px]
        for piece in _cut_holes(Polygon(outline.exterior, holes)):
            points = [
                [round(x / width * 100, 4), round(y / height * 100, 4)]
                for x, y in piece.exterior.coords[:-1]
            ]
            value = {"points": points, "closed": True, POLYGON_TYPE: [LABEL_NAMES[code]]}
            results.append(_region(POLYGON_TYPE, mask, value))
    return results


def _label_name(index: int, kind: str, value: dict) -> str:
    labels = value.get(kind)
    if not isinstance(labels, list) or len(labels) != 1:
        raise _error(index, f"value.{kind} must hold exactly one label, got {labels!r}")
    if labels[0] not in ALL_LABELS:
        raise _error(index, f"unknown label {labels[0]!r}; valid labels: {', '.join(ALL_LABELS)}")
    return labels[0]


def _verdict(index: int, region: dict) -> bool:
    """Whether a choices result says "no glacier in this patch"."""
    if region.get("from_name") != VERDICT_NAME:
        raise _error(index, f"unknown choices {region.get('from_name')!r}; expected {VERDICT_NAME!r}")
    choices = (region.get("value") or {}).get("choices")
    if not isinstance(choices, list) or any(c != NO_GLACIER for c in choices):
        raise _error(index, f"{VERDICT_NAME} choices must be [{NO_GLACIER!r}], found {choices!r}")
    return bool(choices)


def _check_size(index: int, region: dict, height: int, width: int, required: bool) -> None:
    size = (region.get("original_width"), region.get("original_height"))
    if size == (None, None) and not required:
        return
    if size != (width, height):
        raise _error(
            index,
            f"original_width/height {size[0]}x{size[1]} do not match the patch {width}x{height}",
        )


def _brush_layer(index: int, value: dict, height: int, width: int) -> np.ndarray:
    rle = value.get("rle")
    if value.get("format") != "rle":
        raise _error(index, f"brush format must be 'rle', got {value.get('format')!r}")
    try:
        if not isinstance(rle, list):
            raise TypeError
        stream = bytes(rle)  # checks every item is an integer 0-255, at C speed
    except (TypeError, ValueError):
        raise _error(index, "malformed rle: must be a list of integers 0-255") from None
    try:
        rgba = rle_codec.decode(stream, width * height * 4).reshape(height, width, 4)
    except ValueError as e:
        raise _error(index, f"malformed rle for a {width}x{height} RGBA mask: {e}") from None
    return rgba[:, :, 3] >= _ALPHA_PAINTED


def _polygon_layer(index: int, value: dict, height: int, width: int) -> np.ndarray:
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        n = len(points) if isinstance(points, list) else points
        raise _error(index, f"a polygon needs at least 3 points, got {n!r}")
    pixels = []
    for k, point in enumerate(points):
        if not (
            isinstance(point, list | tuple)
            and len(point) == 2
            and all(type(c) in (int, float) and math.isfinite(c) for c in point)
        ):
            raise _error(index, f"polygon point {k} is not an [x, y] pair of numbers: {point!r}")
        if not all(-_PERCENT_EPS <= c <= 100 + _PERCENT_EPS for c in point):
            raise _error(index, f"polygon point {k} {point} lies outside 0-100 percent")
        x, y = (min(max(c, 0.0), 100.0) for c in point)
        pixels.append((x / 100 * width, y / 100 * height))
    return rasterize([(Polygon(pixels), 1)], out_shape=(height, width), dtype=np.uint8) == 1


def read_results(results: list[dict], height: int, width: int, complete: bool = True) -> ReadAnnotation:
    """The label mask (``height``, ``width``) of an annotation's results and what else it said.

    Pixels in no region are background if ``complete``, else unlabeled; with region boxes,
    pixels outside every box are unlabeled. Raises :class:`EmptyAnnotation` when nothing is
    painted and "no glacier" was not chosen.
    """
    layers: dict[str, np.ndarray] = {}
    boxes: np.ndarray | None = None
    no_glacier = False
    for index, region in enumerate(results):
        if not isinstance(region, dict):
            raise _error(index, f"must be a dict, got {type(region).__name__}")
        kind = str(region.get("type", "")).lower()
        if kind == REGION_TYPE:
            box = _box_layer(index, region, height, width)
            boxes = box if boxes is None else boxes | box
            continue
        if kind == CHOICES_TYPE:
            no_glacier |= _verdict(index, region)
            continue
        if kind not in _FROM_NAMES:
            expected = ", ".join([*_FROM_NAMES, REGION_TYPE, CHOICES_TYPE])
            raise _error(index, f"unknown result type {region.get('type')!r}; expected {expected}")
        names = (region.get("from_name"), region.get("to_name"))
        if names != (_FROM_NAMES[kind], IMAGE_NAME):
            raise _error(
                index,
                f"from_name/to_name {names} do not match {kind} of this config"
                f" ({_FROM_NAMES[kind]!r}, {IMAGE_NAME!r})",
            )
        value = region.get("value")
        if not isinstance(value, dict):
            raise _error(index, "missing value")
        name = _label_name(index, kind, value)
        _check_size(index, region, height, width, required=kind == BRUSH_TYPE)
        if kind == BRUSH_TYPE:
            layer = _brush_layer(index, value, height, width)
        else:
            layer = _polygon_layer(index, value, height, width)
        layers[name] = layers[name] | layer if name in layers else layer

    if boxes is not None and not boxes.any():
        raise ResultError("the region box(es) cover no pixel's centre: draw the box over the part you labelled")
    if not layers and not no_glacier:
        raise EmptyAnnotation(f"nothing is painted and {NO_GLACIER!r} is not chosen: the annotation says nothing "
                              "(paint the glacier, or choose that there is none)")
    mask = np.full((height, width), BACKGROUND if complete or no_glacier else UNLABELED, dtype=np.uint8)
    for code in PAINT_ORDER:
        if LABEL_NAMES.get(code) in layers and not no_glacier:
            mask[layers[LABEL_NAMES[code]]] = code
    inside = np.ones((height, width), bool) if boxes is None else boxes
    ignored = {}
    for name, key in IGNORE_LABELS.items():
        if name in layers:
            mask[layers[name]] = UNLABELED
            ignored[key] = int((layers[name] & inside).sum())
    mask[~inside] = UNLABELED
    return ReadAnnotation(mask, ignored, no_glacier)


def results_to_mask(results: list[dict], height: int, width: int, complete: bool = True) -> np.ndarray:
    """The label mask of an annotation's results (see :func:`read_results`)."""
    return read_results(results, height, width, complete).mask


def region_to_result(window: Region, height: int, width: int) -> dict[str, Any]:
    """The box of a region query as a RectangleLabels result (percent of the patch)."""
    return {
        "from_name": REGION_NAME, "to_name": IMAGE_NAME, "type": REGION_TYPE,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": 100.0 * window.col0 / width, "y": 100.0 * window.row0 / height,
                  "width": 100.0 * (window.col1 - window.col0) / width,
                  "height": 100.0 * (window.row1 - window.row0) / height,
                  "rotation": 0, "rectanglelabels": [REGION_LABEL]},
    }


def _box_layer(index: int, region: dict, height: int, width: int) -> np.ndarray:
    """The pixels a region box covers (a pixel counts when its centre lies inside)."""
    if (region.get("from_name"), region.get("to_name")) != (REGION_NAME, IMAGE_NAME):
        raise _error(index, f"a rectangle must come from the region box ({REGION_NAME!r} on {IMAGE_NAME!r}), "
                            f"found {(region.get('from_name'), region.get('to_name'))}")
    _check_size(index, region, height, width, required=False)
    value = region.get("value")
    if not isinstance(value, dict):
        raise _error(index, "missing value")
    found = [value.get(k) for k in ("x", "y", "width", "height")]
    numbers = [float(v) for v in found if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(found) or not all(math.isfinite(v) for v in numbers):
        raise _error(index, f"a region box needs numeric x, y, width and height in percent, found {found}")
    if value.get("rotation", 0) not in (0, 0.0, None):
        raise _error(index, f"a region box must not be rotated, found rotation {value.get('rotation')}")
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        raise _error(index, f"a region box needs a positive width and height, found {w} x {h} %")
    cols = (np.arange(width) + 0.5) * 100.0 / width
    rows = (np.arange(height) + 0.5) * 100.0 / height
    inside_cols = (cols >= x) & (cols <= x + w)
    inside_rows = (rows >= y) & (rows <= y + h)
    return inside_rows[:, None] & inside_cols[None, :]


@lru_cache(maxsize=8)
def _label_interface(config_xml: str) -> LabelInterface:
    """Parsing a config is most of a check's cost: each project's is parsed once."""
    from label_studio_sdk.label_interface import LabelInterface

    return LabelInterface(config_xml)


def has_control(config_xml: str, name: str) -> bool:
    """Whether the labeling config has a control tag called ``name``."""
    return any(control.name == name for control in _label_interface(config_xml).controls)


def validate_with_sdk(config_xml: str, prediction: dict) -> None:
    """Check a prediction (``{"result": [...], "score": ...}``) with the SDK's LabelInterface.

    Label Studio stores predictions unchecked. The SDK checks tag names, types, labels and the
    value shapes, but not polygon points below 0 nor RLE lengths: :func:`results_to_mask` does.
    """
    errors = _label_interface(config_xml).validate_prediction(prediction, return_errors=True)
    if errors:
        raise ResultError("; ".join(errors))
