"""What the experts' time bought: each model version against the expert seconds behind it.

A version trained on a set of labels; those from Label Studio carry the annotation's lead time.
The curve puts each version's IoU on the current validation set (the same set for every version,
so the points compare) against the summed lead time of the labels it trained on. Labels without a
lead time (inventories, imported masks) are counted apart: they cost someone's time too, but not
one the loop measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from al_loop.config import Workspace
from al_loop.evaluation import current_validation_set, version_scores
from al_loop.model.metrics import INTERVAL_LEVEL
from db.registry import versions
from db.session import Store

ROWS = ("clean_ice", "debris", "glacier")


@dataclass
class EffortPoint:
    version: str
    status: str
    labels: int  # labels it trained on
    timed_labels: int  # of those, labels with a lead time
    expert_seconds: float  # their summed lead time
    iou: dict[str, float | None]  # per row on the current validation set; None: n/a or cannot run
    rows: dict[str, dict[str, Any]]  # the rows themselves, intervals included ({} where it cannot run)

    @property
    def expert_minutes(self) -> float:
        return self.expert_seconds / 60


def effort_points(workspace: Workspace, store: Store) -> tuple[list[EffortPoint], str]:
    """Every version with its expert time and validation IoU, oldest first; and a line naming the
    validation set they were scored on."""
    with store.session() as session:
        found = versions(session)
        spent = {}
        for v in found:
            times = [label.details.get("lead_time") for label in v.labels]
            timed = [float(t) for t in times if t is not None]
            spent[v.id] = (len(times), len(timed), sum(timed))
    vset = current_validation_set(workspace, store)
    scores = version_scores(workspace, store, found, vset)
    points = []
    for v in sorted(found, key=lambda v: v.created_at):
        rows = (scores.get(v.name) or {}).get("val", {})
        iou = {r: (rows.get(r) or {}).get("iou") for r in ROWS}
        points.append(EffortPoint(v.name, v.status, *spent[v.id], iou, rows))
    return points, f"validation set {vset.id[:8]} ({len(vset.patches)} patches)"


def plot_effort(points: list[EffortPoint], path: Path, title: str) -> Path:
    """IoU against expert minutes, one line per row, one marker per version."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    minutes = [p.expert_minutes for p in points]
    for row, colour in zip(ROWS, ("#66C2FF", "#D95F02", "#1B9E77"), strict=True):
        kept = [(m, p) for m, p in zip(minutes, points, strict=True) if p.iou[row] is not None]
        if kept:
            x, y = [m for m, _ in kept], np.array([p.iou[row] for _, p in kept], dtype=float)
            low = np.array([p.rows[row].get("iou_low") or np.nan for _, p in kept], dtype=float)
            high = np.array([p.rows[row].get("iou_high") or np.nan for _, p in kept], dtype=float)
            ax.plot(x, y, marker="o", color=colour, label=row.replace("_", " "))
            ax.errorbar(x, y, yerr=np.nan_to_num(np.abs([y - low, high - y])), fmt="none", color=colour, alpha=0.5,
                        capsize=3)
    for m, p in zip(minutes, points, strict=True):
        if p.iou["glacier"] is not None:
            ax.annotate(p.version, (m, p.iou["glacier"]), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xlabel("expert minutes behind the version (Label Studio lead times)")
    ax.set_ylabel(f"IoU on the current validation set ({INTERVAL_LEVEL:.0%} interval)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
