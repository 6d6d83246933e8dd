"""A round: score the unlabeled pool with the champion, choose a diverse batch, record it and
hand it to annotation.

Scores are cached per model version in the store (one row per patch and version, committed a
batch at a time), so a re-run, or a run after a crash, only scores what is missing; scores of an
older version are never mixed in. Without a champion the round starts cold, from spectral and
terrain priors. Patches of an open round are not in the pool, so running twice without new
labels never hands out the same patch twice.

Options of a round (``[sampling]``): a warm-up chooses at random until enough training patches
are labelled; region queries store, per chosen patch, the window the expert is asked to label;
every round states its expected expert time (``al_loop.sampling.cost``), and a cost-aware round
ranks by score per expected second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track
from sqlalchemy.orm import Session

from al_loop.classes import UNLABELED
from al_loop.config import Workspace
from al_loop.io.handout import HandoutPatch, write_handout
from al_loop.io.rasters import read_decimated
from al_loop.io.views import patch_view_files
from al_loop.model.checkpoints import load_version
from al_loop.model.inference import mc_predict, pick_device
from al_loop.model.network import UNet
from al_loop.model.normalization import normalize
from al_loop.patches import read_patch
from al_loop.sampling import acquisition, cost
from al_loop.sampling.explain import why_chosen
from al_loop.sampling.regions import Region, ambiguity_map, best_window, region_side
from al_loop.sampling.selection import select_batch
from al_loop.validation import route_patches
from db import queries, registry
from db.models import ModelVersion, Patch, PatchScore, Round, RoundPatch, Scene
from db.session import Store

COLD_START = "prior"
EDGE_KEY = "edge_px"  # cached with the components: the predicted outline length, the cost model's input


@dataclass
class RoundResult:
    number: int
    strategy: str
    model_version: str | None
    patches: list[HandoutPatch]
    handout: Path | None
    scored: int
    notes: list[str]


def pool_patches(session: Session, version: ModelVersion | None = None) -> list[Patch]:
    """Unlabeled patches worth an expert's time: no accepted label, not in an open round, not
    mostly nodata, and (with a model) in a scene that has every channel the model uses."""
    return queries.pool_patches(session, [s.id for s in scenes_lacking(session, version)])


def scenes_lacking(session: Session, version: ModelVersion | None) -> list[Scene]:
    """Scenes without every channel ``version`` uses: the model cannot score their patches."""
    if version is None:
        return []
    return [s for s in queries.all_scenes(session) if not set(version.channels) <= set(s.available_channels)]


def _lacking_notes(session: Session, version: ModelVersion | None) -> list[str]:
    if version is None:
        return []
    notes = []
    for scene in scenes_lacking(session, version):
        missing = [c for c in version.channels if c not in scene.available_channels]
        notes.append(f"scene {scene.id} ({scene.name}) lacks {', '.join(missing)}, which model {version.name} "
                     "uses: its patches are left out of the pool")
    return notes


def scene_cloud_thresholds(workspace: Workspace, scene: Scene) -> dict[str, float] | None:
    """Cloud thresholds from an overview of the whole scene (DN differ between scenes)."""
    needed = [c for c in ("B1", "B2", "B3", "B5", "B6_VCID_1", "ndsi") if c in scene.available_channels]
    if not scene.data_path or "B5" not in needed:
        return None
    sample = read_decimated(workspace.resolve(scene.data_path), [scene.channels.index(c) for c in needed], 250_000)
    try:
        return acquisition.cloud_thresholds(sample, needed)
    except ValueError:
        return None  # too few valid pixels to adapt thresholds: the cloud component is skipped


def score_pool(workspace: Workspace, store: Store, version: ModelVersion | None, quiet: bool = False) -> int:
    """Score every pool patch that has no score under ``version`` yet; returns how many."""
    cfg = workspace.config
    with store.session() as session:
        version_id = version.id if version else None
        done = queries.scored_patch_ids(session, version_id)
        todo = [p for p in pool_patches(session, version) if p.id not in done]
        scenes = {p.scene_id: p.scene for p in todo}
    if cfg.sampling.ray_address and todo:
        from al_loop import ray_scoring  # optional: Ray is an extra

        return ray_scoring.score_pool(workspace, store, version, [p.id for p in todo])
    thresholds = {sid: scene_cloud_thresholds(workspace, scene) for sid, scene in scenes.items()}
    model = load_version(workspace, version)[0] if version else None
    device = pick_device()
    batch = max(1, cfg.sampling.batch_size)
    for start in track(range(0, len(todo), batch), description="scoring the pool", disable=quiet, transient=True):
        rows = []
        chunk = todo[start : start + batch]
        for patch, components in zip(chunk, score_batch(workspace, chunk, model, version, thresholds, device),
                                     strict=True):
            rows.append(PatchScore(patch_id=patch.id, model_version_id=version_id, score=components.pop("_score"),
                                   components=components))
        with store.session() as session:  # one transaction per batch: a crash keeps what was scored
            session.add_all(rows)
    return len(todo)


def score_batch(workspace: Workspace, patches: list[Patch], model: UNet | None, version: ModelVersion | None,
                thresholds: dict[int, dict[str, float] | None], device: torch.device) -> list[dict[str, Any]]:
    """Acquisition components of ``patches`` (scenes loaded) under ``version`` (None: cold-start
    priors), each with its ``_score``; the one scorer of this process and of Ray actors."""
    cfg = workspace.config
    raw = [read_patch(workspace, p) for p in patches]  # every channel the scene has: priors need them
    channels = [p.scene.available_channels for p in patches]
    if model is None or version is None:  # both or neither
        priors: list[dict[str, Any]] = []
        for (pixels, valid), names, patch in zip(raw, channels, patches, strict=True):
            components = acquisition.prior_components(pixels, names, valid, thresholds[patch.scene_id],
                                                      cfg.sampling.top_q)
            priors.append({**components, "_score": float(np.mean(list(components.values())))})
        return priors
    x = np.stack([
        normalize(pixels[[names.index(c) for c in version.channels]], valid, version.normalization)
        for (pixels, valid), names in zip(raw, channels, strict=True)
    ])
    mc = mc_predict(model, torch.from_numpy(x), T=cfg.model.mc_samples, device=device,
                    valid=np.stack([v for _, v in raw]), seed=cfg.sampling.seed, precision=cfg.model.precision)
    out: list[dict[str, Any]] = []
    for i, ((pixels, valid), names, patch) in enumerate(zip(raw, channels, patches, strict=True)):
        scores = acquisition.score_patch(mc, pixels, names, index=i, valid=valid,
                                         cloud_thresholds=thresholds[patch.scene_id], q=cfg.sampling.top_q)
        components = {k: float(v) for k, v in scores.items()}
        predicted = np.asarray(mc.mean_probs[i]).argmax(axis=0).astype(np.uint8)
        predicted[~valid] = UNLABELED
        components[EDGE_KEY] = float(cost.edge_pixels(predicted))
        out.append({**components, "embedding": [round(float(v), 4) for v in mc.embedding[i]],
                    "_score": components.get("bald", 0.0)})
    return out


@dataclass
class _Choice:
    """The patches a round hands out (indices into the pool), with what chose them."""

    chosen: list[int]
    scores: np.ndarray
    components: dict[str, np.ndarray]  # rank-normalised, as used
    expected_seconds: np.ndarray  # the cost model's guess of the expert time, per pool patch
    placed: bool  # every pool patch has a footprint on the ground


def next_round(workspace: Workspace, store: Store, *, size: int | None = None, strategy: str | None = None,
               quiet: bool = False) -> RoundResult:
    """Score the pool with the champion (cold start without one), choose ``size`` patches with
    ``strategy``, record the round and write its handout folder."""
    cfg = workspace.config.sampling
    size = cfg.round_size if size is None else size
    strategy = strategy or cfg.strategy
    acquisition.strategy_components(strategy)  # an unknown name fails before any work
    notes: list[str] = []
    with store.session() as session:
        version = registry.champion(session)
        notes.extend(_lacking_notes(session, version))
    strategy = _effective_strategy(store, cfg.warmup_labels, version, strategy, notes)
    scored = score_pool(workspace, store, version, quiet) if strategy != "random" or version else 0
    with store.session() as session:
        pool = pool_patches(session, version)
        size = _round_size(size, len(pool), notes)
        choice = _choose(workspace, session, pool, version, strategy, size, notes)
        regions: dict[int, Region] = {}
        if cfg.query == "region" and version is None:
            notes.append("region queries need a model: this cold-start round asks for whole patches")
        elif cfg.query == "region":
            regions = query_regions(workspace, store, [pool[i].id for i in choice.chosen], strategy,
                                    cfg.region_fraction)
        used = strategy if version or strategy == "random" else COLD_START
        number, handout = _record_round(workspace, session, pool, choice, regions, version, strategy, used, size)
        folder = write_handout(workspace.root / "rounds" / f"round-{number:03d}", number, used,
                               version.name if version else None, handout)
    return RoundResult(number, used, version.name if version else None, handout, folder, scored, notes)


def _effective_strategy(store: Store, warmup_labels: int, version: ModelVersion | None, strategy: str,
                        notes: list[str]) -> str:
    """``random`` while fewer training patches than ``sampling.warmup_labels`` are labelled;
    noted, as is a cold start (no champion yet)."""
    if strategy != "random" and warmup_labels:
        with store.session() as session:
            labelled = queries.labelled_training_patch_count(session)
        if labelled < warmup_labels:
            notes.append(f"warm-up: {labelled} of {warmup_labels} training patches labelled "
                         "(sampling.warmup_labels), "
                         f"so this round chooses at random instead of {strategy!r}")
            strategy = "random"
    if version is None and strategy != "random":
        notes.append(f"no champion model yet: cold start from spectral and terrain priors instead of {strategy!r}")
    return strategy


def _round_size(size: int, pool: int, notes: list[str]) -> int:
    if not pool:
        raise LookupError("the pool is empty: every usable patch is labelled, handed out in an open round"
                          + (", or in a scene the model cannot read (see the notes)" if notes else "")
                          + (f"; notes: {'; '.join(notes)}" if notes else "")
                          + ". Ingest an unlabelled scene to choose from (e.g. al-loop ingest synthetic "
                          "--unlabelled, or al-loop ingest scene FILE)")
    if size < 1:
        raise ValueError(f"round size (--size, sampling.round_size) must be at least 1, found {size}")
    if size > pool:
        notes.append(f"the pool holds {pool} patches, fewer than the round size {size}: all of them are handed out")
        return pool
    return size


def _choose(workspace: Workspace, session: Session, pool: list[Patch], version: ModelVersion | None, strategy: str,
            size: int, notes: list[str]) -> _Choice:
    """Scores (per second of expert time when cost-aware) and a diverse batch of ``size``."""
    cfg = workspace.config.sampling
    cached = _cached_components(session, pool, version) if strategy != "random" or version else []
    scores, components, embeddings = _pool_scores(cached, len(pool), version, strategy, cfg.seed)
    cost_model = cost.fit(*_timed_edges(session))
    share = cfg.region_fraction if cfg.query == "region" and version is not None else 1.0
    edges = np.array([c.get(EDGE_KEY, 0.0) for c in cached] if version else np.zeros(len(pool)), dtype=np.float64)
    expected = cost_model.predict(share * edges)
    if cfg.cost_aware and strategy != "random":
        scores = cost.per_second(scores, expected)
    centers = np.array([_center(p.bounds) for p in pool])
    placed = bool(np.isfinite(centers).all())
    chosen = select_batch(
        scores, size, scene_ids=np.array([p.scene_id for p in pool]),
        centers=centers if placed else None,
        embeddings=embeddings if strategy != "random" else None,
        per_scene_cap=cfg.per_scene_cap or None,
        exclusion_radius=cfg.exclusion_radius if placed else 0.0,
        method=cfg.method or None, seed=cfg.seed,
    )
    if len(chosen) < size:
        notes.append(f"only {len(chosen)} patches satisfy the diversity constraints (asked for {size})")
    notes.append(f"expected expert time for this round: {expected[chosen].sum() / 60:.0f} min "
                 f"(cost model: {cost_model.describe()})")
    return _Choice(list(chosen), scores, components, expected, placed)


def _record_round(workspace: Workspace, session: Session, pool: list[Patch], choice: _Choice,
                  regions: dict[int, Region], version: ModelVersion | None, strategy: str, used: str,
                  size: int) -> tuple[int, list[HandoutPatch]]:
    """The round and its patches in the store (their splits routed); its number and handout rows."""
    cfg = workspace.config.sampling
    number = queries.last_round_number(session) + 1
    round_ = Round(number=number, strategy=used, model_version_id=version.id if version else None,
                   config={"size": size, "asked_strategy": strategy, **vars(cfg)})
    session.add(round_)
    route_patches(session, [pool[i] for i in choice.chosen], workspace.config.training)
    handout = []
    chosen_parts = [{**{k: float(v[index]) for k, v in choice.components.items()},
                     "expected_seconds": float(choice.expected_seconds[index])} for index in choice.chosen]
    for rank, (index, parts) in enumerate(zip(choice.chosen, chosen_parts, strict=True), start=1):
        patch = pool[index]
        region = regions[patch.id].as_list() if patch.id in regions else None
        session.add(RoundPatch(round=round_, patch_id=patch.id, rank=rank, score=float(choice.scores[index]),
                               components=parts, region=region))
        # The views an expert judges the patch by (pictures are off in simulations).
        looks = list(patch_view_files(workspace, patch)[0].values()) if workspace.config.ingest.quicklooks else []
        handout.append(HandoutPatch(rank, patch.id, patch.scene.name, patch.row_off, patch.col_off,
                                    float(choice.scores[index]), parts, patch.bounds if choice.placed else None,
                                    patch.scene.crs, looks, patch.split, region,
                                    why_chosen(parts, chosen_parts, used)))
    return number, handout


def _center(bounds: tuple[float, float, float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return np.nan, np.nan
    minx, miny, maxx, maxy = bounds
    return (minx + maxx) / 2, (miny + maxy) / 2


def _cached_components(session: Session, pool: list[Patch], version: ModelVersion | None) -> list[dict[str, Any]]:
    """The cached components of each pool patch under ``version`` (``None``: the priors), in pool order."""
    rows = queries.cached_components(session, version.id if version else None, [p.id for p in pool])
    return [rows[p.id] for p in pool]


def _timed_edges(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """Boundary pixels and lead times of the stored labels that have a lead time."""
    timed = queries.timed_labels(session)
    return (np.array([cost.edge_pixels(mask) for mask, _ in timed], dtype=np.float64),
            np.array([seconds for _, seconds in timed], dtype=np.float64))


def _pool_scores(ordered: list[dict[str, Any]], n: int, version: ModelVersion | None, strategy: str, seed: int
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Per-patch scores under ``strategy`` from the cached components of ``version`` (one dict
    per pool patch), the components themselves (rank-normalised, as used) and the bottleneck
    embeddings."""
    if strategy == "random":
        return acquisition.pool_scores("random", {"n": np.zeros(n)}, rng=seed), {}, None
    names = [n for n in ordered[0] if n not in ("embedding", EDGE_KEY)]
    raw = {n: np.array([c.get(n, 0.0) for c in ordered], dtype=np.float64) for n in names}
    if version is None:
        ranked = {n: acquisition.rank_normalize(v) for n, v in raw.items()}
        scores = acquisition.combine(raw, {n: w for n, w in acquisition.PRIOR_WEIGHTS.items() if n in raw})
        return scores, ranked, None
    weights = acquisition.STRATEGIES[strategy]
    if len(weights) > 1:  # a scene without cloud thresholds has no cloud component: mix the rest
        scores = acquisition.combine(raw, {n: w for n, w in weights.items() if n in raw})
    else:
        scores = acquisition.pool_scores(strategy, raw, rng=seed)
    embeddings = np.array([c["embedding"] for c in ordered], dtype=np.float32) if "embedding" in ordered[0] else None
    return scores, {n: acquisition.rank_normalize(v) for n, v in raw.items()}, embeddings


def query_regions(workspace: Workspace, store: Store, patch_ids: list[int], strategy: str,
                  fraction: float) -> dict[int, Region]:
    """For each patch, the square window (about ``fraction`` of its pixels) the champion is most
    unsure about under ``strategy``'s components (``random``: those of ``combined``)."""
    weights = acquisition.STRATEGIES["combined" if strategy == "random" else strategy]
    cfg = workspace.config
    with store.session() as session:
        version = registry.champion(session)
        if version is None:
            raise LookupError("region queries need a champion model: train one first (al-loop train)")
        patches = queries.patches_by_id(session, patch_ids)
        scenes = {p.scene_id: p.scene for p in patches}
    thresholds = {sid: scene_cloud_thresholds(workspace, scene) for sid, scene in scenes.items()}
    model = load_version(workspace, version)[0]
    regions = {}
    for patch in patches:
        pixels, valid = read_patch(workspace, patch)
        names = patch.scene.available_channels
        x = normalize(pixels[[names.index(c) for c in version.channels]], valid, version.normalization)
        mc = mc_predict(model, torch.from_numpy(x[None]), T=cfg.model.mc_samples, device=pick_device(),
                        valid=valid[None], seed=cfg.sampling.seed, precision=cfg.model.precision)
        usable = {n: w for n, w in weights.items() if n != "cloud" or thresholds[patch.scene_id] is not None}
        maps, valid = acquisition.pixel_maps(
            mc, pixels, names, valid=valid, cloud_thresholds=thresholds[patch.scene_id], strategy=None
        )
        side = region_side(patch.height, patch.width, fraction)
        regions[patch.id] = best_window(ambiguity_map(maps, usable, valid), side)
    return regions


def close_finished_rounds(session: Session) -> list[int]:
    """A round is open from the moment it is chosen until every one of its patches has an
    accepted label; then it is closed. Closes those that are done; their numbers."""
    finished = queries.fully_labelled_open_rounds(session)
    for round_ in finished:
        round_.status = "closed"
    return [r.number for r in finished]
