"""`al-loop change`: glacier area per inventory glacier, class and date, and its change between
dates, with an uncertainty band.

Each scene's class mosaic comes from :func:`al_loop.export.scene_mosaic` (expert labels, then
inventories, then the model). Within each inventory glacier (its outline, from ``--inventory``,
reprojected to each scene's grid) and per date:

* areas of clean ice, debris and glacier (the two and glacier of unknown type together);
* a band ``[low, high]`` around the glacier area: ``low`` leaves out the glacier pixels the model
  is unsure of (calibrated top-class probability below :data:`SURE`), ``high`` adds the unsure
  non-glacier pixels and the pixels without data (SLC-off gaps, nodata) inside the outline;
* the valid fraction of the outline. A date below ``min_valid`` for a glacier is flagged and
  left out of that glacier's changes and of the regional totals, never averaged in.

The change between two dates is the difference of areas, its band the difference of the bands'
far ends (``low2 - high1`` to ``high2 - low1``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from itertools import pairwise
from pathlib import Path

import numpy as np

from al_loop.classes import CLEAN_ICE, DEBRIS, GLACIER
from al_loop.config import Workspace
from al_loop.export import CLASS_NODATA, MODEL, pixel_area_grid, rasterize_inventory, scene_mosaic
from al_loop.io.inventory import read_inventory
from db.session import Store

SURE = 0.6  # calibrated top-class probability below which a model pixel counts as unsure
MIN_VALID = 0.7  # share of a glacier's outline that must hold data for a date to count


@dataclass
class GlacierDate:
    glacier: str
    scene_id: int
    scene: str
    acquired: str
    sensor: str  # a series may join Landsat 5, 7 and 8/9 scenes
    clean_km2: float
    debris_km2: float
    glacier_km2: float
    low_km2: float
    high_km2: float
    valid_fraction: float
    flagged: bool


def measure(workspace: Workspace, store: Store, scene_ids: list[int], inventory_path: Path,
            inventory_id: str | None = None, min_valid: float = MIN_VALID,
            version_name: str | None = None) -> list[GlacierDate]:
    """Areas per inventory glacier and scene (see the module docstring), by date."""
    rows = []
    for scene_id in scene_ids:
        built = scene_mosaic(workspace, store, scene_id, version_name)
        if not built.meta["acquired"]:
            raise ValueError(f"scene {scene_id} ({built.meta['scene']}) has no acquisition date: change needs dates "
                             "(name the file by its Landsat scene id, or ingest with --date)")
        inventory = read_inventory(inventory_path, built.crs_wkt, inventory_id)
        classes = built.mosaic.classes
        owners = rasterize_inventory(inventory, built.transform, classes.shape)
        area = pixel_area_grid(built.crs_wkt, built.transform, classes.shape)
        glacier = np.isin(classes, (CLEAN_ICE, DEBRIS, GLACIER))
        unsure = (built.mosaic.source == MODEL) & (built.mosaic.confidence < SURE * 255)
        nodata = classes == CLASS_NODATA
        n = len(inventory.ids) + 1

        def km2(where: np.ndarray) -> np.ndarray:  # called in this iteration only
            return np.bincount(owners[where], weights=area[where], minlength=n) / 1e6  # noqa: B023

        outline, clean, debris = km2(owners > 0), km2(classes == CLEAN_ICE), km2(classes == DEBRIS)
        total, missing = km2(glacier), km2(nodata)
        unsure_in, unsure_out = km2(glacier & unsure), km2(~glacier & ~nodata & unsure)
        for i, glacier_id in enumerate(inventory.ids, start=1):
            valid = 1.0 - missing[i] / outline[i] if outline[i] else 0.0
            rows.append(GlacierDate(glacier_id, scene_id, built.meta["scene"], built.meta["acquired"],
                                    built.meta["sensor"], clean[i], debris[i], total[i], total[i] - unsure_in[i],
                                    total[i] + unsure_out[i] + missing[i], valid, valid < min_valid))
    return sorted(rows, key=lambda r: (r.glacier, r.acquired))


@dataclass
class Change:
    glacier: str  # an inventory id, or "region"
    start: str
    end: str
    delta_km2: float
    low_km2: float
    high_km2: float
    glaciers: int  # glaciers counted (1 for one glacier; the region: those unflagged at both dates)


def changes(rows: list[GlacierDate]) -> list[Change]:
    """Change between consecutive unflagged dates of each glacier, and of the region (the sum
    over glaciers unflagged at both dates)."""
    by_glacier: dict[str, list[GlacierDate]] = {}
    for row in rows:
        by_glacier.setdefault(row.glacier, []).append(row)
    out = []
    for glacier, dated in by_glacier.items():
        kept = [r for r in dated if not r.flagged]
        for a, b in pairwise(kept):
            out.append(Change(glacier, a.acquired, b.acquired, b.glacier_km2 - a.glacier_km2,
                              b.low_km2 - a.high_km2, b.high_km2 - a.low_km2, 1))
    dates = sorted({r.acquired for r in rows})
    for start, end in pairwise(dates):
        pairs = [(a, b) for dated in by_glacier.values()
                 for a in dated if a.acquired == start and not a.flagged
                 for b in dated if b.acquired == end and not b.flagged]
        if pairs:
            out.append(Change("region", start, end, sum(b.glacier_km2 - a.glacier_km2 for a, b in pairs),
                              sum(b.low_km2 - a.high_km2 for a, b in pairs),
                              sum(b.high_km2 - a.low_km2 for a, b in pairs), len(pairs)))
    return out


def write_csv(path: Path, items: list) -> Path:
    rows = [vars(item) for item in items]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["glacier"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(path: Path, rows: list[GlacierDate], title: str) -> Path:
    """Glacier area by date with its band; flagged dates as hollow markers, not joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    when = np.array([date.fromisoformat(r.acquired) for r in rows], dtype="datetime64[D]")
    flags = np.array([r.flagged for r in rows], dtype=bool)
    kept = [r for r in rows if not r.flagged]
    if kept:
        ax.errorbar(when[~flags], [r.glacier_km2 for r in kept],
                    yerr=[[r.glacier_km2 - r.low_km2 for r in kept], [r.high_km2 - r.glacier_km2 for r in kept]],
                    fmt="o-", color="#1f77b4", capsize=3, label="glacier area (band: unsure pixels, no data)")
        ax.plot(when[~flags], [r.debris_km2 for r in kept], "s--", color="#D95F02", label="debris-covered")
    flagged = [r for r in rows if r.flagged]
    if flagged:
        ax.plot(when[flags], [r.glacier_km2 for r in flagged], "o", mfc="none", color="grey",
                label="flagged: too little of the outline has data")
    ax.set_ylabel("km²")
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def region_rows(rows: list[GlacierDate]) -> list[GlacierDate]:
    """The region as one glacier per date: sums over the glaciers unflagged on that date (a date
    is flagged when any glacier was, so that the line never jumps by a left-out glacier)."""
    out = []
    for acquired in sorted({r.acquired for r in rows}):
        dated = [r for r in rows if r.acquired == acquired]
        ok = [r for r in dated if not r.flagged]
        out.append(GlacierDate("region", dated[0].scene_id, dated[0].scene, acquired, dated[0].sensor,
                               sum(r.clean_km2 for r in ok), sum(r.debris_km2 for r in ok),
                               sum(r.glacier_km2 for r in ok), sum(r.low_km2 for r in ok),
                               sum(r.high_km2 for r in ok), min(r.valid_fraction for r in dated),
                               len(ok) < len(dated)))
    return out


def run(workspace: Workspace, store: Store, scene_ids: list[int], inventory_path: Path, out: Path,
        inventory_id: str | None = None, min_valid: float = MIN_VALID) -> tuple[list[GlacierDate], list[Change], Path]:
    """Measure, write ``areas.csv``, ``changes.csv`` and the plots into ``out``; return them."""
    if len(scene_ids) < 2:
        raise ValueError(f"change needs at least two scenes of the same ground, found {len(scene_ids)}")
    rows = measure(workspace, store, scene_ids, inventory_path, inventory_id, min_valid)
    found = changes(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "areas.csv", rows)
    write_csv(out / "changes.csv", found)
    (out / "glaciers").mkdir(exist_ok=True)
    for glacier in sorted({r.glacier for r in rows}):
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in glacier)
        plot(out / "glaciers" / f"{safe}.png", [r for r in rows if r.glacier == glacier], glacier)
    plot(out / "region.png", region_rows(rows), f"region: {len({r.glacier for r in rows})} glaciers")
    return rows, found, out
