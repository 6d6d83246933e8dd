"""The promotion gate: same validation set, n/a classes, no ratchet."""

import math
from itertools import pairwise

import pytest

from al_loop.gate import decide


def rows(clean, debris, glacier, support=(100, 100, 200)):
    out = {"background": {"iou": 0.9, "support": 1000}}
    for name, iou, n in zip(("clean_ice", "debris", "glacier"), (clean, debris, glacier), support, strict=True):
        out[name] = {"iou": None if n == 0 else iou, "support": n}
    return out


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
    assert "clean_ice IoU 0.500 < best 0.550 (v1)" in decision.summary
    assert "debris IoU 0.300 < best 0.330 (v2)" in decision.summary
    assert decision.rows["glacier"]["verdict"] == "ok"
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
    best = max(r["glacier"]["iou"] for r in served.values())
    assert min(r["glacier"]["iou"] for r in served.values()) >= best - 0.02


def test_first_model_and_binary_models():
    first = decide(rows(0.5, 0.3, 0.6), {}, 0.02, "s")
    assert first.passed and "nothing to compare" in first.summary
    binary = {"background": {"iou": 0.9, "support": 10}, "glacier": {"iou": 0.58, "support": 10}}
    decision = decide(binary, {"v1": rows(0.7, 0.5, 0.61)}, 0.02, "s")  # compared on the glacier row only
    assert not decision.passed and list(decision.rows) == ["glacier"]
