"""Confusion-matrix scores against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from al_loop.model.metrics import ConfusionMatrix, SegmentationScores, paired_iou_difference

PRED = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
TARGET = np.array([[0, 1, 2], [2, 255, 1]], dtype=np.uint8)
# Pairs (target, pred) once 255 is dropped: (0,0) (1,1) (2,1) (2,2) (1,0).


def test_counts_and_scores_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    # class 0: tp 1, labelled 1, predicted 2; class 1: tp 1, 2, 2; class 2: tp 1, 2, 1
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(cm.precision(), [1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(cm.recall(), [1, 1 / 2, 1 / 2])
    np.testing.assert_allclose(cm.f1(), [2 / 3, 1 / 2, 2 / 3])


def test_valid_mask_and_out_of_range_targets_are_ignored():
    cm = ConfusionMatrix(3)
    target = TARGET.copy()
    target[1, 2] = 3  # "glacier of unknown type": not a class of a 3-class model
    valid = np.ones_like(PRED, dtype=bool)
    valid[0, 0] = False
    cm.update(PRED, target, valid)
    # left: (1,1) (2,1) (2,2)
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert math.isnan(cm.iou()[0])  # class 0 is in neither prediction nor labels
    np.testing.assert_allclose(cm.iou()[1:], [1 / 2, 1 / 2])


def test_absent_class_is_nan_and_undefined_ratios_are_nan():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0, 1]), np.array([0, 2, 1]))
    iou, precision, recall, f1 = cm.iou(), cm.precision(), cm.recall(), cm.f1()
    assert math.isnan(iou[3]) and math.isnan(precision[3]) and math.isnan(recall[3]) and math.isnan(f1[3])
    assert iou[2] == 0 and recall[2] == 0 and f1[2] == 0  # labelled, never predicted
    assert math.isnan(precision[2])  # never predicted: precision undefined
    assert iou[1] == 1


def test_whole_set_not_average_of_batches():
    # batch a: one clean-ice pixel, found. batch b: three clean-ice pixels, all missed.
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(np.array([1, 0]), np.array([1, 0]))
    b.update(np.array([0, 0, 0, 0]), np.array([1, 1, 1, 0]))
    total = a + b
    assert total.iou()[1] == pytest.approx(1 / 4)  # averaging batch IoUs would say 1/2
    assert a.iou()[1] == 1 and b.iou()[1] == 0
    merged = ConfusionMatrix(2).merge(a).merge(b)
    np.testing.assert_array_equal(merged.matrix, total.matrix)
    np.testing.assert_array_equal(a.matrix, [[1, 0], [0, 1]])  # + leaves its operands alone


def test_as_dict_and_errors():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    scores = cm.as_dict(["background", "clean_ice", "debris"])
    expected = {"iou": pytest.approx(1 / 3), "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["clean_ice"] == expected
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        cm.as_dict(["a", "b"])
    with pytest.raises(ValueError, match=r"predicted classes must be in \[0, 3\)"):
        cm.update(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="does not match"):
        cm.update(PRED, TARGET[:1])
    with pytest.raises(ValueError, match="cannot merge"):
        cm.merge(ConfusionMatrix(2))


def _units(n, seed, hit=0.8):
    """Scores over ``n`` patches of 20 x 20 px whose glacier a model finds at rate ``hit``."""
    rng = np.random.default_rng(seed)
    scores = SegmentationScores(("background", "clean_ice", "debris"), 254)
    for unit in range(n):
        target = np.zeros((20, 20), np.int64)
        target[5:15, 5:15] = rng.integers(1, 3)
        pred = np.where(rng.random((20, 20)) < hit, target, 0)
        scores.update(pred, target, unit=unit)
    return scores


def test_iou_intervals_hold_the_estimate_narrow_with_more_patches_and_need_two():
    few, many = _units(4, 0).as_dict()["glacier"], _units(64, 0).as_dict()["glacier"]
    for row in (few, many):
        assert row["iou_low"] <= row["iou"] <= row["iou_high"]
    assert many["iou_high"] - many["iou_low"] < few["iou_high"] - few["iou_low"]
    one = _units(1, 0).as_dict()["glacier"]
    assert not np.isnan(one["iou"]) and np.isnan(one["iou_low"]) and np.isnan(one["iou_high"])
    merged = _units(4, 0).merge(_units(4, 1))  # the same patch ids: their counts add up
    assert len(merged.units) == 4 and merged.glacier.matrix.sum() == 2 * _units(4, 0).glacier.matrix.sum()


def test_a_paired_difference_cancels_what_two_models_share():
    ids, good = _units(30, 0, hit=0.9).unit_counts()
    _, bad = _units(30, 0, hit=0.7).unit_counts()
    d, low, high = paired_iou_difference(good["glacier"], bad["glacier"])
    assert 0 < low <= d <= high
    assert paired_iou_difference(good["glacier"], good["glacier"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same units"):
        paired_iou_difference(good["glacier"], bad["glacier"][:3])
    assert ids == list(range(30))
