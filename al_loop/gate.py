"""The promotion gate: is a candidate model not worse than what has been served?

Pure: figures in, a decision out. The caller makes sure every figure was measured on the same,
current validation set (the champion and every earlier served version are re-evaluated on it
when it changes). Rules:

* The rows judged are the glacier ones: clean ice, debris and glacier (the two together, which
  also scores "glacier of unknown type" labels); a binary model has the glacier row alone.
* A row without labelled pixels in validation is n/a for every model: no reason to reject.
* No ratchet: the candidate is compared with the *best* IoU any served version reached on this
  set, not merely with the current champion, so quality cannot drift down round by round.
* The comparison is the *paired* difference, candidate minus that version, on the same validation
  patches, with its bootstrap interval over those patches (:func:`paired_iou_difference`): patches
  that are hard for one model are hard for the other, so the pair says more than two separate
  intervals. A row fails when the whole interval lies below ``-margin``: the candidate is worse by
  more than the margin beyond the noise of the validation set. So a validation set of two patches
  can neither promote a "gain" that is noise as a gain (it says: no difference shown) nor reject
  a real gain because one patch went the other way. Without per-patch figures (one validation
  patch, or a version recorded before the gate kept them) the point difference is judged alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from al_loop.model.metrics import INTERVAL_LEVEL, iou_text, paired_iou_difference

GATE_ROWS = ("clean_ice", "debris", "glacier")


def _iou(rows: dict[str, dict[str, Any]], name: str) -> float:
    """The IoU of a row, NaN when the row is missing, has no labelled pixels, or is n/a."""
    row = rows.get(name)
    if not row or not row.get("support") or row.get("iou") is None:
        return math.nan
    return float(row["iou"])


def _unit_counts(record: dict[str, Any], name: str) -> dict[Any, list[int]] | None:
    """Per validation patch, the ``[tp, fp, fn]`` of a row, where the record keeps them."""
    units = record.get("val_units")
    if not units or name not in units.get("counts", {}):
        return None
    return dict(zip(units["ids"], units["counts"][name], strict=True))


def paired(candidate: dict[str, Any], other: dict[str, Any], name: str) -> tuple[float, float, float, int]:
    """Candidate minus ``other`` on row ``name``: the difference, its interval (NaN without per-patch
    figures for both) and the number of patches paired."""
    difference = round(_iou(candidate["val"], name) - _iou(other["val"], name), 9)  # 0.60 - 0.62 is -0.02
    mine, theirs = _unit_counts(candidate, name), _unit_counts(other, name)
    if mine is None or theirs is None or set(mine) != set(theirs):
        return difference, math.nan, math.nan, 0
    ids = sorted(mine, key=str)
    d, low, high = paired_iou_difference(np.array([mine[i] for i in ids]).reshape(-1, 3),
                                         np.array([theirs[i] for i in ids]).reshape(-1, 3))
    return round(d, 9), low, high, len(ids)


def describe_difference(d: float, low: float, high: float, patches: int) -> str:
    """A paired difference in words: ``+0.031 (95% interval -0.010 to +0.072, 6 patches)``."""
    if math.isnan(low):
        return f"{d:+.3f} (no interval: {patches or 'no'} paired validation patches)"
    return f"{d:+.3f} ({INTERVAL_LEVEL:.0%} interval {low:+.3f} to {high:+.3f}, paired over {patches} patches)"


def describe_baseline(baseline: dict[str, Any]) -> str:
    """The threshold baseline a training recorded, and the model's paired difference from it, in words."""
    row = baseline["val"]["glacier"]
    low, high = (math.nan if v is None else v for v in (baseline["low"], baseline["high"]))
    return (f"baseline: the best single-channel threshold on the training patches, {baseline['rule']}, glacier IoU "
            f"{iou_text(row)} on the same validation pixels; model minus threshold "
            f"{describe_difference(baseline['difference'], low, high, baseline['paired_patches'])}")


@dataclass
class GateDecision:
    passed: bool
    summary: str
    validation_set: str
    margin: float
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary, "validation_set": self.validation_set,
                "margin": self.margin, "rows": self.rows}


def _verdict(d: float, low: float, high: float, margin: float) -> str:
    """worse (the only failing verdict), better, worse within the margin, or no difference shown."""
    if math.isnan(high):
        return "worse" if d < -margin else "within the margin (no interval)"
    if high < -margin:
        return "worse"
    if low > 0:
        return "better"
    return "worse within the margin" if high < 0 else "no difference shown"


def decide(candidate: dict[str, Any], served: dict[str, dict[str, Any]], margin: float,
           validation_set: str, champion: str | None = None) -> GateDecision:
    """Judge ``candidate``'s record (``val`` rows, ``val_units`` per-patch counts) against
    ``served`` (version name -> record), all on ``validation_set``. ``champion`` names the
    version served now, for the record."""
    rows: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    passes: list[str] = []
    for name in GATE_ROWS:
        if name not in candidate["val"]:
            continue
        mine = _iou(candidate["val"], name)
        record: dict[str, Any] = {"candidate": None if math.isnan(mine) else round(mine, 4)}
        if champion is not None and champion in served:
            theirs = _iou(served[champion]["val"], name)
            record["champion"] = None if math.isnan(theirs) else round(theirs, 4)
        if math.isnan(mine):
            record["verdict"] = f"n/a: no {name} pixels in the validation labels"
            rows[name] = record
            continue
        scored = {v: _iou(r["val"], name) for v, r in served.items()}
        scored = {v: x for v, x in scored.items() if not math.isnan(x)}
        if not scored:
            record["verdict"] = "no served version to compare with"
            rows[name] = record
            continue
        best_version = max(scored, key=lambda v: scored[v])
        d, low, high, patches = paired(candidate, served[best_version], name)
        record.update(best=round(scored[best_version], 4), best_version=best_version,
                      difference=round(d, 4), low=None if math.isnan(low) else round(low, 4),
                      high=None if math.isnan(high) else round(high, 4), paired_patches=patches)
        record["verdict"] = _verdict(d, low, high, margin)
        words = f"{name} {describe_difference(d, low, high, patches)} against {best_version}"
        worse = record["verdict"] == "worse"
        outcome = record["verdict"].replace("worse", f"worse by more than {margin:g}") if worse else \
            record["verdict"].replace("margin", f"margin {margin:g}")
        (failures if worse else passes).append(f"{words}: {outcome}")
        rows[name] = record
    if failures:
        summary = "rejected: " + "; ".join(failures)
    elif passes:
        summary = "promoted: " + "; ".join(passes)
    else:
        summary = "promoted: first model on this validation set, nothing to compare with"
    na = [n for n, r in rows.items() if str(r.get("verdict", "")).startswith("n/a")]
    if na:
        summary += f" ({', '.join(na)}: n/a, not in the validation labels)"
    return GateDecision(not failures, summary, validation_set, margin, rows)


JUDGING_HALF_WIDTH = 0.05


def too_small_to_judge(metrics: dict[str, Any], validation_fraction: float) -> str | None:
    """Why a version's validation set is too small to judge models by, with how many labelled
    patches would make it judge (in words); None when it judges. It judges when the interval of
    the glacier IoU is at most ``JUDGING_HALF_WIDTH`` either side; an interval narrows about as
    one over the square root of the patches, so the patches needed follow from today's width,
    and validation takes ``validation_fraction`` of new labels."""
    row = (metrics.get("val") or {}).get("glacier") or {}
    patches = int(metrics.get("val_patches") or 0)
    low, high = row.get("iou_low"), row.get("iou_high")
    if low is None or high is None:
        return (f"validated on {patches} patch{'es' if patches != 1 else ''}, too few for an interval of its IoU: "
                f"label at least {math.ceil(max(2 - patches, 1) / validation_fraction)} more patches")
    half = (high - low) / 2
    if half <= JUDGING_HALF_WIDTH:
        return None
    needed = math.ceil(patches * (half / JUDGING_HALF_WIDTH) ** 2)
    return (f"the glacier IoU's interval over {patches} validation patches is ±{half:.2f} wide, more than "
            f"±{JUDGING_HALF_WIDTH}: too small to tell models apart by less; about {needed} validation patches would "
            f"judge, so about {math.ceil((needed - patches) / validation_fraction)} more labelled patches")


# A version below any of these is served (something beats nothing) but flagged as provisional,
# so that experts read its pre-labels as a rough guess.
MIN_TRAIN_PATCHES = 10
MIN_VAL_PATCHES = 2
MIN_GLACIER_IOU = 0.5


def provisional(metrics: dict[str, Any]) -> str | None:
    """Why a version is trained on too little to trust (in words), or None."""
    reasons = []
    train, val = metrics.get("train_patches"), metrics.get("val_patches")
    if train is not None and train < MIN_TRAIN_PATCHES:
        reasons.append(f"trained on {train} patches")
    if val is not None and val < MIN_VAL_PATCHES:
        reasons.append(f"validated on {val} patch{'es' if val != 1 else ''}")
    glacier = _iou(metrics.get("val", {}), "glacier")
    if not math.isnan(glacier) and glacier < MIN_GLACIER_IOU:
        reasons.append(f"glacier IoU {glacier:.2f}")
    return "; ".join(reasons) or None  # no commas: Label Studio lists model versions comma-separated


def describe_change(name: str, metrics: dict[str, Any]) -> str:
    """What a training changed, in words: per glacier row, the IoU of the champion before it and of
    the new version on the same validation set (from the recorded gate decision), and the verdict."""
    decision = metrics.get("gate")
    if not isinstance(decision, dict) or "passed" not in decision:
        return f"{name}: no per-class comparison recorded (trained before the gate kept its figures)"
    before = metrics.get("champion_before")

    def figure(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def paired_text(r: dict[str, Any]) -> str:
        if r.get("difference") is None:
            return ""
        interval = "" if r.get("low") is None else f" [{r['low']:+.2f}, {r['high']:+.2f}]"
        return f" (paired with {r['best_version']}: {r['difference']:+.2f}{interval})"

    rows = [
        f"{row.replace('_', ' ')} {figure(r.get('champion')) + ' -> ' if before else ''}{figure(r.get('candidate'))}"
        f"{paired_text(r)}"
        for row, r in (decision.get("rows") or {}).items()
    ]
    against = f"IoU, {before} -> {name}" if before else f"IoU of {name}"
    where = f"on {metrics.get('val_patches')} validation patches"
    verdict = "promoted" if decision.get("passed") else "rejected"
    return f"{name} {verdict}: {against} {where}: {'; '.join(rows) or 'no glacier rows'}"
