"""The promotion gate: same validation set, n/a classes, no ratchet, paired differences."""

import math
from itertools import pairwise

import numpy as np
import pytest

from al_loop.evaluation import scores_record
from al_loop.gate import decide
from al_loop.model.metrics import SegmentationScores


def rows(clean, debris, glacier, support=(100, 100, 200)):
    """A record without per-patch counts (as versions from before the gate kept them)."""
    out = {"background": {"iou": 0.9, "support": 1000}}
    for name, iou, n in zip(("clean_ice", "debris", "glacier"), (clean, debris, glacier), support, strict=True):
        out[name] = {"iou": None if n == 0 else iou, "support": n}
    return {"val": out}


def scored(predictions, targets):
    """The record of a model that predicted ``predictions`` on validation patches ``targets``."""
    scores = SegmentationScores(("background", "clean_ice", "debris"), 254)
    for k, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
        scores.update(pred, target, unit=k)
    return scores_record(scores, {})


def test_a_class_absent_from_validation_is_no_reason_to_reject():
    # No debris in the validation labels: the candidate predicts none (its IoU is n/a), the champion
    # paints stray debris (its IoU would read 0.0 if absent classes were scored). Neither counts.
    candidate = rows(0.60, math.nan, 0.62, support=(100, 0, 100))
    champion = rows(0.58, 0.0, 0.60, support=(100, 0, 100))
    decision = decide(candidate, {"v1": champion}, 0.02, "set", champion="v1")
    assert decision.passed, decision.summary
    assert decision.rows["debris"]["verdict"].startswith("n/a")
    assert "debris: n/a" in decision.summary


def test_worse_than_the_margin_is_rejected_naming_the_row_and_the_best_version():
    decision = decide(rows(0.50, 0.30, 0.60), {"v1": rows(0.55, 0.31, 0.61), "v2": rows(0.53, 0.33, 0.62)}, 0.02, "s",
                      champion="v2")
    assert not decision.passed
    assert "clean_ice -0.050 (no interval: no paired validation patches) against v1" in decision.summary
    assert "debris -0.030 (no interval: no paired validation patches) against v2" in decision.summary
    assert decision.rows["glacier"]["verdict"] == "within the margin (no interval)"
    assert decision.rows["clean_ice"]["champion"] == pytest.approx(0.53)


def test_no_drift_over_five_candidates_each_0_019_worse():
    """With the old gate (compare with the last champion) every one of these would be promoted and
    quality would fall by 0.095; against the best any served version reached, the second falls."""
    candidates = [rows(0.60 - 0.019 * k, 0.40 - 0.019 * k, 0.65 - 0.019 * k) for k in range(6)]
    for before, after in pairwise(candidates):  # the ratchet: each against the last champion
        assert decide(after, {"last": before}, 0.02, "s").passed
    served = {"v1": candidates[0]}
    promoted = []
    for k, candidate in enumerate(candidates[1:], start=1):
        champion = f"v{len(served)}"
        decision = decide(candidate, served, 0.02, "s", champion=champion)
        if decision.passed:
            served[f"v{len(served) + 1}"] = candidate
            promoted.append(k)
    assert promoted == [1]
    best = max(r["val"]["glacier"]["iou"] for r in served.values())
    assert min(r["val"]["glacier"]["iou"] for r in served.values()) >= best - 0.02


def test_first_model_and_binary_models():
    first = decide(rows(0.5, 0.3, 0.6), {}, 0.02, "s")
    assert first.passed and "nothing to compare" in first.summary
    binary = {"background": {"iou": 0.9, "support": 10}, "glacier": {"iou": 0.58, "support": 10}}
    decision = decide({"val": binary}, {"v1": rows(0.7, 0.5, 0.61)}, 0.02, "s")  # compared on the glacier row only
    assert not decision.passed and list(decision.rows) == ["glacier"]


def _patches(n, seed=0):
    """``n`` validation patches of 32 x 32 px, each with some clean ice and debris."""
    rng = np.random.default_rng(seed)
    targets = []
    for _ in range(n):
        t = np.zeros((32, 32), np.uint8)
        r, c = rng.integers(4, 20, 2)
        t[r : r + 10, c : c + 10] = 1
        t[r + 6 : r + 10, c : c + 10] = 2
        targets.append(t)
    return targets


def _spoil(target, pixels, rng):
    """A prediction that misses ``pixels`` glacier pixels of the target."""
    pred = target.copy()
    glacier = np.flatnonzero(target.ravel() > 0)
    pred.ravel()[rng.choice(glacier, size=min(pixels, len(glacier)), replace=False)] = 0
    return pred


def test_two_validation_patches_that_disagree_cannot_reject_a_candidate():
    """One patch much better, one worse: the point difference is beyond the margin, but on two
    patches the interval spans it, so the candidate is not rejected (and no gain is claimed)."""
    targets, rng = _patches(2), np.random.default_rng(1)
    champion = scored([_spoil(targets[0], 60, rng), _spoil(targets[1], 0, rng)], targets)
    candidate = scored([_spoil(targets[0], 0, rng), _spoil(targets[1], 90, rng)], targets)
    decision = decide(candidate, {"v1": champion}, 0.02, "s", champion="v1")
    glacier = decision.rows["glacier"]
    assert glacier["difference"] < -0.02 and glacier["low"] < -0.02 < 0 < glacier["high"]
    assert decision.passed and glacier["verdict"] == "no difference shown"
    assert "paired over 2 patches" in decision.summary and "better" not in decision.summary


def test_a_consistent_loss_on_many_patches_is_rejected_and_a_consistent_gain_is_called_one():
    targets, rng = _patches(12), np.random.default_rng(2)
    good = scored([_spoil(t, 2, rng) for t in targets], targets)
    bad = scored([_spoil(t, 30, rng) for t in targets], targets)
    worse = decide(bad, {"v1": good}, 0.02, "s", champion="v1")
    assert not worse.passed and worse.rows["glacier"]["high"] < -0.02
    assert "paired over 12 patches) against v1: worse by more than 0.02" in worse.summary
    better = decide(good, {"v1": bad}, 0.02, "s", champion="v1")
    assert better.passed and better.rows["glacier"]["verdict"] == "better" and better.rows["glacier"]["low"] > 0
