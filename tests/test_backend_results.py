"""Label Studio results <-> label masks: round trips, holes, overlaps, strict validation."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER, UNLABELED
from al_loop.sampling.regions import Region
from backends.label_config import (
    ALL_LABELS,
    BRUSH_NAME,
    IMAGE_NAME,
    LABEL_CODES,
    LABEL_NAMES,
    NO_GLACIER,
    POLYGON_NAME,
    VERDICT_NAME,
    VIEW_DATA_KEYS,
    label_config,
)
from backends.results import (
    EmptyAnnotation,
    ResultError,
    mask_to_brush_results,
    mask_to_polygon_results,
    read_results,
    region_to_result,
    results_to_mask,
    validate_with_sdk,
)

H, W = 48, 64  # not square: a transposition would show


def _disc(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _all_classes_mask() -> np.ndarray:
    """Clean ice, debris, background and an unlabeled corner, none of them symmetric."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[_disc((H, W), 20, 24, 14, 20)] = CLEAN_ICE
    mask[_disc((H, W), 34, 44, 8, 12)] = DEBRIS
    mask[:6, 50:] = UNLABELED
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_label_config_names_and_labels():
    brush_only = LabelInterface(label_config())
    both = LabelInterface(label_config(polygons=True))
    assert brush_only.get_control(BRUSH_NAME).labels == list(ALL_LABELS)
    assert both.get_control(POLYGON_NAME).labels == list(ALL_LABELS)
    assert both.get_object(IMAGE_NAME).tag == "Image"
    # the reference views: one read-only Image each, no control draws on them
    for key in VIEW_DATA_KEYS:
        assert brush_only.get_object(key).tag == "Image"
    assert all(control.to_name == [IMAGE_NAME] for control in both.controls)
    assert brush_only.get_control(VERDICT_NAME).tag.lower() == "choices"
    with pytest.raises(Exception, match="not found"):
        brush_only.get_control(POLYGON_NAME)
    assert set(LABEL_CODES.values()) == {BACKGROUND, CLEAN_ICE, DEBRIS}


def test_brush_round_trip_is_exact_for_every_class():
    mask = _all_classes_mask()
    results = mask_to_brush_results(mask, include_background=True)

    assert [r["value"]["brushlabels"] for r in results] == [
        [LABEL_NAMES[CLEAN_ICE]], [LABEL_NAMES[DEBRIS]], [LABEL_NAMES[BACKGROUND]]
    ]
    for r in results:
        assert (r["from_name"], r["to_name"], r["type"]) == (BRUSH_NAME, IMAGE_NAME, "brushlabels")
        assert (r["original_width"], r["original_height"]) == (W, H)
        # Label Studio's layout, read without our decoder: RGBA row-major, alpha 255 where painted.
        alpha = decode_rle(r["value"]["rle"]).reshape(H, W, 4)[:, :, 3]
        code = LABEL_CODES[r["value"]["brushlabels"][0]]
        np.testing.assert_array_equal(alpha, np.where(mask == code, 255, 0))
    np.testing.assert_array_equal(results_to_mask(results, H, W, complete=False), mask)


def test_brush_round_trip_of_complete_mask_needs_no_background_region():
    mask = _all_classes_mask()
    mask[mask == UNLABELED] = BACKGROUND
    results = mask_to_brush_results(mask)
    assert len(results) == 2
    np.testing.assert_array_equal(results_to_mask(results, H, W), mask)


def test_unlabeled_gives_no_region_and_codes_without_label_are_refused():
    assert mask_to_brush_results(np.full((H, W), UNLABELED, dtype=np.uint8)) == []
    assert mask_to_polygon_results(np.full((H, W), UNLABELED, dtype=np.uint8)) == []
    with pytest.raises(ValueError, match=r"\[3\]"):
        mask_to_brush_results(np.full((H, W), GLACIER, dtype=np.uint8))


def test_polygon_round_trip_of_blobby_shapes():
    shape = (96, 128)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[_disc(shape, 40, 50, 30, 42)] = CLEAN_ICE
    mask[_disc(shape, 70, 95, 18, 26)] = DEBRIS
    results = mask_to_polygon_results(mask, simplify_tolerance_px=1.0)

    assert sorted(r["value"]["polygonlabels"][0] for r in results) == [
        "Clean ice", "Debris-covered glacier"
    ]
    for r in results:
        points = np.array(r["value"]["points"])
        assert len(points) >= 3 and points.min() >= 0 and points.max() <= 100
        assert not np.array_equal(points[0], points[-1])  # the ring is not closed by a repeat
    back = results_to_mask(results, *shape)
    for code in (CLEAN_ICE, DEBRIS, BACKGROUND):
        assert _iou(back == code, mask == code) > 0.95
    # Simplification worked: far fewer points than the traced pixel outline.
    assert sum(len(r["value"]["points"]) for r in results) < 150


def test_polygon_points_are_percent_of_width_and_height():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[12:24, 16:48] = CLEAN_ICE  # rows 12-24 of 48, columns 16-48 of 64
    (region,) = mask_to_polygon_results(mask)
    points = np.array(region["value"]["points"])
    assert points[:, 0].min() == 25 and points[:, 0].max() == 75
    assert points[:, 1].min() == 25 and points[:, 1].max() == 50


def test_multipart_class_gives_one_region_per_part():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:15, 5:20] = CLEAN_ICE
    mask[30:45, 40:60] = CLEAN_ICE
    mask[15, 20] = CLEAN_ICE  # touches the first part only diagonally: a third part
    results = mask_to_polygon_results(mask, simplify_tolerance_px=0)
    assert len(results) == 3
    assert all(r["value"]["polygonlabels"] == ["Clean ice"] for r in results)
    np.testing.assert_array_equal(results_to_mask(results, H, W), mask)


def test_large_holes_are_cut_open_small_ones_filled():
    mask = np.full((H, W), CLEAN_ICE, dtype=np.uint8)
    mask[_disc((H, W), 24, 20, 8, 8)] = BACKGROUND  # a nunatak: kept as a hole
    mask[_disc((H, W), 24, 48, 6, 6)] = DEBRIS  # debris inside clean ice: a hole too
    mask[40, 8] = BACKGROUND  # a one-pixel speck: filled

    clean = [r for r in mask_to_polygon_results(mask, simplify_tolerance_px=0)
             if r["value"]["polygonlabels"] == ["Clean ice"]]
    assert len(clean) >= 3  # two holes cut: the outline is split at least twice

    back = results_to_mask(mask_to_polygon_results(mask, simplify_tolerance_px=0), H, W)
    expected = mask.copy()
    expected[40, 8] = CLEAN_ICE
    np.testing.assert_array_equal(back, expected)


def test_overlaps_follow_paint_order_and_uncovered_pixels_follow_complete():
    def square(label: str, x0: float, y0: float, x1: float, y1: float) -> dict:
        points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        return {"from_name": POLYGON_NAME, "to_name": IMAGE_NAME, "type": "polygonlabels",
                "value": {"points": points, "polygonlabels": [label]}}

    results = [
        square("Debris-covered glacier", 25, 0, 75, 50),
        square("Clean ice", 0, 0, 50, 50),
        square("Background", 0, 0, 25, 25),
    ]
    complete = results_to_mask(results, H, W)
    assert complete[5, 20] == DEBRIS  # debris over clean ice, whatever the region order
    assert complete[5, 5] == BACKGROUND  # an explicit background region carves clean ice
    assert complete[20, 5] == CLEAN_ICE
    assert complete[40, 60] == BACKGROUND
    assert results_to_mask(results, H, W, complete=False)[40, 60] == UNLABELED


def _brush_results() -> list[dict]:
    return mask_to_brush_results(_all_classes_mask())


def _polygon_results() -> list[dict]:
    return mask_to_polygon_results(_all_classes_mask())


def _edited(results: list[dict], index: int, edit: Callable[[dict], object]) -> list[dict]:
    results = copy.deepcopy(results)
    edit(results[index])
    return results


def _set_value(**fields) -> Callable[[dict], object]:
    return lambda region: region["value"].update(fields)


def _set_point(k: int, point: list) -> Callable[[dict], object]:
    return lambda region: region["value"]["points"].__setitem__(k, point)


_OTHER_SIZE_RLE = mask_to_brush_results(np.ones((H, W + 1), np.uint8))[0]["value"]["rle"]


@pytest.mark.parametrize(
    ("results", "index", "edit", "problem"),
    [
        (_brush_results, 1, lambda r: r["value"].update(rle=r["value"]["rle"][:40]),
         "malformed rle for a 64x48 RGBA mask: the stream ends"),
        (_brush_results, 1, _set_value(rle=_OTHER_SIZE_RLE), "malformed rle for a 64x48 RGBA mask: holds 12480 "
                                                             "values, expected 12288"),
        (_brush_results, 1, _set_value(rle=[0, 300, 2]), "malformed rle: must be a list of int"),
        (_brush_results, 1, lambda r: r.update(original_width=W + 1),
         "original_width/height 65x48 do not match the patch 64x48"),
        (_brush_results, 1, _set_value(brushlabels=["Glacier"]), "unknown label 'Glacier'"),
        (_brush_results, 0, _set_value(brushlabels=["Clean ice", "Background"]),
         "value.brushlabels must hold exactly one label"),
        (_brush_results, 1, lambda r: r.update(type="keypointlabels"),
         "unknown result type 'keypointlabels'"),
        (_brush_results, 1, lambda r: r.update(type="rectanglelabels"), "a rectangle must come from the region box"),
        (_brush_results, 1, lambda r: r.update(from_name=POLYGON_NAME), "from_name/to_name"),
        (_polygon_results, 1, _set_point(0, [100.5, 3]),
         r"polygon point 0 \[100.5, 3\] lies outside 0-100"),
        (_polygon_results, 1, _set_point(2, [-1, 3]), "polygon point 2 .* lies outside 0-100"),
        (_polygon_results, 1, _set_point(0, ["a", 3]), "polygon point 0 is not an"),
        (_polygon_results, 1, _set_value(points=[[1, 1], [2, 2]]),
         "a polygon needs at least 3 points, got 2"),
    ],
)
def test_bad_results_raise_result_error_naming_region_and_problem(results, index, edit, problem):
    with pytest.raises(ResultError, match=f"region {index}: {problem}"):
        results_to_mask(_edited(results(), index, edit), H, W)


def test_points_a_hair_past_100_are_accepted():
    results = _edited(_polygon_results(), 0, _set_point(0, [100.0004, 0]))
    assert results_to_mask(results, H, W).shape == (H, W)


def test_generated_predictions_pass_the_sdk_validation():
    config = label_config(polygons=True)
    mask = _all_classes_mask()
    for results in (mask_to_brush_results(mask, include_background=True),
                    mask_to_polygon_results(mask, include_background=True)):
        assert results
        validate_with_sdk(config, {"result": results, "score": 0.5})

    bad = _edited(_brush_results(), 0, _set_value(brushlabels=["Glacier"]))
    with pytest.raises(ResultError, match="Region 0"):
        validate_with_sdk(config, {"result": bad, "score": 0.5})
    with pytest.raises(ResultError, match="'polygon' not found"):
        validate_with_sdk(label_config(), {"result": _polygon_results()})



def test_polygon_predictions_can_leave_out_specks():
    mask = np.zeros((H, W), np.uint8)
    mask[5:25, 5:25] = CLEAN_ICE
    mask[30, 40] = mask[35, 50] = CLEAN_ICE  # single-pixel specks
    assert len(mask_to_polygon_results(mask)) == 3
    kept = mask_to_polygon_results(mask, min_part_px=16)
    assert len(kept) == 1 and results_to_mask(kept, H, W)[10, 10] == CLEAN_ICE


def test_a_region_box_bounds_what_an_annotation_labels():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 2  # debris on the right half, the box covers the top-right quarter
    results = mask_to_brush_results(mask) + [region_to_result(Region(0, 32, 32, 64), 64, 64)]
    validate_with_sdk(label_config(polygons=True), {"result": results, "score": 0.5})
    out = results_to_mask(results, 64, 64)
    assert (out[:32, 32:] == 2).all() and (out[32:, :] == 255).all() and (out[:, :32] == 255).all()
    no_box = results_to_mask(mask_to_brush_results(mask), 64, 64)
    assert (no_box == mask).all()  # no box: the whole patch, as before
    moved = region_to_result(Region(32, 0, 64, 32), 64, 64)  # the expert moved the box: theirs counts
    two = results_to_mask(
        mask_to_brush_results(mask) + [moved, region_to_result(Region(0, 32, 32, 64), 64, 64)], 64, 64
    )
    assert (two[32:, :32] == 0).all() and (two[:32, 32:] == 2).all() and (two[:32, :32] == 255).all()


@pytest.mark.parametrize("change, message", [
    (lambda v: v.update(rotation=30), "must not be rotated"),
    (lambda v: v.update(width="wide"), "numeric x, y, width and height"),
    (lambda v: v.update(height=0), "positive width and height"),
])
def test_bad_region_boxes_are_named(change, message):
    box = region_to_result(Region(0, 0, 32, 32), 64, 64)
    change(box["value"])
    with pytest.raises(ResultError, match=f"result region 0: .*{message}"):
        results_to_mask([box], 64, 64)


def test_a_region_box_between_pixel_centres_is_refused():
    box = region_to_result(Region(0, 0, 32, 32), 64, 64)
    box["value"].update(x=10.3, width=0.2)  # narrower than a pixel, between two centres (10.16 and 11.72 %)
    with pytest.raises(ResultError, match="cover no pixel"):
        results_to_mask([box], 64, 64)


def _paint(mask: np.ndarray, label: str) -> dict:
    result = mask_to_brush_results(mask.astype(np.uint8) * CLEAN_ICE)[0]
    result["value"]["brushlabels"] = [label]
    return result


def _verdict_result() -> dict:
    return {"from_name": VERDICT_NAME, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": [NO_GLACIER]}}


def test_unsure_and_cloud_paint_are_unlabeled_and_counted():
    ice = np.zeros((H, W), bool)
    ice[10:30, 10:40] = True
    unsure = np.zeros((H, W), bool)
    unsure[20:25, 30:50] = True  # over the ice's edge and beyond: it wins over the ice
    cloud = np.zeros((H, W), bool)
    cloud[40:, :8] = True
    read = read_results([_paint(ice, "Clean ice"), _paint(unsure, "Unsure"), _paint(cloud, "Cloud / no data")], H, W)
    assert read.ignored == {"unsure": int(unsure.sum()), "cloud": int(cloud.sum())}
    assert (read.mask[unsure | cloud] == UNLABELED).all()
    assert (read.mask[ice & ~unsure] == CLEAN_ICE).all()
    assert (read.mask[~(ice | unsure | cloud)] == BACKGROUND).all()
    assert not read.no_glacier


def test_an_empty_submission_is_no_label_unless_no_glacier_is_chosen():
    with pytest.raises(EmptyAnnotation, match=NO_GLACIER):
        read_results([], H, W)
    box = region_to_result(Region(0, 0, 24, 32), H, W)
    with pytest.raises(EmptyAnnotation):
        read_results([box], H, W)  # the box of a region query is not paint
    read = read_results([_verdict_result()], H, W)
    assert read.no_glacier and (read.mask == BACKGROUND).all()
    cloud = np.zeros((H, W), bool)
    cloud[:5] = True
    read = read_results([_verdict_result(), _paint(cloud, "Cloud / no data")], H, W)
    assert (read.mask[cloud] == UNLABELED).all() and (read.mask[~cloud] == BACKGROUND).all()


def test_no_glacier_wins_over_class_paint_but_not_over_unsure_or_cloud():
    ice = np.zeros((H, W), bool)
    ice[5:9, 5:9] = True  # a pre-label the expert did not erase
    cloud = np.zeros((H, W), bool)
    cloud[20:, :10] = True
    read = read_results([_verdict_result(), _paint(ice, "Clean ice"), _paint(cloud, "Cloud / no data")], H, W)
    assert read.no_glacier and (read.mask[~cloud] == BACKGROUND).all() and (read.mask[cloud] == UNLABELED).all()
    bad = _verdict_result()
    bad["value"]["choices"] = ["Maybe"]
    with pytest.raises(ResultError, match="Maybe"):
        read_results([bad], H, W)
