"""A round handed out as a folder, when no Label Studio is configured: the chosen patches'
views (:mod:`al_loop.io.views`), a CSV manifest (rank, patch, window, the region to label, why it
was chosen, score components) and the footprints as GeoJSON (WGS84, as RFC 7946 asks)."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.warp import transform_geom


@dataclass
class HandoutPatch:
    rank: int
    patch_id: int
    scene: str
    row_off: int
    col_off: int
    score: float
    components: dict[str, float]
    bounds: tuple[float, float, float, float] | None  # in the scene CRS
    crs: str | None
    quicklooks: list[Path]
    split: str | None = None  # val: the label will validate, never train; None: decided when labelled
    region: list[int] | None = None  # region query: [row0, col0, row1, col1] to label; None: the whole patch
    why: str = ""  # why the sampler chose it, in words (al_loop.sampling.explain)


SPLIT_WORDS = {"val": "validation", "train": "training", None: "decided when labelled"}


def write_handout(folder: Path, round_number: int, strategy: str, model: str | None,
                  patches: list[HandoutPatch]) -> Path:
    """Write the round's folder (replaced whole if it exists) and return it."""
    tmp = folder.with_name(f".{folder.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "quicklooks").mkdir(parents=True)
    names = sorted({name for p in patches for name in p.components})
    with open(tmp / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "patch_id", "scene", "row_off", "col_off", "label_used_for", "label_region",
                         "why_chosen", "score", *names, "quicklooks"])
        for p in patches:
            copied = []
            for look in p.quicklooks:
                target = tmp / "quicklooks" / f"{p.rank:03d}_{look.name}"
                shutil.copyfile(look, target)
                copied.append(f"quicklooks/{target.name}")
            writer.writerow([p.rank, p.patch_id, p.scene, p.row_off, p.col_off, SPLIT_WORDS[p.split],
                             "whole patch" if p.region is None else " ".join(map(str, p.region)), p.why,
                             f"{p.score:.6f}", *(f"{p.components.get(n, float('nan')):.6f}" for n in names),
                             ";".join(copied)])
    features = [_feature(p, p.bounds, p.crs, round_number) for p in patches if p.bounds and p.crs]
    (tmp / "footprints.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "name": f"round {round_number} ({strategy}, model {model or 'none'})",
         "features": features}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _feature(p: HandoutPatch, bounds: tuple[float, float, float, float], crs: str, round_number: int
             ) -> dict[str, Any]:
    minx, miny, maxx, maxy = bounds
    ring = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
    geometry = transform_geom(CRS.from_wkt(crs), "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    return {"type": "Feature", "geometry": geometry,
            "properties": {"round": round_number, "rank": p.rank, "patch_id": p.patch_id, "scene": p.scene,
                           "label_used_for": SPLIT_WORDS[p.split], "why_chosen": p.why, "score": p.score,
                           **p.components}}
