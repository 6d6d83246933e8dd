"""`al-loop simulate`: the whole loop with an oracle that answers from ground truth, no Label
Studio, to compare strategies against random.

For each seed: a pool scene and a test region (synthetic scenes at disjoint locations, or an
ingested scene with labels split into a pool and a held-out strip: the test set never shares
ground with the pool) are prepared once; the pool is ingested unlabelled into a template
workspace, and the oracle labels validation blocks (not counted as labels: the same for every
strategy) and a random seed set (the same for every strategy). Each strategy then runs in its own
copy of that workspace, as the product would: train, then rounds of ``next_round`` -> oracle
labels -> fine-tune from the champion (promotion gate included), evaluating the champion on the
test region after every training. A model trained on the whole labelled pool gives the reference.

Any labelled scene works: any channel subset (the model uses the channels the scene has), labels
that are partial (unlabelled pixels stay unlabelled for the oracle too) or untyped ("glacier":
the 3-class model learns glacier extent from it, and the glacier row scores it).
"""

from __future__ import annotations

import csv
import multiprocessing
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import rasterio
import torch
from rich.progress import Progress

from al_loop import bands
from al_loop.config import Workspace, open_workspace
from al_loop.ingest import ingest_hkh_tile
from al_loop.model.checkpoints import load_version
from al_loop.model.data import HeldPixels, Sample, class_names, labelled_patches, to_target
from al_loop.model.inference import pick_device
from al_loop.model.training import evaluate_samples
from al_loop.rounds import next_round
from al_loop.sampling import acquisition
from al_loop.sampling.regions import Region
from al_loop.synthetic import Cover, make_scene
from al_loop.tiling import patch_windows
from al_loop.training_run import run_training
from al_loop.validation import Block, block_key, choose_validation_blocks
from al_loop.workspace import init_workspace, open_store
from db import queries, registry
from db.models import Patch, Scene
from db.session import Store

ROWS = ("clean_ice", "debris", "glacier")
REGION_FRACTION = 0.25  # region queries: the share of a patch's pixels asked for
HOLDOUTS = ("east", "west", "north", "south")


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
    classes: str = "multiclass"
    holdout: str = "east"  # scenes: the side held out as the test region
    holdout_fraction: float = 0.25
    cover: Cover = field(default_factory=Cover)  # synthetic scenes: glacier and debris shares
    validation_fraction: float = 0.2  # of the pool, labelled for the gate (not counted as labels)
    method: str = ""  # sampling.method: diversity of a batch ("" = kcenter with a model)
    jobs: int = 1  # seeds run side by side in this many processes

    @classmethod
    def small(cls) -> SimulationConfig:
        """Finishes in a few minutes on two CPU cores."""
        return cls()

    @classmethod
    def large(cls) -> SimulationConfig:
        return cls(strategies=["random", "entropy", "margin", "bald", "debris", "cloud", "combined"],
                   seeds=[0, 1, 2, 3, 4], scene_size=2048, rounds=6, round_size=8, depth=4,
                   base_filters=16, epochs=12, mc_samples=20)

    def check(self) -> None:
        """Clear errors, by option name, before any work."""
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"--holdout must be one of {', '.join(HOLDOUTS)}, found {self.holdout!r}")
        if not 0.05 <= self.holdout_fraction <= 0.5:
            raise ValueError(f"--holdout-fraction must be between 0.05 and 0.5, found {self.holdout_fraction}")
        for option, value in (("--seed-set", self.seed_set), ("--round-size", self.round_size),
                              ("--rounds", self.rounds)):
            if value < 1:
                raise ValueError(f"{option} must be at least 1, found {value}")
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, found {self.jobs}")
        for spec in self.strategies:
            try:
                Variant.parse(spec)
            except ValueError as exc:
                raise ValueError(f"--strategies: {exc}") from None
        class_names(self.classes)


@dataclass
class Curve:
    strategy: str
    seed: int
    labels: list[float] = field(default_factory=list)  # whole-patch equivalents of labelled pixels
    iou: list[dict[str, float]] = field(default_factory=list)  # per point: clean_ice, debris, glacier
    seconds: float = 0.0


class Oracle:
    """Answers with the ground-truth mask of a patch window of the pool scene."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth

    def window(self, patch: Patch) -> np.ndarray:
        """The truth under a patch; past the pool's edge nothing is known."""
        out = np.full((patch.height, patch.width), 255, dtype=np.uint8)
        part = self.truth[patch.row_off : patch.row_off + patch.height, patch.col_off : patch.col_off + patch.width]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    def label(self, store: Store, patch_ids: list[int], regions: dict[int, Region] | None = None) -> None:
        """Label whole patches, or only their ``regions`` (the rest stays unlabelled)."""
        with store.session() as session:
            for patch in queries.patches_by_id(session, patch_ids):
                mask = self.window(patch)
                if regions and patch.id in regions:
                    mask[~regions[patch.id].mask(patch.height, patch.width)] = 255
                queries.save_label(session, patch, mask, source="oracle", origin="simulation")


@dataclass(frozen=True)
class Variant:
    """A strategy with its options, written ``NAME[+OPTION...]``: ``power`` / ``greedy`` (batch
    method), ``warmupN`` (random until N training patches are labelled), ``region`` (region
    queries of a quarter patch, four times as many patches a round: the same pixels)."""

    spec: str
    strategy: str
    method: str = ""
    warmup: int = 0
    region: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, *options = spec.split("+")
        acquisition.strategy_components(name)
        method, warmup, region = "", 0, 0.0
        for option in options:
            if option in ("power", "greedy", "kcenter"):
                method = option
            elif option.startswith("warmup") and option[6:].isdigit():
                warmup = int(option[6:])
            elif option == "region":
                region = REGION_FRACTION
            else:
                raise ValueError(f"strategy {spec!r}: unknown option {option!r} (power, greedy, "
                                 "kcenter, warmupN, region)")
        return cls(spec, name, method, warmup, region)


def _configure(workspace: Workspace, cfg: SimulationConfig) -> Workspace:
    c = workspace.config
    c.ingest.patch_size, c.ingest.quicklooks = cfg.patch_size, False
    c.model.depth, c.model.base_filters, c.model.mc_samples = cfg.depth, cfg.base_filters, cfg.mc_samples
    c.model.classes, c.model.channels = cfg.classes, []
    c.training.crop_size, c.training.max_epochs, c.training.learning_rate = 0, cfg.epochs, 3e-3
    c.training.validation_block = cfg.patch_size * 2
    c.training.validation_fraction = cfg.validation_fraction
    c.training.validation_routing = "train"  # every oracle label trains: validation is the template's
    c.sampling.exclusion_radius, c.sampling.round_size, c.sampling.method = 0.0, cfg.round_size, cfg.method
    return workspace


@dataclass
class Ground:
    """What a seed simulates on: the pool image, its truth, and a test region (pixels of the
    channels the scene has, and truth) on ground the pool does not cover."""

    pool_image: Path
    truth: np.ndarray
    test_pixels: np.ndarray
    test_channels: list[str]
    test_truth: np.ndarray

    def test_samples(self, channels: list[str], classes: str, size: int) -> list[Sample]:
        """Patches of the test region with at least one labelled pixel, for a model's channels."""
        pixels = self.test_pixels[[self.test_channels.index(c) for c in channels]]
        reflective = [c for c in self.test_channels if c in bands.REFLECTIVE_BANDS]
        samples = []
        height, width = self.test_truth.shape
        for i, (r, c) in enumerate(patch_windows(height, width, size)):
            truth = np.full((size, size), 255, dtype=np.uint8)
            part = self.test_truth[r : r + size, c : c + size]
            truth[: part.shape[0], : part.shape[1]] = part
            p = np.zeros((len(channels), size, size), dtype=np.float32)
            p[:, : part.shape[0], : part.shape[1]] = pixels[:, r : r + size, c : c + size]
            refl = np.zeros((len(reflective), size, size), dtype=np.float32)
            refl[:, : part.shape[0], : part.shape[1]] = self.test_pixels[
                [self.test_channels.index(n) for n in reflective], r : r + size, c : c + size]
            valid = bands.valid_mask(refl, reflective)
            target = to_target(truth, valid, classes)
            if (target != 255).any():
                samples.append(Sample(i, -1, (i,), HeldPixels(p, valid), target, (r, c)))
        return samples


def synthetic_ground(folder: Path, cfg: SimulationConfig, seed: int) -> Ground:
    """A synthetic pool scene and a synthetic test scene at another, disjoint, location."""
    pool = make_scene(folder, height=cfg.scene_size, seed=10 + seed, name="pool", cover=cfg.cover)
    test = make_scene(folder, height=cfg.scene_size // 2, seed=20 + seed, name="test", cover=cfg.cover)
    with rasterio.open(pool.label_raster) as lab:
        truth = lab.read(1)
    with rasterio.open(test.image) as src, rasterio.open(test.label_raster) as lab:
        return Ground(pool.image, truth, src.read(), list(bands.CHANNELS), lab.read(1))


def scene_ground(folder: Path, workspace: Workspace, store: Store, scene_id: int, cfg: SimulationConfig) -> Ground:
    """An ingested raster scene with labels: its accepted labels (combined as training combines
    them) are the truth, unlabelled pixels stay unlabelled; a strip on one side of the labelled
    extent (``holdout``, whole patch widths) is the test region and the scene beyond it, written
    as a GeoTIFF of the channels the scene has, the pool."""
    with store.session() as session:
        scene = session.get(Scene, scene_id)
        if scene is None or not scene.data_path:
            raise LookupError(f"no raster scene with id {scene_id} in the store")
        truth = np.full((scene.height, scene.width), 255, dtype=np.uint8)
        items = [p for p in labelled_patches(session).values() if p.patch.scene_id == scene_id]
        if not items:
            raise LookupError(f"scene {scene_id} has no accepted labels to simulate with")
        for item in items:
            p = item.patch
            h, w = min(p.height, scene.height - p.row_off), min(p.width, scene.width - p.col_off)
            truth[p.row_off : p.row_off + h, p.col_off : p.col_off + w] = item.mask()[:h, :w]
        source = workspace.resolve(scene.data_path)
        channels = list(scene.available_channels)
        indexes = [scene.channels.index(c) + 1 for c in channels]
    rows, cols = np.nonzero(truth != 255)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    horizontal = cfg.holdout in ("east", "west")
    extent = (c1 - c0) if horizontal else (r1 - r0)
    strip = cfg.patch_size * max(1, round(cfg.holdout_fraction * extent / cfg.patch_size))
    if strip >= extent - cfg.patch_size:
        raise ValueError(f"the labels of scene {scene_id} span {c1 - c0}x{r1 - r0} px: too little to hold out a "
                         f"{cfg.holdout} strip of {cfg.patch_size}-px patches and keep a pool; lower --patch-size or "
                         "--holdout-fraction")
    # The test strip lies on the labelled extent's side; the pool is the scene on the other side of it.
    cut = {"east": c1 - strip, "west": c0 + strip, "south": r1 - strip, "north": r0 + strip}[cfg.holdout]
    test_slice = {"east": np.s_[r0:r1, cut:c1], "west": np.s_[r0:r1, c0:cut],
                  "south": np.s_[cut:r1, c0:c1], "north": np.s_[r0:cut, c0:c1]}[cfg.holdout]
    pool_slice = {"east": np.s_[:, :cut], "west": np.s_[:, cut:],
                  "south": np.s_[:cut, :], "north": np.s_[cut:, :]}[cfg.holdout]
    if not (truth[test_slice] != 255).any():
        raise ValueError(f"the {cfg.holdout} strip of scene {scene_id}'s labels holds no labelled pixel: choose "
                         "another --holdout")
    folder.mkdir(parents=True, exist_ok=True)
    pool_image = folder / "pool.tif"
    with rasterio.open(source) as src:
        pixels = src.read(indexes)
        pool_rows, pool_cols = pool_slice
        transform = src.transform * rasterio.Affine.translation(pool_cols.start or 0, pool_rows.start or 0)
        pool = pixels[(slice(None), *pool_slice)]
        profile = {**src.profile, "count": len(channels), "width": pool.shape[2], "height": pool.shape[1],
                   "transform": transform, "tiled": True, "blockxsize": 256, "blockysize": 256}
        with rasterio.open(pool_image, "w", **profile) as dst:
            dst.write(pool)
            dst.descriptions = tuple(channels)
    return Ground(pool_image, truth[pool_slice], pixels[(slice(None), *test_slice)], channels, truth[test_slice])


def _test_iou(workspace: Workspace, store: Store, ground: Ground, cfg: SimulationConfig,
              cache: dict[tuple, list[Sample]]) -> dict[str, float]:
    """The champion's IoU on the test region: clean ice, debris and glacier (NaN: n/a)."""
    with store.session() as session:
        version = registry.version_or_champion(session)
        model, _ = load_version(workspace, version)
        norm, channels, classes = version.normalization, list(version.channels), list(version.classes)
    key = (tuple(channels), tuple(classes))
    if key not in cache:
        cache[key] = ground.test_samples(channels, cfg.classes, cfg.patch_size)
    scores, _ = evaluate_samples(model, cache[key], norm, classes, pick_device())
    rows = scores.as_dict()
    return {name: float(rows[name]["iou"]) if name in rows else float("nan") for name in ROWS}


def _template(
    root: Path, cfg: SimulationConfig, seed: int, ground: Ground
) -> tuple[Path, Oracle, list[int], list[int]]:
    """The pool workspace before any strategy acts: validation blocks and a seed set labelled.
    Patches the truth says nothing about cannot be answered by the oracle: they are left out
    of the pool (marked low_valid)."""
    oracle = Oracle(ground.truth)
    ws = _configure(init_workspace(root / "template"), cfg)
    store = open_store(ws)
    ingest_hkh_tile(ws, store, ground.pool_image, quiet=True)
    with store.session() as session:
        patches = []
        for patch in queries.all_patches(session):
            if not (oracle.window(patch) != 255).any():
                patch.low_valid = True
            if not patch.low_valid:
                patches.append(patch)
        blocks: dict[tuple, Block] = {}
        for patch in patches:
            counts = np.bincount(oracle.window(patch).ravel(), minlength=256)
            pixels = {"background": int(counts[0]), "clean_ice": int(counts[1]), "debris": int(counts[2]),
                      "glacier": int(counts[3])}
            blocks.setdefault(block_key(patch, ws.config.training.validation_block), Block()).add(patch, pixels)
        held_out = choose_validation_blocks(blocks, ws.config.training.validation_fraction, seed)
        val = [p.id for key in held_out for p in blocks[key].patches]
        train = [p.id for p in patches if p.id not in set(val)]
        for patch in patches:
            patch.split = "val" if patch.id in set(val) else None
        session.flush()
    if not val or len(train) < cfg.seed_set + cfg.rounds * cfg.round_size:
        raise ValueError(f"the pool has {len(train)} labelled training and {len(val)} validation patches: too few for "
                         f"a seed set of {cfg.seed_set} and {cfg.rounds} rounds of {cfg.round_size} "
                         "(lower --seed-set, --rounds or --round-size, or the patch size)")
    seed_set = _seed_set(store, oracle, train, cfg.seed_set, seed)
    with store.session() as session:
        for patch in queries.patches_by_id(session, seed_set):
            patch.split = "train"
    oracle.label(store, val + seed_set)
    store.dispose()
    return root / "template", oracle, train, seed_set


def _seed_set(store: Store, oracle: Oracle, train: list[int], size: int, seed: int) -> list[int]:
    """A random seed set the first model can learn from: it must show at least two classes
    (a random draw of a few patches can be all background)."""
    with store.session() as session:
        windows = {p.id: oracle.window(p) for p in queries.patches_by_id(session, train)}
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        chosen = sorted(rng.choice(train, size=size, replace=False).tolist())
        classes = set()
        for i in chosen:
            classes |= set(np.unique(windows[i]).tolist()) - {255}
        if len(classes) >= 2:
            return chosen
    raise ValueError(f"no random seed set of {size} patches shows two classes: the pool is (nearly) all one class")


def run_simulation(out: Path, cfg: SimulationConfig, quiet: bool = False,
                   source: tuple[Workspace, Store, int] | None = None) -> dict:
    """Run every strategy for every seed; write the CSV, the learning-curve PNG and a summary.
    ``source`` (workspace, store, scene id) simulates on an ingested scene with labels instead
    of synthetic scenes."""
    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = len(cfg.strategies) * (cfg.rounds + 1) + 1
    scene = scene_ground(out / "ground", *source, cfg) if source else None
    results: dict[int, tuple[list[Curve], dict[str, float]]] = {}
    with Progress(disable=quiet) as progress:
        task = progress.add_task("simulation", total=len(cfg.seeds) * per_seed)
        if cfg.jobs > 1 and len(cfg.seeds) > 1:
            # Seeds are independent: one process each, one thread each (small models on a few
            # cores run faster side by side than one after the other on all cores).
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(cfg.jobs, len(cfg.seeds)), mp_context=context) as pool:
                futures = {pool.submit(_seed_in_worker, out, cfg, seed, scene): seed for seed in cfg.seeds}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.advance(task, per_seed)
        else:
            for seed in cfg.seeds:
                results[seed] = _run_seed(out, cfg, seed, scene, lambda: progress.advance(task))
    shutil.rmtree(out / "ground", ignore_errors=True)
    curves = [curve for seed in cfg.seeds for curve in results[seed][0]]
    return _report(out, curves, {seed: results[seed][1] for seed in cfg.seeds}, cfg)


def _seed_in_worker(out: Path, cfg: SimulationConfig, seed: int, scene: Ground | None
                    ) -> tuple[list[Curve], dict[str, float]]:
    torch.set_num_threads(1)
    return _run_seed(out, cfg, seed, scene, lambda: None)


def _run_seed(out: Path, cfg: SimulationConfig, seed: int, scene: Ground | None,
              advance: Callable[[], None]) -> tuple[list[Curve], dict[str, float]]:
    """Every strategy's curve on one seed's ground, and the full-pool model's IoU."""
    work = out / f"work-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    ground = scene or synthetic_ground(work / "scenes", cfg, seed)
    template, oracle, train_ids, seed_set = _template(work, cfg, seed, ground)
    cache: dict[tuple, list[Sample]] = {}
    reference = _full_pool(work, template, oracle, train_ids, ground, cfg, cache)
    advance()
    curves = [_run_strategy(work, template, oracle, strategy, seed, len(seed_set), ground, cfg, cache, advance)
              for strategy in cfg.strategies]
    shutil.rmtree(work, ignore_errors=True)
    return curves, reference


def _copy(template: Path, target: Path, cfg: SimulationConfig) -> tuple[Workspace, Store]:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    ws = _configure(open_workspace(target), cfg)
    return ws, open_store(ws)


def _run_strategy(work: Path, template: Path, oracle: Oracle, spec: str, seed: int, n_seed: int, ground: Ground,
                  cfg: SimulationConfig, cache: dict[tuple, list[Sample]], advance: Callable[[], None]) -> Curve:
    """One learning curve; labels are counted in whole-patch equivalents of labelled pixels."""
    began = time.perf_counter()
    variant = Variant.parse(spec)
    ws, store = _copy(template, work / spec.replace("+", "_"), cfg)
    ws.config.sampling.seed = seed
    ws.config.sampling.method = variant.method or cfg.method
    ws.config.sampling.warmup_labels = variant.warmup
    if variant.region:
        ws.config.sampling.query, ws.config.sampling.region_fraction = "region", variant.region
    curve = Curve(spec, seed)
    run_training(ws, store, quiet=True, trigger="simulation")
    curve.labels.append(n_seed)
    curve.iou.append(_test_iou(ws, store, ground, cfg, cache))
    advance()
    for _ in range(cfg.rounds):
        size = round(cfg.round_size / variant.region) if variant.region else cfg.round_size
        chosen = next_round(ws, store, size=size, strategy=variant.strategy, quiet=True)
        ids = [p.patch_id for p in chosen.patches]
        regions = {p.patch_id: Region(*p.region) for p in chosen.patches if p.region}
        oracle.label(store, ids, regions)
        with store.session() as session:
            parent = registry.version_or_champion(session).name
        run_training(ws, store, parent_name=parent, quiet=True, trigger="simulation")
        area = cfg.patch_size ** 2
        curve.labels.append(curve.labels[-1] + sum(regions[i].pixels / area if i in regions else 1 for i in ids))
        curve.iou.append(_test_iou(ws, store, ground, cfg, cache))
        advance()
    store.dispose()
    curve.seconds = time.perf_counter() - began
    return curve


def _full_pool(work: Path, template: Path, oracle: Oracle, train_ids: list[int], ground: Ground,
               cfg: SimulationConfig, cache: dict[tuple, list[Sample]]) -> dict[str, float]:
    ws, store = _copy(template, work / "full-pool", cfg)
    oracle.label(store, train_ids)
    run_training(ws, store, quiet=True, trigger="simulation")
    iou = _test_iou(ws, store, ground, cfg, cache)
    store.dispose()
    return iou


def normalised_aulc(labels: list[float], values: list[float]) -> float:
    """Area under the curve divided by the label range: the curve's mean height."""
    if len(labels) < 2:
        return float(values[0])
    return float(np.trapezoid(values, labels) / (labels[-1] - labels[0]))


def labels_to_reach(labels: list[float], values: list[float], target: float) -> float | None:
    return next((n for n, v in zip(labels, values, strict=True) if v >= target), None)


def _mean(values: list[float]) -> float:
    """Mean of the defined values (NaN: n/a); NaN when none is."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _aulc(curve: Curve, row: str) -> float:
    return normalised_aulc(curve.labels, [i[row] for i in curve.iou])


def _report(out: Path, curves: list[Curve], reference: dict[int, dict[str, float]], cfg: SimulationConfig) -> dict:
    csv_path = out / "simulation.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "seed", "labels", *(f"iou_{r}" for r in ROWS), "full_pool_iou_glacier"])
        for curve in curves:
            for n, iou in zip(curve.labels, curve.iou, strict=True):
                writer.writerow([curve.strategy, curve.seed, f"{n:g}", *(f"{iou[r]:.4f}" for r in ROWS),
                                 f"{reference[curve.seed]['glacier']:.4f}"])
    summary = []
    randoms = {c.seed: c for c in curves if c.strategy == "random"}
    for strategy in cfg.strategies:
        mine = [c for c in curves if c.strategy == strategy]
        aulc = [_aulc(c, "glacier") for c in mine]
        paired = [_aulc(c, "glacier") - _aulc(randoms[c.seed], "glacier") for c in mine if c.seed in randoms]
        paired_debris = [_aulc(c, "debris") - _aulc(randoms[c.seed], "debris") for c in mine if c.seed in randoms]
        reach = [labels_to_reach(c.labels, [i["glacier"] for i in c.iou], 0.95 * reference[c.seed]["glacier"])
                 for c in mine]
        reach_random = [labels_to_reach(c.labels, [i["glacier"] for i in c.iou], randoms[c.seed].iou[-1]["glacier"])
                        for c in mine if c.seed in randoms]
        summary.append(
            {
                "strategy": strategy,
                "aulc_mean": float(np.mean(aulc)),
                "aulc_std": float(np.std(aulc)),
                "aulc_debris_mean": _mean([_aulc(c, "debris") for c in mine]),
                "gain_over_random_mean": float(np.mean(paired)) if paired else float("nan"),
                "gain_over_random_sd": float(np.std(paired, ddof=1)) if len(paired) > 1 else float("nan"),
                "debris_gain_over_random_mean": _mean(paired_debris),
                "debris_gain_over_random_sd": float(np.std(paired_debris, ddof=1))
                if len(paired_debris) > 1
                else float("nan"),
                "labels_to_random_final": reach_random,
                "minutes": float(np.mean([c.seconds for c in mine])) / 60,
                "labels_to_95pct": reach,
                "final_glacier_iou": float(np.mean([c.iou[-1]["glacier"] for c in mine])),
                "final_clean_iou": _mean([c.iou[-1]["clean_ice"] for c in mine]),
                "final_debris_iou": _mean([c.iou[-1]["debris"] for c in mine]),
            }
        )
    summary_path = out / "summary.csv"
    with open(summary_path, "w", newline="") as handle:
        table = csv.DictWriter(handle, fieldnames=list(summary[0]))
        table.writeheader()
        table.writerows(summary)
    png = out / "learning_curves.png"
    _plot(curves, reference, cfg, png)
    return {"csv": csv_path, "summary": summary_path, "png": png, "rows": summary,
            "full_pool_glacier": float(np.mean([r["glacier"] for r in reference.values()])),
            "full_pool_debris": _mean([r["debris"] for r in reference.values()])}


def _plot(curves: list[Curve], reference: dict[int, dict[str, float]], cfg: SimulationConfig, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharex=True)
    for strategy in cfg.strategies:
        mine = [c for c in curves if c.strategy == strategy]
        labels = np.array(mine[0].labels)
        for ax, row in zip(axes, ROWS, strict=True):
            values = np.array([[i[row] for i in c.iou] for c in mine])
            mean, std = values.mean(0), values.std(0)
            ax.plot(labels, mean, marker="o", label=strategy, linestyle="--" if strategy == "random" else "-")
            ax.fill_between(labels, mean - std, mean + std, alpha=0.15)
    for ax, row in zip(axes, ROWS, strict=True):
        ref = [r[row] for r in reference.values() if not np.isnan(r[row])]
        if ref:
            ax.axhline(np.mean(ref), color="black", linewidth=0.8, label="full pool")
        ax.set_title(f"{row} IoU, held-out region (mean ± std, {len(cfg.seeds)} seeds)", fontsize=10)
        ax.set_xlabel("labelled training patches")
        ax.set_ylabel("IoU")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
