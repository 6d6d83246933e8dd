"""Pre-labels worth correcting: what was sent BEFORE the pre-label cleanup against what is sent now.

    python benchmarks/prelabels.py [--quick] [--out DIR] [--predictions NPZ]

Runs the README's walkthrough through the CLI in a throwaway workspace (``init``, ``ingest
synthetic``, ``train``, ``ingest synthetic --unlabelled``; the profile ``init`` picks here, no
config edit), predicts every patch of the pool scene with the champion as the ML backend does
(``backends.predictor.predict_masks``) and compares each pre-label with the pool scene's exact
labels (regenerated from its seed: ``al_loop.synthetic.generate``). ``--predictions`` reuses the
``pool_predictions.npz`` an earlier run saved under ``--out`` (no walkthrough, no training).

* BEFORE (what was sent before the cleanup): the raw prediction mask as the brush pre-label, and
  polygons by the old method (:func:`_old_polygons`, a copy of the old
  ``backends.results.mask_to_polygon_results``: parts under ``MIN_PART_PX`` left out, each
  4-connected part traced and simplified on its own by Douglas-Peucker 1 px).
* AFTER (what ``backends.predictor.predict_patch_ids`` sends now): the mask cleaned by
  ``al_loop.prelabels.clean_prediction`` at the product defaults (``BackendConfig``:
  ``min_mapping_unit_m2`` on the scene's pixel size, ``smoothing_radius``, one pass) and
  polygons by today's ``backends.results.mask_to_polygon_results(mask, min_part_px=MIN_PART_PX)``
  (coverage simplification), read back with ``results_to_mask`` as Label Studio's annotation would be.
* Other cleaning settings (the raw mask included) follow as a sweep, all with AFTER polygons; a
  second table sweeps today's polygon tolerance (``simplify_tolerance_px``) on the AFTER mask.

Per task (a pool patch; mean and median over patches): parts (8-connected parts of any class),
polygon vertices (points of the glacier polygons), and the edit share: the share of valid pixels
whose class differs from the truth, i.e. what an annotator must repaint, for the brush pre-label
(the mask itself) and for the polygon pre-label (the polygons read back). Pixel accuracy is 1 - the
mask's edit share; glacier IoU is pooled over the patches. The last line is ``prelabels:
parts/task A -> B, polygon vertices/task C -> D, edit share (brush) E -> F, edit share (polygons)
G -> H`` (BEFORE -> AFTER, means). ``--quick`` trains for 3 epochs (``AL_LOOP_TRAINING_MAX_EPOCHS``):
a smoke run, not figures.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rasterio.features import rasterize, shapes
from rich.console import Console
from rich.table import Table
from scipy import ndimage
from shapely.geometry import Polygon, shape
from sqlalchemy import select
from sqlalchemy.orm import joinedload
from typer.testing import CliRunner

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, UNLABELED
from al_loop.config import BackendConfig, open_workspace
from al_loop.io.labels import PAINT_ORDER
from al_loop.prelabels import clean_prediction, min_pixels_for_area, vertex_count
from al_loop.synthetic import generate
from al_loop.workspace import open_store
from backends.predictor import MIN_PART_PX, ModelHolder, predict_masks
from backends.results import mask_to_polygon_results, results_to_mask
from cli import app
from db import registry
from db.models import Patch, Scene

console = Console(width=200)

_PRODUCT = BackendConfig()  # the shipped defaults: what predict_patch_ids cleans with
BEFORE = "BEFORE: raw mask, old polygons"
AFTER = (f"AFTER: r{_PRODUCT.smoothing_radius}x1 + {_PRODUCT.min_mapping_unit_m2 / 1e6:g} km2 (product defaults)")
SETTINGS = {  # name: (mapping unit km2, majority radius, passes) or None (the raw prediction); old polygons?
    BEFORE: (None, True),
    AFTER: ((_PRODUCT.min_mapping_unit_m2 / 1e6, _PRODUCT.smoothing_radius, 1), False),
    "raw mask": (None, False),
    "0.01 km2 only": ((0.01, 0, 0), False),
    "r1x1 + 0.05 km2": ((0.05, 1, 1), False),
    "r2x1 + 0.01 km2": ((0.01, 2, 1), False),
}
TOLERANCES = (0.0, 1.0, 1.5, 2.0, 3.0)  # simplify_tolerance_px of today's polygons (default 2)


def run(env: dict[str, str], *args) -> float:
    start = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exit_code:
        raise SystemExit(f"al-loop {' '.join(map(str, args))} failed:\n{result.output}")
    return time.perf_counter() - start


def walkthrough(root: Path, quick: bool) -> dict[str, float]:
    env = {"AL_LOOP_WORKSPACE": str(root), "COLUMNS": "200"}
    if quick:
        env["AL_LOOP_TRAINING_MAX_EPOCHS"] = "3"
    times = {
        "init": run(env, "init"),
        "ingest": run(env, "ingest", "synthetic", "-q"),
        "train": run(env, "train", "-q"),
    }
    times["pool"] = run(env, "ingest", "synthetic", "--unlabelled", "-q")
    ws = open_workspace(root)
    store = open_store(ws)
    with store.session() as session:
        if registry.champion(session) is None:  # a 3-epoch model the gate turned down (quick)
            run(env, "models", "promote", "v1")
    store.dispose()
    return times


def walkthrough_workspace(given: Path | None, tmp: str | Path, quick: bool, status: Console) -> Path:
    """``given`` (a workspace that has been through the walkthrough), else one walked through now
    under ``tmp``."""
    if given is not None:
        return given
    root = Path(tmp) / "ws"
    with status.status("walkthrough: init, ingest synthetic, train, ingest synthetic --unlabelled"):
        walkthrough(root, quick)
    return root


def pool_truth(session) -> tuple[list[Patch], list[np.ndarray], list[float]]:
    """The pool scene's patches (scene loaded), the exact labels of each window (regenerated from
    the scene's seed; unlabeled past the scene's edge) and the scene's transform."""
    scene = next(s for s in session.scalars(select(Scene).order_by(Scene.id)) if not s.details.get("labelled", True))
    patches = list(session.scalars(select(Patch).options(joinedload(Patch.scene))
                                   .where(Patch.scene_id == scene.id).order_by(Patch.id)))
    _, labels, _ = generate(scene.height, scene.width, scene.details["seed"])
    truths = []
    for p in patches:
        window = np.full((p.height, p.width), UNLABELED, dtype=np.uint8)
        part = labels[p.row_off : p.row_off + p.height, p.col_off : p.col_off + p.width]
        window[: part.shape[0], : part.shape[1]] = part
        truths.append(window)
    return patches, truths, list(scene.transform)


def served_champion(root: Path) -> tuple:
    """The workspace at ``root``, its store and the champion loaded as the ML backend serves it."""
    ws = open_workspace(root)
    store = open_store(ws)
    holder = ModelHolder(ws, store)
    holder.refresh()
    return ws, store, holder


def pool_predictions(root: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[int], tuple[float, float], str]:
    """The champion's masks of the pool scene's patches, their truth windows, patch ids, pixel size."""
    ws, store, holder = served_champion(root)
    served = holder.current
    with store.session() as session:
        patches, truths, transform = pool_truth(session)
    masks, _ = predict_masks(ws, served, patches, holder.device, ws.config.backend.batch_size)
    store.dispose()
    return masks, truths, [p.id for p in patches], (abs(transform[0]), abs(transform[4])), served.name


def parts(mask: np.ndarray) -> int:
    return sum(ndimage.label(mask == code, structure=np.ones((3, 3), bool))[1]
               for code in (BACKGROUND, CLEAN_ICE, DEBRIS))


def edit_share(shown: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """Share of valid pixels an annotator must repaint: the pre-label's class is not the truth's."""
    known = valid & (truth != UNLABELED)
    return float((shown[known] != truth[known]).sum() / max(known.sum(), 1))


def _old_polygons(mask: np.ndarray, simplify_tolerance_px: float = 1.0, min_hole_px: float = 4.0,
                  min_part_px: int = MIN_PART_PX) -> tuple[int, np.ndarray]:
    """BEFORE: vertices of the polygon pre-label as it was sent and the mask it reads back as.

    The baseline, copied from ``backends.results.mask_to_polygon_results`` before the pre-label
    cleanup changed it: per glacier class, 4-connected parts under ``min_part_px`` pixels removed,
    each part traced on its own (``rasterio.features.shapes``, 4-connectivity) and simplified by
    Douglas-Peucker (``simplify(1.0, preserve_topology=True)``), holes under ``min_hole_px`` dropped.
    Vertices: the exteriors' and kept holes' (the old code then cut the holes open into hole-free
    pieces, which covers the same pixels). Read back as ``results_to_mask`` does: pixel centres,
    debris over clean ice (``PAINT_ORDER``), background where no polygon lies.
    """
    vertices, painted = 0, []
    for code in (c for c in PAINT_ORDER if c not in (BACKGROUND, UNLABELED)):
        inside = mask == code
        if not inside.any():
            continue
        if min_part_px > 1:
            labelled, _ = ndimage.label(inside)
            inside &= (np.bincount(labelled.ravel()) >= min_part_px)[labelled]
        for geometry, _ in shapes(inside.astype(np.uint8), mask=inside, connectivity=4):
            outline = shape(geometry).simplify(simplify_tolerance_px, preserve_topology=True)
            holes = [ring for ring in outline.interiors if Polygon(ring).area >= min_hole_px]
            polygon = Polygon(outline.exterior, holes)
            vertices += vertex_count([polygon])
            painted.append((polygon, code))
    if not painted:
        return 0, np.full(mask.shape, BACKGROUND, dtype=np.uint8)
    return vertices, rasterize(painted, out_shape=mask.shape, fill=BACKGROUND, dtype=np.uint8)


def new_polygons(mask: np.ndarray, tolerance: float | None = None) -> tuple[int, np.ndarray]:
    """AFTER: vertices of today's polygon pre-label (``to_prediction``: the points sent, holes cut
    open) and the mask it reads back as; ``tolerance`` None: today's default."""
    kwargs = {} if tolerance is None else {"simplify_tolerance_px": tolerance}
    results = mask_to_polygon_results(mask, min_part_px=MIN_PART_PX, **kwargs)
    vertices = sum(len(r["value"]["points"]) for r in results)
    painted = results_to_mask(results, *mask.shape) if results else np.full(mask.shape, BACKGROUND, dtype=np.uint8)
    return vertices, painted


def iou(shown: list[np.ndarray], truths: list[np.ndarray], valid: list[np.ndarray]) -> float:
    """Glacier (clean ice or debris) IoU pooled over the patches' valid pixels."""
    inter = union = 0
    for s, t, v in zip(shown, truths, valid, strict=True):
        known = v & (t != UNLABELED)
        a, b = (s != BACKGROUND) & known, (t != BACKGROUND) & known
        inter, union = inter + (a & b).sum(), union + (a | b).sum()
    return float(inter / max(union, 1))


def evaluate(masks, truths, pixel_size) -> tuple[list[dict], list[dict]]:
    rows, sweep = [], []
    for name, (setting, old) in SETTINGS.items():
        started = time.perf_counter()
        if setting is None:
            cleaned, unit = [m.copy() for m in masks], 0
        else:
            km2, radius, passes = setting
            unit = min_pixels_for_area(km2 * 1e6, *pixel_size)
            cleaned = [clean_prediction(m, unit, radius, passes) for m in masks]
        clean_s = (time.perf_counter() - started) / len(masks)
        for k, (mask, truth) in enumerate(zip(cleaned, truths, strict=True)):
            valid = masks[k] != UNLABELED
            started = time.perf_counter()
            vertices, painted = _old_polygons(mask) if old else new_polygons(mask)
            polygons_s = time.perf_counter() - started
            rows.append({"setting": name, "polygons": "old" if old else "new", "unit_px": unit, "task": k,
                         "parts": parts(mask), "vertices": vertices, "edit_mask": edit_share(mask, truth, valid),
                         "edit_polygons": edit_share(painted, truth, valid), "clean_s": clean_s,
                         "polygons_s": polygons_s, "mask": mask, "valid": valid})
    after = [r for r in rows if r["setting"] == AFTER]
    for tolerance in TOLERANCES:
        for r, truth in zip(after, truths, strict=True):
            vertices, painted = new_polygons(r["mask"], tolerance)
            sweep.append({"tolerance": tolerance, "task": r["task"], "vertices": vertices,
                          "edit_polygons": edit_share(painted, truth, r["valid"])})
    return rows, sweep


def _stat(rows: list[dict], key: str, fmt: str = ".0f") -> str:
    values = [r[key] for r in rows]
    return f"{statistics.fmean(values):{fmt}} / {statistics.median(values):{fmt}}"


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="train 3 epochs: checks that it runs")
    parser.add_argument("--out", type=Path, help="folder for prelabels.csv, prelabels_tolerance.csv and the "
                                                    "predictions (pool_predictions.npz)")
    parser.add_argument("--predictions", type=Path, help="a pool_predictions.npz of an earlier run: no walkthrough")
    args = parser.parse_args()
    began = time.perf_counter()
    if args.predictions:
        saved = np.load(args.predictions)
        masks, truths, patch_ids = list(saved["masks"]), list(saved["truths"]), saved["patch_ids"].tolist()
        pixel_size, version, times = tuple(saved["pixel_size"].tolist()), str(saved["version"]), {}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with console.status("walkthrough: init, ingest synthetic, train, ingest synthetic --unlabelled"):
                times = walkthrough(Path(tmp) / "ws", args.quick)
            with console.status("predicting the pool"):
                masks, truths, patch_ids, pixel_size, version = pool_predictions(Path(tmp) / "ws")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.out / "pool_predictions.npz", masks=np.stack(masks), truths=np.stack(truths),
                                patch_ids=np.array(patch_ids), pixel_size=np.array(pixel_size), version=version)
    with console.status("cleaning and tracing"):
        rows, sweep = evaluate(masks, truths, pixel_size)
    total = time.perf_counter() - began

    table = Table(title=f"pre-labels of {version} on the pool scene: {len(masks)} tasks of {masks[0].shape[0]} px, "
                        f"{pixel_size[0]:g} m pixels; mean / median per task; walkthrough "
                        + (", ".join(f"{k} {v:.0f} s" for k, v in times.items()) or f"from {args.predictions}")
                        + f"; {total:.0f} s in all")
    for column in ("setting", "unit px", "polygons", "parts", "polygon vertices", "edit share mask (brush)",
                   "pixel acc. change", "glacier IoU", "edit share polygons", "ms / task clean", "ms / task polygons"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    by_setting = {name: [r for r in rows if r["setting"] == name] for name in SETTINGS}
    before_edit = _mean(by_setting[BEFORE], "edit_mask")
    for name, group in by_setting.items():
        table.add_row(name, str(group[0]["unit_px"]), group[0]["polygons"], _stat(group, "parts"),
                      _stat(group, "vertices"), _stat(group, "edit_mask", ".4f"),
                      f"{(before_edit - _mean(group, 'edit_mask')) * 100:+.2f} pp",
                      f"{iou([r['mask'] for r in group], truths, [r['valid'] for r in group]):.3f}",
                      _stat(group, "edit_polygons", ".4f"), f"{group[0]['clean_s'] * 1000:.0f}",
                      f"{_mean(group, 'polygons_s') * 1000:.0f}")
        if name == AFTER:
            table.add_section()
    console.print(table)

    tol_table = Table(title="today's polygon tolerance (simplify_tolerance_px) on the AFTER mask; glacier polygons; "
                            "mean / median per task")
    for column in ("tolerance px", "polygon vertices", "edit share polygons"):
        tol_table.add_column(column, justify="right")
    for tolerance in TOLERANCES:
        group = [s for s in sweep if s["tolerance"] == tolerance]
        tol_table.add_row(f"{tolerance:g}", _stat(group, "vertices"), _stat(group, "edit_polygons", ".4f"))
    console.print(tol_table)

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        keys = [k for k in rows[0] if k not in ("mask", "valid")]
        with open(args.out / "prelabels.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["patch_id", *keys])
            writer.writeheader()
            for r in rows:
                writer.writerow({"patch_id": patch_ids[r["task"]], **{k: r[k] for k in keys}})
        with open(args.out / "prelabels_tolerance.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["patch_id", *sweep[0]])
            writer.writeheader()
            for s in sweep:
                writer.writerow({"patch_id": patch_ids[s["task"]], **s})
        console.print(f"per-task figures: {args.out / 'prelabels.csv'}, {args.out / 'prelabels_tolerance.csv'}")
    before, after = by_setting[BEFORE], by_setting[AFTER]
    print(f"prelabels: parts/task {_mean(before, 'parts'):.0f} -> {_mean(after, 'parts'):.0f}, "
          f"polygon vertices/task {_mean(before, 'vertices'):.0f} -> {_mean(after, 'vertices'):.0f}, "
          f"edit share (brush) {_mean(before, 'edit_mask'):.3f} -> {_mean(after, 'edit_mask'):.3f}, "
          f"edit share (polygons) {_mean(before, 'edit_polygons'):.3f} -> {_mean(after, 'edit_polygons'):.3f}")


if __name__ == "__main__":
    main()
