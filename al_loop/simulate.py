"""`al-loop simulate`: the whole loop with an oracle that answers from ground truth, no Label
Studio, to compare strategies against random.

For each seed: a pool scene and a test scene (synthetic, at disjoint locations: the test set
never shares ground with the pool) are generated once; the pool is ingested unlabelled into a
template workspace, and the oracle labels the fixed validation blocks and a random seed set
(the same for every strategy). Each strategy then runs in its own copy of that workspace, as
the product would: train, then rounds of ``next_round`` -> oracle labels -> fine-tune from
the champion (promotion gate included), evaluating the champion on the test scene after every
training. A model trained on the whole labelled pool gives the reference IoU.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import rasterio
from rasterio.windows import Window
from rich.progress import Progress
from sqlalchemy import select

from al_loop import bands
from al_loop.config import Workspace, open_workspace
from al_loop.ingest import ingest_hkh_tile
from al_loop.model.data import Sample, assign_splits, best_labels, to_target
from al_loop.model.inference import pick_device
from al_loop.model.training import evaluate_samples
from al_loop.retrain import load_version, run_training
from al_loop.rounds import next_round
from al_loop.synthetic import make_scene
from al_loop.tiling import patch_windows
from al_loop.workspace import init_workspace, open_store
from db import queries, registry
from db.models import Patch, Scene
from db.session import Store

CLASSES = ("background", "clean_ice", "debris")


@dataclass
class SimulationConfig:
    strategies: list[str] = field(default_factory=lambda: ["random", "bald", "combined"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    scene_size: int = 1024
    patch_size: int = 128
    seed_set: int = 4
    rounds: int = 3
    round_size: int = 4
    depth: int = 3
    base_filters: int = 8
    epochs: int = 6
    mc_samples: int = 8

    @classmethod
    def small(cls) -> SimulationConfig:
        """Finishes in a few minutes on two CPU cores."""
        return cls()

    @classmethod
    def large(cls) -> SimulationConfig:
        return cls(strategies=["random", "entropy", "margin", "bald", "debris", "cloud", "combined"],
                   seeds=[0, 1, 2, 3, 4], scene_size=2048, rounds=6, round_size=8, depth=4,
                   base_filters=16, epochs=12, mc_samples=20)


@dataclass
class Curve:
    strategy: str
    seed: int
    labels: list[int] = field(default_factory=list)
    iou: list[list[float]] = field(default_factory=list)  # per point: background, clean, debris


class Oracle:
    """Answers with the ground-truth mask of a patch window of the pool scene."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth

    def label(self, store: Store, patch_ids: list[int]) -> None:
        with store.session() as session:
            for patch in session.scalars(select(Patch).where(Patch.id.in_(patch_ids))):
                mask = self.truth[patch.row_off : patch.row_off + patch.height, patch.col_off : patch.col_off + patch.width]
                queries.save_label(session, patch, np.ascontiguousarray(mask), source="oracle", origin="simulation")


def _configure(workspace: Workspace, cfg: SimulationConfig) -> Workspace:
    c = workspace.config
    c.ingest.patch_size, c.ingest.quicklooks = cfg.patch_size, False
    c.model.depth, c.model.base_filters, c.model.mc_samples = cfg.depth, cfg.base_filters, cfg.mc_samples
    c.training.crop_size, c.training.max_epochs, c.training.learning_rate = 0, cfg.epochs, 3e-3
    c.training.validation_block = cfg.patch_size * 2
    c.sampling.exclusion_radius, c.sampling.round_size = 0.0, cfg.round_size
    return workspace


def _samples(pixels: np.ndarray, truth: np.ndarray, size: int) -> list[Sample]:
    """Patches of an image and its truth with at least one labelled pixel, as test samples."""
    samples = []
    for i, (r, c) in enumerate(patch_windows(*truth.shape, size)):
        p = pixels[:, r : r + size, c : c + size]
        valid = bands.valid_mask(p)
        target = to_target(truth[r : r + size, c : c + size], valid, "multiclass")
        if (target != 255).any():
            samples.append(Sample(i, -1, i, p, valid, target))
    return samples


@dataclass
class Ground:
    """What a seed simulates on: the pool image, its truth, and test samples from ground the
    pool does not cover."""

    pool_image: Path
    truth: np.ndarray
    test: list[Sample]


def synthetic_ground(folder: Path, cfg: SimulationConfig, seed: int) -> Ground:
    """A synthetic pool scene and a synthetic test scene at another, disjoint, location."""
    pool = make_scene(folder, height=cfg.scene_size, seed=10 + seed, name="pool")
    test = make_scene(folder, height=cfg.scene_size // 2, seed=20 + seed, name="test")
    with rasterio.open(pool.label_raster) as lab:
        truth = lab.read(1)
    with rasterio.open(test.image) as src, rasterio.open(test.label_raster) as lab:
        return Ground(pool.image, truth, _samples(src.read(), lab.read(1), cfg.patch_size))


def scene_ground(folder: Path, workspace: Workspace, store: Store, scene_id: int, cfg: SimulationConfig) -> Ground:
    """An ingested raster scene with labels: its accepted labels are the truth (unlabelled
    pixels stay unlabelled), its eastern quarter (whole patch columns) is the test set and
    the rest, written as a new GeoTIFF, the pool."""
    with store.session() as session:
        scene = session.get(Scene, scene_id)
        if scene is None or not scene.data_path:
            raise LookupError(f"no raster scene with id {scene_id} in the store")
        missing = [c for c in bands.CHANNELS if c not in scene.available_channels]
        if missing:
            raise ValueError(f"scene {scene_id} lacks channel(s) {missing}: the simulation uses all 15")
        truth = np.full((scene.height, scene.width), 255, dtype=np.uint8)
        labels = [l for l in best_labels(session).values() if l.patch.scene_id == scene_id]
        if not labels:
            raise LookupError(f"scene {scene_id} has no accepted labels to simulate with")
        for label in labels:
            p = label.patch
            mask = queries.unpack_mask(label.mask, p.height, p.width)
            h, w = min(p.height, scene.height - p.row_off), min(p.width, scene.width - p.col_off)
            truth[p.row_off : p.row_off + h, p.col_off : p.col_off + w] = mask[:h, :w]
        source = workspace.resolve(scene.data_path)
    split = cfg.patch_size * max(1, int(0.75 * scene.width) // cfg.patch_size)
    if split >= scene.width:
        raise ValueError(f"scene {scene_id} is too narrow ({scene.width} px) to hold out a test strip of {cfg.patch_size}-px patches")
    folder.mkdir(parents=True, exist_ok=True)
    pool_image = folder / "pool.tif"
    with rasterio.open(source) as src:
        profile = {**src.profile, "width": split, "tiled": True, "blockxsize": 256, "blockysize": 256}
        with rasterio.open(pool_image, "w", **profile) as dst:
            for row in range(0, scene.height, 1024):
                window = Window(0, row, split, min(1024, scene.height - row))
                dst.write(src.read(window=window), window=window)
            dst.descriptions = src.descriptions
        test_pixels = src.read(window=Window(split, 0, scene.width - split, scene.height))
    return Ground(pool_image, truth[:, :split], _samples(test_pixels, truth[:, split:], cfg.patch_size))


def _test_iou(workspace: Workspace, store: Store, test: list[Sample]) -> list[float]:
    with store.session() as session:
        version = registry.champion(session)
        model, _ = load_version(workspace, version)
        norm = version.normalization
    matrix, _ = evaluate_samples(model, test, norm, len(CLASSES), pick_device())
    return [float(v) for v in np.nan_to_num(matrix.iou())]


def _template(root: Path, cfg: SimulationConfig, seed: int, ground: Ground) -> tuple[Path, Oracle, list[int], list[int]]:
    """The pool workspace before any strategy acts: validation blocks and a seed set labelled.
    Patches the truth says nothing about cannot be answered by the oracle: they are left out
    of the pool (marked low_valid)."""
    oracle = Oracle(ground.truth)
    ws = _configure(init_workspace(root / "template"), cfg)
    store = open_store(ws)
    ingest_hkh_tile(ws, store, ground.pool_image, quiet=True)
    with store.session() as session:
        tc = ws.config.training
        assign_splits(session, tc.validation_fraction, tc.validation_block, tc.seed)
        for patch in session.scalars(select(Patch)):
            window = ground.truth[patch.row_off : patch.row_off + patch.height, patch.col_off : patch.col_off + patch.width]
            if not (window != 255).any():
                patch.low_valid = True
        session.flush()
        patches = session.scalars(select(Patch).where(Patch.low_valid.is_(False)).order_by(Patch.id)).all()
        val = [p.id for p in patches if p.split == "val"]
        train = [p.id for p in patches if p.split == "train"]
    if not val or len(train) < cfg.seed_set + cfg.rounds * cfg.round_size:
        raise ValueError(f"the pool has {len(train)} labelled training and {len(val)} validation patches: too few for "
                         f"a seed set of {cfg.seed_set} and {cfg.rounds} rounds of {cfg.round_size}")
    seed_set = _seed_set(store, oracle, train, cfg.seed_set, seed)
    oracle.label(store, val + seed_set)
    store.dispose()
    return root / "template", oracle, train, seed_set


def _seed_set(store: Store, oracle: Oracle, train: list[int], size: int, seed: int) -> list[int]:
    """A random seed set the first model can learn from: it must show at least two classes
    (a random draw of a few patches can be all background)."""
    with store.session() as session:
        windows = {p.id: (p.row_off, p.col_off, p.height, p.width) for p in session.scalars(select(Patch).where(Patch.id.in_(train)))}
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        chosen = sorted(rng.choice(train, size=size, replace=False).tolist())
        classes = set()
        for r, c, h, w in (windows[i] for i in chosen):
            classes |= set(np.unique(oracle.truth[r : r + h, c : c + w]).tolist()) - {255}
        if len(classes) >= 2:
            return chosen
    raise ValueError(f"no random seed set of {size} patches shows two classes: the pool is (nearly) all one class")


def run_simulation(out: Path, cfg: SimulationConfig, quiet: bool = False,
                   source: tuple[Workspace, Store, int] | None = None) -> dict[str, Path]:
    """Run every strategy for every seed; write the CSV, the learning-curve PNG and a summary.
    ``source`` (workspace, store, scene id) simulates on an ingested scene with labels instead
    of synthetic scenes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves: list[Curve] = []
    reference: dict[int, list[float]] = {}
    steps = len(cfg.seeds) * (len(cfg.strategies) * (cfg.rounds + 1) + 1)
    scene = scene_ground(out / "ground", *source, cfg) if source else None
    with Progress(disable=quiet) as progress:
        task = progress.add_task("simulation", total=steps)
        for seed in cfg.seeds:
            work = out / f"work-seed{seed}"
            shutil.rmtree(work, ignore_errors=True)
            ground = scene or synthetic_ground(work / "scenes", cfg, seed)
            template, oracle, train_ids, seed_set = _template(work, cfg, seed, ground)
            test = ground.test
            reference[seed] = _full_pool(work, template, oracle, train_ids, test, cfg)
            progress.advance(task)
            for strategy in cfg.strategies:
                curves.append(_run_strategy(work, template, oracle, strategy, seed, len(seed_set), test, cfg,
                                            lambda: progress.advance(task)))
            shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / "ground", ignore_errors=True)
    return _report(out, curves, reference, cfg)


def _copy(template: Path, target: Path, cfg: SimulationConfig) -> tuple[Workspace, Store]:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    ws = _configure(open_workspace(target), cfg)
    return ws, open_store(ws)


def _run_strategy(work, template, oracle, strategy, seed, n_seed, test, cfg, advance) -> Curve:
    ws, store = _copy(template, work / strategy, cfg)
    ws.config.sampling.seed = seed
    curve = Curve(strategy, seed)
    run_training(ws, store, quiet=True, trigger="simulation")
    curve.labels.append(n_seed)
    curve.iou.append(_test_iou(ws, store, test))
    advance()
    for _ in range(cfg.rounds):
        chosen = next_round(ws, store, size=cfg.round_size, strategy=strategy, quiet=True)
        oracle.label(store, [p.patch_id for p in chosen.patches])
        with store.session() as session:
            parent = registry.champion(session).name
        run_training(ws, store, parent_name=parent, quiet=True, trigger="simulation")
        curve.labels.append(curve.labels[-1] + len(chosen.patches))
        curve.iou.append(_test_iou(ws, store, test))
        advance()
    store.dispose()
    return curve


def _full_pool(work, template, oracle, train_ids, test, cfg) -> list[float]:
    ws, store = _copy(template, work / "full-pool", cfg)
    oracle.label(store, train_ids)
    run_training(ws, store, quiet=True, trigger="simulation")
    iou = _test_iou(ws, store, test)
    store.dispose()
    return iou


def glacier_iou(iou: list[float]) -> float:
    """Mean IoU of clean ice and debris: the figure curves are compared on."""
    return float(np.mean(iou[1:]))


def normalised_aulc(labels: list[int], values: list[float]) -> float:
    """Area under the curve divided by the label range: the curve's mean height."""
    if len(labels) < 2:
        return float(values[0])
    return float(np.trapezoid(values, labels) / (labels[-1] - labels[0]))


def labels_to_reach(labels: list[int], values: list[float], target: float) -> int | None:
    return next((n for n, v in zip(labels, values) if v >= target), None)


def _report(out: Path, curves: list[Curve], reference: dict[int, list[float]], cfg: SimulationConfig) -> dict[str, Path]:
    csv_path = out / "simulation.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "seed", "labels", *(f"iou_{c}" for c in CLASSES), "iou_glacier", "full_pool_iou_glacier"])
        for curve in curves:
            for n, iou in zip(curve.labels, curve.iou):
                writer.writerow([curve.strategy, curve.seed, n, *(f"{v:.4f}" for v in iou),
                                 f"{glacier_iou(iou):.4f}", f"{glacier_iou(reference[curve.seed]):.4f}"])
    summary = []
    for strategy in cfg.strategies:
        mine = [c for c in curves if c.strategy == strategy]
        aulc = [normalised_aulc(c.labels, [glacier_iou(i) for i in c.iou]) for c in mine]
        reach = [labels_to_reach(c.labels, [glacier_iou(i) for i in c.iou], 0.95 * glacier_iou(reference[c.seed])) for c in mine]
        summary.append({
            "strategy": strategy,
            "aulc_mean": float(np.mean(aulc)), "aulc_std": float(np.std(aulc)),
            "labels_to_95pct": [r for r in reach],
            "final_debris_iou": float(np.mean([c.iou[-1][2] for c in mine])),
            "final_clean_iou": float(np.mean([c.iou[-1][1] for c in mine])),
        })
    summary_path = out / "summary.csv"
    with open(summary_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    png = out / "learning_curves.png"
    _plot(curves, reference, cfg, png)
    return {"csv": csv_path, "summary": summary_path, "png": png, "rows": summary}


def _plot(curves: list[Curve], reference: dict[int, list[float]], cfg: SimulationConfig, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for strategy in cfg.strategies:
        mine = [c for c in curves if c.strategy == strategy]
        labels = np.array(mine[0].labels)
        for ax, k in zip(axes, (1, 2)):
            values = np.array([[i[k] for i in c.iou] for c in mine])
            mean, std = values.mean(0), values.std(0)
            ax.plot(labels, mean, marker="o", label=strategy, linestyle="--" if strategy == "random" else "-")
            ax.fill_between(labels, mean - std, mean + std, alpha=0.15)
    for ax, k in zip(axes, (1, 2)):
        ax.axhline(np.mean([r[k] for r in reference.values()]), color="black", linewidth=0.8, label="full pool")
        ax.set_title(f"{CLASSES[k]} IoU on the held-out scene (mean ± std, {len(cfg.seeds)} seeds)")
        ax.set_xlabel("labelled training patches")
        ax.set_ylabel("IoU")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
