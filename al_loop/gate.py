"""The promotion gate: is a candidate model not worse than what has been served?

Pure: figures in, a decision out. The caller makes sure every figure was measured on the same,
current validation set (the champion and every earlier served version are re-evaluated on it
when it changes). Rules:

* The rows judged are the glacier ones: clean ice, debris and glacier (the two together, which
  also scores "glacier of unknown type" labels); a binary model has the glacier row alone.
* A row without labelled pixels in validation is n/a for every model: no reason to reject.
* No ratchet: the candidate may fall at most ``margin`` below the *best* IoU any served version
  reached on this set, not merely below the current champion, so quality cannot drift down by
  almost the margin each round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GATE_ROWS = ("clean_ice", "debris", "glacier")


def _iou(rows: dict[str, dict[str, Any]], name: str) -> float:
    """The IoU of a row, NaN when the row is missing, has no labelled pixels, or is n/a."""
    row = rows.get(name)
    if not row or not row.get("support") or row.get("iou") is None:
        return math.nan
    return float(row["iou"])


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


def decide(candidate: dict[str, dict[str, Any]], served: dict[str, dict[str, dict[str, Any]]], margin: float,
           validation_set: str, champion: str | None = None) -> GateDecision:
    """Judge ``candidate``'s rows against ``served`` (version name -> rows), all on
    ``validation_set``. ``champion`` names the version served now, for the record."""
    rows: dict[str, dict[str, Any]] = {}
    failures, passes = [], []
    for name in GATE_ROWS:
        if name not in candidate:
            continue
        mine = _iou(candidate, name)
        record: dict[str, Any] = {"candidate": None if math.isnan(mine) else round(mine, 4)}
        if champion is not None and champion in served:
            theirs = _iou(served[champion], name)
            record["champion"] = None if math.isnan(theirs) else round(theirs, 4)
        if math.isnan(mine):
            record["verdict"] = f"n/a: no {name} pixels in the validation labels"
            rows[name] = record
            continue
        scored = {v: _iou(r, name) for v, r in served.items()}
        scored = {v: x for v, x in scored.items() if not math.isnan(x)}
        if not scored:
            record["verdict"] = "no served version to compare with"
            rows[name] = record
            continue
        best_version = max(scored, key=lambda v: scored[v])
        best = scored[best_version]
        record.update(best=round(best, 4), best_version=best_version, threshold=round(best - margin, 4))
        if mine < best - margin:
            record["verdict"] = "worse"
            failures.append(f"{name} IoU {mine:.3f} < best {best:.3f} ({best_version}) - {margin:g}")
        else:
            record["verdict"] = "ok"
            passes.append(f"{name} {mine:.3f} >= {best:.3f} ({best_version}) - {margin:g}")
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

    rows = [
        f"{row.replace('_', ' ')} {figure(r.get('champion')) + ' -> ' if before else ''}{figure(r.get('candidate'))}"
        for row, r in (decision.get("rows") or {}).items()
    ]
    against = f"IoU, {before} -> {name}" if before else f"IoU of {name}"
    where = f"on {metrics.get('val_patches')} validation patches"
    verdict = "promoted" if decision.get("passed") else "rejected"
    return f"{name} {verdict}: {against} {where}: {'; '.join(rows) or 'no glacier rows'}"
