"""Pre-labels worth correcting: a predicted class mask cleaned before it goes to Label Studio.

A weak model's prediction is pixel speckle over much of a patch: hundreds of one- and two-pixel
regions that take an annotator longer to erase than drawing the glacier from scratch would. The
functions here turn a prediction (:mod:`al_loop.classes` codes, ``255`` nodata) into something
worth correcting, the way a cartographer's generalisation would:

* :func:`smooth_classes`: a majority (mode) filter that smooths ragged class boundaries and
  removes isolated pixels, keeping straight edges;
* :func:`remove_small_parts`: a minimum mapping unit: every connected part (8-connectivity) below
  it takes the class around it (GLIMS maps no glacier below 0.01 km², 12 Landsat pixels: see
  :func:`min_pixels_for_area`);
* :func:`clean_prediction`: both, in that order;
* :func:`simplify_outlines`: polygons of every class with few vertices whose shared boundaries
  are simplified once for both sides (coverage simplification), so neighbouring clean-ice and
  debris polygons neither overlap nor leave gaps.

Nodata (``255``) pixels are never changed and never vote. Pure array functions: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import Polygon, shape

from al_loop.classes import UNLABELED

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structure for ndimage.label
_NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.int32)  # the 8 neighbours of a pixel
_MAX_PASSES = 1000  # remove_small_parts: a guard; each productive pass resolves at least one part


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 class codes, got {mask.dtype}")
    return mask


def _codes(mask: np.ndarray) -> np.ndarray:
    """The class codes present in ``mask``, nodata left out, ascending."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[UNLABELED] = 0
    return np.flatnonzero(counts).astype(np.uint8)


def smooth_classes(mask: np.ndarray, radius: int = 1, iterations: int = 1) -> np.ndarray:
    """A majority (mode) filter over a ``(2 radius + 1)²`` window, applied ``iterations`` times.

    Every valid pixel takes the class most frequent among the valid pixels of its window (itself
    included); it keeps its own class on a tie with it. Nodata pixels stay nodata and do not
    vote; outside the patch nothing votes. A straight boundary between two classes stays put;
    convex corners of a block lose a pixel; parts narrower than about ``radius + 1`` pixels
    vanish. Vectorised: one box filter per class present. Returns a new array.
    """
    mask = _check_mask(mask)
    if radius < 0 or iterations < 0:
        raise ValueError(f"radius and iterations must be >= 0, got {radius} and {iterations}")
    out = mask.copy()
    if radius == 0 or iterations == 0:
        return out
    size = 2 * radius + 1
    for _ in range(iterations):
        codes = _codes(out)
        if len(codes) < 2:
            break
        # votes[k]: pixels of class codes[k] in each window (the box mean times the window size,
        # rounded: exact counts from a float filter)
        votes = np.stack([
            np.rint(ndimage.uniform_filter((out == code).astype(np.float32), size=size, mode="constant") * size**2)
            for code in codes
        ]).astype(np.int32)
        valid = out != UNLABELED
        own = np.searchsorted(codes, out)  # index of each pixel's class in codes (nodata: garbage, masked)
        own[~valid] = 0
        own_votes = np.take_along_axis(votes, own[None], axis=0)[0]
        winner = votes.argmax(axis=0)
        changed = valid & (votes.max(axis=0) > own_votes)
        new = out.copy()
        new[changed] = codes[winner[changed]]
        if np.array_equal(new, out):
            break
        out = new
    return out


def _parts(mask: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Part ids (0 on nodata, 1.. on the 8-connected parts of every class), their sizes and classes
    (both indexed by part id)."""
    ids = np.zeros(mask.shape, dtype=np.int32)
    classes = [np.uint8(UNLABELED)]
    count = 0
    for code in codes:
        labels, n = ndimage.label(mask == code, structure=EIGHT)
        inside = labels > 0
        ids[inside] = labels[inside] + count
        classes += [code] * n
        count += n
    sizes = np.bincount(ids.ravel(), minlength=count + 1)
    return ids, sizes, np.array(classes, dtype=np.uint8)


def remove_small_parts(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """A minimum mapping unit: no connected part (8-connectivity) of a class below ``min_pixels``.

    Each pass gives every part below the unit the class it touches most among the parts at or
    above the unit, counting contacts (pairs of 8-neighbouring pixels; ties to the lower code, so
    background first). It thereby joins a part at or above the unit, so it never comes back. A
    pass resolves every small part touching a large one; the next pass handles small parts that
    only touched small ones. Nodata pixels never change and never count.

    Exception (so the loop ends on any input): where small parts touch no part at or above the
    unit (a patch made only of tiny parts, or an island of them ringed by nodata or the patch
    edge), each such cluster (8-connected small-part pixels, all classes together) takes its
    most common class (ties to the lower code). A cluster still below the unit then stays as it
    is: a lone speck in a nodata gap keeps its class. Returns a new array.
    """
    mask = _check_mask(mask)
    out = mask.copy()
    if min_pixels <= 1:
        return out
    for _ in range(_MAX_PASSES):
        codes = _codes(out)
        ids, sizes, part_class = _parts(out, codes)
        small_part = sizes < min_pixels
        small_part[0] = False  # nodata
        small = small_part[ids]
        if not small.any():
            break
        # contacts of every pixel with stable (large-part) pixels of each class
        stable = (~small) & (out != UNLABELED)
        contacts = np.stack([
            np.bincount(ids.ravel(), minlength=len(sizes),
                        weights=ndimage.convolve((stable & (out == code)).astype(np.int32), _NEIGHBOURS,
                                                 mode="constant").ravel())
            for code in codes
        ])  # (classes, parts)
        touching = small_part & (contacts.max(axis=0) > 0)
        if touching.any():
            target = part_class.copy()
            target[touching] = codes[contacts[:, touching].argmax(axis=0)]
            out = np.where(small, target[ids], out).astype(np.uint8)
            continue
        # no small part touches a large one: merge each cluster of small parts into its most common class
        clusters, n = ndimage.label(small, structure=EIGHT)
        counts = np.stack([np.bincount(clusters[out == code], minlength=n + 1) for code in codes])
        majority = codes[counts.argmax(axis=0)]
        new = np.where(small, majority[clusters], out).astype(np.uint8)
        if np.array_equal(new, out):
            break  # only the documented exception is left
        out = new
    return out


def clean_prediction(mask: np.ndarray, min_pixels: int, smooth_radius: int = 1,
                     smooth_iterations: int = 1) -> np.ndarray:
    """Smoothing (:func:`smooth_classes`) then the minimum mapping unit (:func:`remove_small_parts`).

    Smoothing first: it breaks speckle up and straightens boundaries, and the unit then removes
    what is left, so that the unit holds in the result (smoothing after it could cut a part below
    the unit again). ``mask`` is not modified; returns a new array.
    """
    return remove_small_parts(smooth_classes(mask, smooth_radius, smooth_iterations), min_pixels)


def min_pixels_for_area(area_m2: float, pixel_width_m: float, pixel_height_m: float) -> int:
    """The mapping unit in pixels: the fewest pixels covering at least ``area_m2`` (ceil).

    ``min_pixels_for_area(10_000, 30, 30) == 12``: GLIMS' 0.01 km² minimum glacier on 30 m
    Landsat pixels. Pixel sizes may be given signed (a north-up transform's height is negative).
    """
    width, height = abs(float(pixel_width_m)), abs(float(pixel_height_m))
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"pixel size must be positive and finite, got {pixel_width_m} x {pixel_height_m}")
    if not (area_m2 >= 0 and math.isfinite(area_m2)):
        raise ValueError(f"area must be >= 0 and finite, got {area_m2}")
    pixels = area_m2 / (width * height)
    return max(int(math.ceil(pixels - 1e-9 * max(pixels, 1.0))), 0)  # 1e-9: 1800 m² / 900 m² is 2, not 3


def simplify_outlines(mask: np.ndarray, tolerance_px: float = 2.0,
                      codes: Sequence[int] | None = None) -> list[tuple[int, Polygon]]:
    """Polygons of each class of ``mask``, simplified as one coverage: ``[(code, polygon), ...]``.

    Polygons are traced along pixel edges (one per 4-connected part, holes where other classes or
    nodata lie inside, as :mod:`backends.results` does; pixel coordinates: x right, y down). Every
    part of the patch (every class and nodata) then forms one coverage, simplified together
    (``shapely.coverage_simplify``, Visvalingam-Whyatt; ``tolerance_px`` is about the square root
    of the largest triangle area removed, in pixels): a boundary shared by two polygons is
    simplified once for both, so neighbours neither overlap nor leave gaps, and no polygon
    collapses (the smallest become triangles) or crosses another. The patch frame is kept
    exactly (a glacier reaching the edge still reaches it). The default 2 moves boundaries about
    as much on average as Douglas-Peucker at 1 px (``backends.results``), with about as many
    vertices, but locally up to a few pixels; ``tolerance_px`` 0 gives the exact outlines with
    collinear points dropped.

    ``codes``: the classes whose polygons are returned, in that order (default: every class
    present, ascending); nodata polygons are never returned. Within a class, polygons come in
    tracing order.
    """
    mask = _check_mask(mask)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    present = set(_codes(mask).tolist())
    wanted = sorted(present) if codes is None else [int(c) for c in codes if int(c) in present]
    if not wanted:
        return []
    traced = [(int(value), shape(geometry))
              for geometry, value in shapes(mask, connectivity=4)]  # every pixel, nodata included
    if not traced:
        return []
    # Edge-matched coverage: pixel outlines only carry corner vertices, so a straight edge of one
    # polygon can pass a vertex of its neighbour. A vertex on every pixel corner matches them.
    polygons = shapely.segmentize(np.array([g for _, g in traced], dtype=object), 1.0)
    if tolerance_px > 0:
        polygons = shapely.coverage_simplify(polygons, tolerance_px, simplify_boundary=False)
    polygons = _drop_collinear(polygons)
    by_code: dict[int, list[Polygon]] = {code: [] for code in wanted}
    for (code, _), polygon in zip(traced, polygons, strict=True):
        if code in by_code and not polygon.is_empty:
            by_code[code].append(polygon)
    return [(code, polygon) for code in wanted for polygon in by_code[code]]


def _drop_collinear(polygons: np.ndarray) -> list[Polygon]:
    """``polygons`` without the vertices that lie on a straight run of every ring holding them.

    A vertex where a boundary only passes straight through is dropped from every ring; a node
    (a corner in any ring, e.g. where a third polygon meets a straight edge) stays in all, so the
    coverage stays edge-matched. Vertices lie on the pixel grid (integers), so the test is exact.
    """
    rings = [[np.asarray(ring.coords)[:-1] for ring in (p.exterior, *p.interiors)] for p in polygons]
    flat = [r for poly in rings for r in poly]
    if not flat:
        return []
    points = np.concatenate(flat)
    before = np.concatenate([np.roll(r, 1, axis=0) for r in flat])
    after = np.concatenate([np.roll(r, -1, axis=0) for r in flat])
    turn = (points - before)[:, 0] * (after - points)[:, 1] - (points - before)[:, 1] * (after - points)[:, 0]
    keys = points[:, 0] * (points[:, 1].max() + 2) + points[:, 1]  # one number per grid point
    keep = (turn != 0) | np.isin(keys, keys[turn != 0])
    out, start = [], 0
    for poly in rings:
        kept = []
        for ring in poly:
            kept.append(ring[keep[start : start + len(ring)]])
            start += len(ring)
        out.append(Polygon(kept[0], kept[1:]))
    return out


def vertex_count(polygons: Sequence[Polygon]) -> int:
    """Distinct vertices of ``polygons`` (every ring, the closing point not counted)."""
    return sum(len(ring.coords) - 1 for p in polygons for ring in (p.exterior, *p.interiors))
