"""What a few expert labels buy a first model: glacier and debris IoU at 8, 16 and 32 labelled patches.

    python benchmarks/few_labels.py [--quick] [--seeds 0,1,2,3,4] [--budgets 8,16,32] [--jobs 2] [--out DIR]

Two kinds of ground, each per seed a pool scene and a test scene at a disjoint place (never seen,
never tuned on):

* ``built-in``: the built-in synthetic scenes (15 channels), a 1024-px pool and a 512-px test scene;
* ``4-band``: the small real-like scene of ``benchmarks/first_model.py`` (B1-B4 and ndvi, no DEM,
  800 x 655 px), pool and test alike.

The pool is ingested into a workspace with the defaults of ``al-loop init`` on this machine, but
128-px patches so that 32 labelled patches fit a small scene. A fifth of its patches, as whole
256-px blocks (the stratified draw of the product), is labelled for validation: the same for every
budget and variant, and not counted. The other patches are shuffled once per seed; budget k labels
the first k of them (a random seed set that shows glacier). Every variant then trains a first
model from scratch through the product's own training run:

* ``paper weights``: the loss weights of the paper (background 0.2, clean ice 0.6, debris 0.9);
* ``defaults``: today's defaults (class weights from the labels' own shares);
* ``semi-supervised``: the defaults and ``training.semi_supervised`` (the unlabelled pool too).

The baseline in the same run: the best single-channel threshold tuned on the same labelled
training pixels, scored on the same test pixels. Prints per ground, budget and variant the mean
and sd over seeds, paired gains with their sd and standard error, the minutes per training, a PNG
of the curves, and last the line
``glacier IoU at 16 labels: supervised X, semi-supervised Y, gain Z ± SD (paired, N seeds)``
(built-in ground). ``--quick`` runs a tiny model on tiny scenes to check that everything runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from al_loop import bands
from al_loop.config import Workspace, open_workspace
from al_loop.ingest import ingest_hkh_tile
from al_loop.model.baseline import threshold_scores, tune_threshold
from al_loop.model.checkpoints import load_version
from al_loop.model.data import split_samples
from al_loop.model.inference import pick_device
from al_loop.model.training import evaluate_samples
from al_loop.simulate import Ground, Oracle
from al_loop.synthetic import CRS, generate, make_scene
from al_loop.training_run import run_training
from al_loop.validation import Block, block_key, choose_validation_blocks
from al_loop.workspace import init_workspace, open_store
from db import queries, registry

console = Console(width=200)
GROUNDS = ("built-in", "4-band")
FOUR_BANDS = ["B1", "B2", "B3", "B4", "ndvi"]  # what `al-loop ingest scene` makes of a B1-B4 Level-1 folder
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "paper weights": {"training": {"class_weights": [0.2, 0.6, 0.9]}},
    "defaults": {},
    "semi-supervised": {"training": {"semi_supervised": True}},
}
ROWS = ("glacier", "debris")


@dataclass
class Setup:
    patch: int = 128
    builtin_pool: int = 1024
    builtin_test: int = 512
    small: tuple[int, int] = (655, 800)
    validation_block: int = 256
    overrides: dict[str, dict[str, Any]] | None = None  # on top of the defaults (quick: a tiny model)


def _write(path: Path, pixels: np.ndarray, names: list[str], seed: int) -> Path:
    transform = from_origin(500_000.0 + 40_000 * seed, 3_100_000.0, 30.0, 30.0)
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1], count=len(names),
                       dtype="float32", crs=CRS, transform=transform, tiled=True, blockxsize=256,
                       blockysize=256) as dst:
        dst.write(pixels.astype(np.float32))
        dst.descriptions = tuple(names)
    return path


def ground(kind: str, seed: int, folder: Path, setup: Setup) -> Ground:
    """A pool image with its truth, and a test region at another place."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "built-in":
        pool = make_scene(folder, height=setup.builtin_pool, seed=100 + seed, name="pool")
        test_pixels, test_truth, _ = generate(setup.builtin_test, setup.builtin_test, 200 + seed)
        with rasterio.open(pool.label_raster) as src:
            truth = src.read(1)
        return Ground(pool.image, truth, test_pixels, list(bands.CHANNELS), test_truth)
    index = [bands.CHANNELS.index(c) for c in FOUR_BANDS]
    pixels, truth, _ = generate(*setup.small, 300 + seed)
    image = _write(folder / "pool.tif", pixels[index], FOUR_BANDS, seed)
    test_pixels, test_truth, _ = generate(*setup.small, 400 + seed)
    return Ground(image, truth, test_pixels[index], FOUR_BANDS, test_truth)


def template(root: Path, ground: Ground, seed: int, setup: Setup) -> tuple[Path, Oracle, list[int]]:
    """The pool workspace: validation labelled (the product's stratified draw of whole blocks), and
    the other patches in the order budgets label them (shuffled; the first 8 show glacier)."""
    oracle = Oracle(ground.truth)
    ws = init_workspace(root / "template", profile="cpu")
    _configure(ws, setup, {})
    store = open_store(ws)
    ingest_hkh_tile(ws, store, ground.pool_image, quiet=True)
    with store.session() as session:
        patches = [p for p in queries.all_patches(session) if not p.low_valid and (oracle.window(p) != 255).any()]
        blocks: dict[tuple, Block] = {}
        for p in patches:
            counts = np.bincount(oracle.window(p).ravel(), minlength=256)
            blocks.setdefault(block_key(p, setup.validation_block), Block()).add(
                p, {"background": int(counts[0]), "clean_ice": int(counts[1]), "debris": int(counts[2])})
        held = choose_validation_blocks(blocks, 0.2, seed)
        val = [p.id for key in held for p in blocks[key].patches]
        for p in patches:
            p.split = "val" if p.id in val else None
        others = [p.id for p in patches if p.id not in val]
        glacier = {p.id for p in patches if ((oracle.window(p) == 1) | (oracle.window(p) == 2)).any()}
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(others)]
    wanted = min(2, len(glacier & set(order)))  # a seed set a model can learn glacier from
    while len(glacier & set(order[:8])) < wanted:
        order = [int(i) for i in rng.permutation(order)]
    oracle.label(store, val)
    store.dispose()
    return root / "template", oracle, order


def _configure(ws: Workspace, setup: Setup, variant: dict[str, dict[str, Any]]) -> None:
    config = ws.config
    config.ingest.patch_size, config.ingest.quicklooks = setup.patch, False
    config.training.validation_routing = "train"  # validation is the template's
    config.training.loader_workers = 0  # each seed is a process on one core: loader processes would only contend
    for section, values in {**(setup.overrides or {}), **variant}.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)


def one_training(template_dir: Path, oracle: Oracle, order: list[int], budget: int, variant: str, ground: Ground,
                 work: Path, setup: Setup) -> dict[str, Any]:
    target = work / f"{variant.replace(' ', '-')}-{budget}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template_dir, target)
    ws = open_workspace(target, environ={})
    _configure(ws, setup, VARIANTS[variant])
    store = open_store(ws)
    with store.session() as session:
        for patch in queries.patches_by_id(session, order[:budget]):
            patch.split = "train"
    oracle.label(store, order[:budget])
    began = time.perf_counter()
    run_training(ws, store, quiet=True, trigger="benchmark")
    seconds = time.perf_counter() - began
    with store.session() as session:
        version = registry.version_or_champion(session)
        model, _ = load_version(ws, version)
        norm, channels, classes = version.normalization, list(version.channels), list(version.classes)
        data = split_samples(session, ws, channels, "multiclass")
    store.dispose()
    test = ground.test_samples(channels, "multiclass", setup.patch)
    rows = evaluate_samples(model, test, norm, classes, pick_device())[0].as_dict()
    rule = tune_threshold(data.train, channels)
    shutil.rmtree(target, ignore_errors=True)
    return {"variant": variant, "budget": budget, "seconds": seconds,
            **{row: float(rows[row]["iou"]) for row in ROWS},
            "threshold": float(threshold_scores(test, channels, rule).as_dict()["glacier"]["iou"]), "rule": str(rule)}


def one_seed(kind: str, seed: int, budgets: list[int], variants: list[str], out: Path, setup: Setup) -> list[dict]:
    torch.set_num_threads(1)  # seeds run side by side, one core each
    work = out / f"{kind}-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    g = ground(kind, seed, work / "ground", setup)
    template_dir, oracle, order = template(work, g, seed, setup)
    budgets = [b for b in budgets if b <= len(order)]
    results = [{"ground": kind, "seed": seed, **one_training(template_dir, oracle, order, budget, variant, g, work,
                                                             setup)}
               for budget in budgets for variant in variants]
    shutil.rmtree(work, ignore_errors=True)
    return results


def _stats(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
    return float(a.mean()), sd, sd / np.sqrt(len(a)) if len(a) > 1 else float("nan")


def _value(results: list[dict], kind: str, variant: str, budget: int, row: str) -> dict[int, float]:
    return {r["seed"]: r[row] for r in results
            if r["ground"] == kind and r["variant"] == variant and r["budget"] == budget}


def report(results: list[dict], budgets: list[int], variants: list[str], seeds: list[int], png: Path,
           patch: int) -> None:
    for kind in dict.fromkeys(r["ground"] for r in results):
        table = Table(title=f"{kind} ground: IoU on a test scene never seen, first model from k labelled {patch}-px "
                            f"patches (mean ± sd over {len(seeds)} seeds); threshold: the best single channel, tuned "
                            "on the same training pixels")
        for column in ("labels", "variant", "glacier IoU", "debris IoU", "threshold glacier", "model - threshold",
                       "gain over paper weights", "minutes"):
            table.add_column(column, justify="left" if column in ("variant",) else "right")
        for budget in budgets:
            for variant in variants:
                glacier = _value(results, kind, variant, budget, "glacier")
                if not glacier:
                    continue
                debris = _value(results, kind, variant, budget, "debris")
                threshold = _value(results, kind, variant, budget, "threshold")
                paper = _value(results, kind, "paper weights", budget, "glacier")
                minutes = [r["seconds"] / 60 for r in results if r["ground"] == kind and r["variant"] == variant
                           and r["budget"] == budget]
                g, d = _stats(list(glacier.values())), _stats(list(debris.values()))
                t = _stats(list(threshold.values()))
                over = _stats([glacier[s] - threshold[s] for s in glacier])
                gain = _stats([glacier[s] - paper[s] for s in glacier if s in paper]) if variant != "paper weights" \
                    and paper else None
                table.add_row(str(budget), variant, f"{g[0]:.3f} ± {g[1]:.3f}", f"{d[0]:.3f} ± {d[1]:.3f}",
                              f"{t[0]:.3f}", f"{over[0]:+.3f} ± {over[1]:.3f}",
                              "-" if gain is None else f"{gain[0]:+.3f} ± {gain[1]:.3f} (se {gain[2]:.3f})",
                              f"{np.mean(minutes):.1f}")
        console.print(table)
    _plot(results, budgets, variants, png)
    console.print(f"curves: {png}")


def _plot(results: list[dict], budgets: list[int], variants: list[str], png: Path) -> None:
    kinds = list(dict.fromkeys(r["ground"] for r in results))
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 4 * len(kinds)), squeeze=False)
    for axes_row, kind in zip(axes, kinds, strict=True):
        for ax, row in zip(axes_row, ROWS, strict=True):
            for variant in variants:
                points = [(b, _stats(list(_value(results, kind, variant, b, row).values()))) for b in budgets
                          if _value(results, kind, variant, b, row)]
                if points:
                    x = [b for b, _ in points]
                    mean, sd = np.array([s[0] for _, s in points]), np.nan_to_num([s[1] for _, s in points])
                    ax.plot(x, mean, marker="o", label=variant)
                    ax.fill_between(x, mean - sd, mean + sd, alpha=0.15)
            if row == "glacier":
                cuts = {b: _value(results, kind, variants[0], b, "threshold") for b in budgets}
                kept = [b for b in budgets if cuts[b]]
                ax.plot(kept, [np.mean(list(cuts[b].values())) for b in kept], "k--", label="tuned threshold")
            ax.set_title(f"{kind}: {row} IoU on the test scene (mean ± sd over seeds)", fontsize=10)
            ax.set_xlabel("labelled training patches (128 px)")
            ax.set_ylabel("IoU")
            ax.set_xticks(budgets)
        axes_row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny scenes and model: checks that it runs")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0-4)")
    parser.add_argument("--budgets", default="8,16,32", help="labelled training patches (default 8,16,32)")
    parser.add_argument("--grounds", default=",".join(GROUNDS), help="built-in, 4-band or both")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="seeds side by side, one core each (default 2)")
    parser.add_argument("--out", type=Path, help="folder for results.json and the PNG (default: a temp folder)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    setup = Setup()
    if args.quick:
        setup = Setup(patch=64, builtin_pool=512, builtin_test=256, small=(320, 384), validation_block=128,
                      overrides={"model": {"depth": 2, "base_filters": 4}, "training": {"max_epochs": 2}})
    tasks = [(kind, seed) for kind in args.grounds.split(",") for seed in seeds]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        results: list[dict] = []
        with Progress(console=console) as progress:
            task = progress.add_task(f"{len(tasks)} grounds x seeds, {len(budgets) * len(variants)} trainings each",
                                     total=len(tasks))
            if args.jobs == 1:
                for kind, seed in tasks:
                    results += one_seed(kind, seed, budgets, variants, out, setup)
                    progress.advance(task)
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
                    futures = [pool.submit(one_seed, kind, seed, budgets, variants, out, setup) for kind, seed in tasks]
                    for future in as_completed(futures):
                        results += future.result()
                        progress.advance(task)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        report(results, budgets, variants, seeds, out / "few_labels.png", setup.patch)
        console.print(f"{(time.perf_counter() - began) / 60:.1f} minutes in all; results: {out / 'results.json'}")
    kind = "built-in" if "built-in" in args.grounds else args.grounds.split(",")[0]
    budget = 16 if 16 in budgets else budgets[0]
    supervised = _value(results, kind, "defaults", budget, "glacier")
    semi = _value(results, kind, "semi-supervised", budget, "glacier")
    gain = _stats([semi[s] - supervised[s] for s in supervised if s in semi]) if semi and supervised else (np.nan,) * 3
    print(f"glacier IoU at {budget} labels: supervised {np.mean(list(supervised.values())):.3f}, semi-supervised "
          f"{np.mean(list(semi.values())) if semi else float('nan'):.3f}, gain {gain[0]:+.3f} ± {gain[1]:.3f} "
          f"(paired, {len(semi)} seeds)")


if __name__ == "__main__":
    main()
