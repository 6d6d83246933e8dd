"""Pre-label cleaning: majority smoothing, the minimum mapping unit, coverage-simplified outlines."""

from __future__ import annotations

import time

import numpy as np
import pytest
import shapely
from scipy import ndimage

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, UNLABELED
from al_loop.prelabels import (
    clean_prediction,
    min_pixels_for_area,
    remove_small_parts,
    simplify_outlines,
    smooth_classes,
    vertex_count,
)

EIGHT = np.ones((3, 3), dtype=bool)


def noisy(size: int, seed: int, p=(0.5, 0.3, 0.2), nodata: bool = True) -> np.ndarray:
    """Speckle of the three classes; with nodata, SLC-off-like stripes and a block of 255."""
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array([BACKGROUND, CLEAN_ICE, DEBRIS], dtype=np.uint8), size=(size, size), p=p)
    if nodata:
        mask[:, 20:23] = UNLABELED
        mask[:, 90:92] = UNLABELED
        mask[40:70, 40:70] = UNLABELED
    return mask


def square_scene(seed: int, flip: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A 60x60 clean-ice square on background in a 128-px patch, and that with ``flip`` of all
    pixels set to random classes (a weak model's speckle)."""
    truth = np.zeros((128, 128), dtype=np.uint8)
    truth[30:90, 40:100] = CLEAN_ICE
    rng = np.random.default_rng(seed)
    noisy_mask = truth.copy()
    flipped = rng.random(truth.shape) < flip
    noisy_mask[flipped] = rng.choice(np.array([BACKGROUND, CLEAN_ICE, DEBRIS], dtype=np.uint8), size=flipped.sum())
    return truth, noisy_mask


def small_parts(mask: np.ndarray, min_pixels: int) -> list[tuple[int, np.ndarray]]:
    """(class, part mask) of every 8-connected part below ``min_pixels``."""
    found = []
    for code in np.unique(mask):
        if code == UNLABELED:
            continue
        labels, n = ndimage.label(mask == code, structure=EIGHT)
        sizes = np.bincount(labels.ravel())
        found += [(int(code), labels == k) for k in range(1, n + 1) if sizes[k] < min_pixels]
    return found


def touches_other_class(mask: np.ndarray, part: np.ndarray, code: int) -> bool:
    ring = ndimage.binary_dilation(part, structure=EIGHT) & ~part
    return bool(((mask[ring] != code) & (mask[ring] != UNLABELED)).any())


# --- min_pixels_for_area --------------------------------------------------------------------------

def test_min_pixels_for_area():
    assert min_pixels_for_area(10_000, 30, 30) == 12  # GLIMS 0.01 km2 on Landsat: 11.1 -> 12
    assert min_pixels_for_area(10_000, 30, -30) == 12  # a north-up transform's negative height
    assert min_pixels_for_area(1_800, 30, 30) == 2  # exact multiples are not rounded up
    assert min_pixels_for_area(900, 30, 30) == 1
    assert min_pixels_for_area(901, 30, 30) == 2
    assert min_pixels_for_area(0.01e6, 10, 10) == 100  # km2 given as a float product
    assert min_pixels_for_area(20_000, 15, 15) == 89  # 88.9
    assert min_pixels_for_area(0, 30, 30) == 0
    with pytest.raises(ValueError):
        min_pixels_for_area(10_000, 0, 30)
    with pytest.raises(ValueError):
        min_pixels_for_area(-1, 30, 30)


# --- smoothing ------------------------------------------------------------------------------------

def test_smoothing_removes_isolated_pixels_and_keeps_straight_edges():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = CLEAN_ICE  # a straight vertical edge
    mask[16:48, 32:48] = DEBRIS  # a debris block with straight edges against both
    expected = mask.copy()
    specks = [(5, 5, CLEAN_ICE), (10, 20, DEBRIS), (50, 40, BACKGROUND), (58, 60, DEBRIS), (30, 40, CLEAN_ICE)]
    for row, col, code in specks:
        mask[row, col] = code
    out = smooth_classes(mask)
    for row, col, _ in specks:
        assert out[row, col] == expected[row, col]
    # only the block's two convex corners away from the edge (and their mirror) may round off
    changed = np.argwhere(out != expected)
    assert len(changed) <= 4, changed
    assert (out[:, :31] == BACKGROUND).all() and (out[:, 49:] == CLEAN_ICE).all()
    assert (out[17:47, 32:48] == DEBRIS).all()


def test_smoothing_ties_keep_the_pixel_and_nodata_never_votes():
    # three stripes, one row each: the middle pixel's window holds 3 of each class -> it keeps its own
    mask = np.array([[1, 1, 1], [2, 2, 2], [0, 0, 0]], dtype=np.uint8)
    assert smooth_classes(mask)[1, 1] == DEBRIS
    # a speck in a nodata gap: nothing votes against it
    gap = np.full((9, 9), UNLABELED, dtype=np.uint8)
    gap[4, 4] = DEBRIS
    gap[:, 0] = BACKGROUND
    out = smooth_classes(gap, radius=2, iterations=3)
    assert out[4, 4] == DEBRIS
    assert np.array_equal(out == UNLABELED, gap == UNLABELED)


def test_smoothing_leaves_nodata_and_the_input_alone():
    mask = noisy(128, 0)
    before = mask.copy()
    out = smooth_classes(mask, radius=2, iterations=2)
    assert np.array_equal(mask, before)
    assert np.array_equal(out == UNLABELED, mask == UNLABELED)
    assert smooth_classes(mask, radius=0) is not mask and np.array_equal(smooth_classes(mask, radius=0), mask)


# --- minimum mapping unit -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_pixels", [5, 12, 40])
def test_no_part_below_the_unit_after_cleaning(seed, min_pixels):
    mask = noisy(128, seed)
    before = mask.copy()
    out = clean_prediction(mask, min_pixels)
    assert np.array_equal(mask, before)  # the input is not modified
    assert out.dtype == np.uint8 and out.shape == mask.shape
    assert np.array_equal(out == UNLABELED, mask == UNLABELED)  # nodata untouched, nothing becomes nodata
    for code, part in small_parts(out, min_pixels):
        # the documented exception only: a part ringed by nodata or the patch edge
        assert not touches_other_class(out, part, code), (code, int(part.sum()))


@pytest.mark.parametrize("seed", [3, 4])
def test_no_part_below_the_unit_without_smoothing_and_without_nodata(seed):
    mask = noisy(96, seed, nodata=False)
    out = remove_small_parts(mask, 12)
    assert small_parts(out, 12) == []
    assert set(np.unique(out)) <= {BACKGROUND, CLEAN_ICE, DEBRIS}


def test_small_parts_take_the_class_around_them():
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[5:30, 5:30] = CLEAN_ICE
    mask[10:12, 10:12] = DEBRIS  # 4 px of debris inside clean ice
    mask[35, 35] = DEBRIS  # a speck on background
    mask[20, 4] = DEBRIS  # a speck just outside the ice: touches background 5 times, clean ice 3 times
    mask[0:2, 38:40] = CLEAN_ICE  # 4 px in the corner
    out = remove_small_parts(mask, 5)
    assert (out[10:12, 10:12] == CLEAN_ICE).all()
    assert out[35, 35] == BACKGROUND
    assert out[20, 4] == BACKGROUND
    assert (out[0:2, 38:40] == BACKGROUND).all()
    assert small_parts(out, 5) == []
    assert np.array_equal(remove_small_parts(mask, 1), mask)
    assert np.array_equal(remove_small_parts(mask, 0), mask)


def test_parts_are_8_connected():
    mask = np.zeros((20, 20), dtype=np.uint8)
    idx = np.arange(2, 14)
    mask[idx, idx] = DEBRIS  # a diagonal line: one 8-connected part of 12 px
    mask[idx[:-1], idx[:-1] + 5] = DEBRIS  # another of 11 px
    out = remove_small_parts(mask, 12)
    assert (out[idx, idx] == DEBRIS).all()
    assert (out[idx[:-1], idx[:-1] + 5] == BACKGROUND).all()


def test_nested_small_parts_resolve_in_later_passes():
    # a 1-px debris speck inside a 3x3 background ring inside a big clean-ice block: the speck
    # touches only the (small) ring at first
    mask = np.full((30, 30), CLEAN_ICE, dtype=np.uint8)
    mask[10:13, 10:13] = BACKGROUND
    mask[11, 11] = DEBRIS
    out = remove_small_parts(mask, 12)
    assert (out == CLEAN_ICE).all()


def test_a_patch_of_tiny_parts_ends_as_one_class():
    rng = np.random.default_rng(5)
    mask = rng.choice(np.array([0, 1, 2], dtype=np.uint8), size=(6, 6), p=[0.6, 0.3, 0.1])
    out = remove_small_parts(mask, 100)  # no part can ever reach the unit: the cluster rule applies
    assert len(np.unique(out)) == 1
    assert out[0, 0] == np.bincount(mask.ravel()).argmax()


def test_specks_ringed_by_nodata_keep_their_class():
    mask = np.full((20, 20), UNLABELED, dtype=np.uint8)
    mask[:, :5] = BACKGROUND
    mask[10, 12] = DEBRIS  # alone in the gap
    mask[3, 12:14] = CLEAN_ICE  # a small cluster of two classes in the gap
    mask[3, 14] = DEBRIS
    out = remove_small_parts(mask, 12)
    assert out[10, 12] == DEBRIS
    assert (out[3, 12:15] == CLEAN_ICE).all()  # merged into its most common class
    assert np.array_equal(out == UNLABELED, mask == UNLABELED)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_clean_blob_keeps_its_area(seed):
    truth, mask = square_scene(seed, flip=0.1)
    out = clean_prediction(mask, 12)
    ice = out == CLEAN_ICE
    assert abs(int(ice.sum()) - 3600) <= 0.03 * 3600
    iou = (ice & (truth == CLEAN_ICE)).sum() / (ice | (truth == CLEAN_ICE)).sum()
    assert iou > 0.97
    assert (out != truth).mean() < 0.01  # from 10 % * 2/3 wrong pixels
    # without noise only the square's four corners round off
    assert int((clean_prediction(truth, 12) != truth).sum()) <= 4


def test_cleaning_is_fast_on_large_patches():
    mask = noisy(512, 9)
    start = time.perf_counter()
    clean_prediction(mask, 12)
    assert time.perf_counter() - start < 2.0  # about 0.1 s on one core


# --- simplified outlines --------------------------------------------------------------------------

def jagged_glacier(seed: int) -> np.ndarray:
    """A blob of clean ice with a ragged edge (radius 55 px, +-4 px over every few degrees), debris
    over its lower part along a ragged line (a random walk across the columns), on background, in
    a 160-px patch: pixel staircases everywhere, as a traced prediction has."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:160, :160]
    angle = np.arctan2(rows - 80, cols - 80)
    knots = np.linspace(-np.pi, np.pi, 73)
    wobble = rng.uniform(-4, 4, size=73)
    wobble[-1] = wobble[0]
    radius = 55 + np.interp(angle, knots, wobble)
    line = 95 + np.cumsum(rng.integers(-1, 2, size=160))  # the debris line: a row per column
    mask = np.zeros((160, 160), dtype=np.uint8)
    mask[np.hypot(rows - 80, cols - 80) < radius] = CLEAN_ICE
    mask[(mask == CLEAN_ICE) & (rows > line[None, :])] = DEBRIS
    return mask


@pytest.mark.parametrize("seed", [0, 1])
def test_simplified_outlines_are_a_valid_coverage_with_few_vertices(seed):
    mask = jagged_glacier(seed)
    exact = simplify_outlines(mask, 0)
    simple = simplify_outlines(mask, 1.5)
    assert [c for c, _ in simple] == sorted(c for c, _ in simple)
    polygons = [p for _, p in simple]
    assert all(p.is_valid and not p.is_empty for p in polygons)
    # the exact traces carry every pixel step; simplified, under a third remain (about a quarter)
    assert vertex_count(polygons) < 0.3 * vertex_count([p for _, p in exact]), (
        vertex_count(polygons), vertex_count([p for _, p in exact]))
    coverage = np.array(polygons, dtype=object)
    assert shapely.coverage_is_valid(coverage)  # edge-matched, no overlaps
    # every class covers the whole patch: no gap, no overlap, frame kept
    assert shapely.area(coverage).sum() == pytest.approx(mask.size, abs=1e-6)
    assert shapely.union_all(coverage).area == pytest.approx(mask.size, abs=1e-6)
    for code in (CLEAN_ICE, DEBRIS):
        area = sum(p.area for c, p in simple if c == code)
        assert area == pytest.approx((mask == code).sum(), rel=0.02)
    ice = shapely.union_all([p for c, p in simple if c == CLEAN_ICE])
    debris = shapely.union_all([p for c, p in simple if c == DEBRIS])
    assert ice.intersection(debris).area < 1e-6
    assert ice.intersection(debris).length > 40  # they do share a boundary
    assert ice.buffer(1e-6).union(debris.buffer(1e-6)).difference(shapely.union_all([ice, debris])).area < 0.01


def test_outlines_leave_out_nodata_and_follow_the_codes_asked_for():
    mask = clean_prediction(noisy(128, 7), 12)
    valid_area = int((mask != UNLABELED).sum())
    result = simplify_outlines(mask, 1.0)
    assert {c for c, _ in result} == {BACKGROUND, CLEAN_ICE, DEBRIS}
    polygons = np.array([p for _, p in result], dtype=object)
    assert shapely.is_valid(polygons).all()
    assert shapely.coverage_is_valid(polygons)
    assert shapely.union_all(polygons).area == pytest.approx(shapely.area(polygons).sum())  # no overlap
    assert shapely.area(polygons).sum() == pytest.approx(valid_area, rel=0.03)
    only = simplify_outlines(mask, 1.0, codes=[DEBRIS, CLEAN_ICE, UNLABELED])
    assert [c for c, _ in only] == sorted((c for c, _ in only), reverse=True)
    assert {c for c, _ in only} == {DEBRIS, CLEAN_ICE}
    # the classes asked for are simplified with the rest: the same geometries as in the full set
    full = {(c, p.wkb) for c, p in result}
    assert all((c, p.wkb) in full for c, p in only)
    assert simplify_outlines(np.full((8, 8), UNLABELED, dtype=np.uint8), 1.0) == []


def test_outlines_keep_the_patch_frame():
    mask = clean_prediction(noisy(96, 11, nodata=False), 5)
    polygons = [p for _, p in simplify_outlines(mask, 2.0)]
    union = shapely.union_all(polygons)
    assert union.equals(shapely.box(0, 0, 96, 96))
    assert sum(p.area for p in polygons) == pytest.approx(96 * 96)
