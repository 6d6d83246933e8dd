"""Which labelled patches validate: spatial blocks drawn from labelled patches only.

Rules (documented in the README):

* A patch belongs to a *block*: ``training.validation_block`` x ``validation_block`` pixels of its
  scene (slices: of their footprints, at 30 m). A block is validation or training as a whole, so
  neighbouring patches never sit on both sides.
* The first draw, when labelled patches exist and none validates yet, holds out about
  ``validation_fraction`` of the labelled patches as whole blocks, stratified: of many seeded
  draws (``validation_seed``) the one whose validation holds closest to that fraction of every
  class's labelled pixels, so that every class the labels hold is in validation too where at
  least two blocks hold it (training keeps every class it has).
* Later labels (``validation_routing``): a patch in a block already split follows its block. A
  patch in a new block goes, with ``share`` (default), to validation while validation holds less
  than ``validation_fraction`` of the split patches, or when it shows a class training has and
  validation lacks; otherwise to training. With ``train`` new blocks always train (validation
  stays what the first draw gave).
* Patches handed out in a round are routed when they are chosen, so Label Studio can tell the
  expert before they label that a patch will validate; only labelled patches ever count.
* Once set, a patch's split never changes. Changing the seed, block size or fraction re-draws
  every split while no model version exists. After that a new seed or block size is refused with
  what to do, because every version's figures depend on the split; a new fraction only changes
  where later labels go.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from al_loop.config import TrainingConfig
from db import queries
from db.models import Patch

SPLIT_SETTING = "validation_split"
PIXEL_M = 30.0  # slices have no common grid: their blocks are measured on the footprint


class SplitSettingsChanged(ValueError):
    """The configured split differs from the one the store's models were validated on."""


@dataclass
class Block:
    """Labelled (or routed) patches of one block and their labelled pixels per class."""

    patches: list[Patch] = field(default_factory=list)
    pixels: dict[str, int] = field(default_factory=dict)

    @property
    def classes(self) -> set[str]:
        return {name for name, n in self.pixels.items() if n > 0}

    def add(self, patch: Patch, pixels: dict[str, int]) -> None:
        self.patches.append(patch)
        for name, n in pixels.items():
            self.pixels[name] = self.pixels.get(name, 0) + n


def settings_of(cfg: TrainingConfig) -> dict[str, Any]:
    return {"fraction": cfg.validation_fraction, "block": cfg.validation_block, "seed": cfg.validation_seed}


def block_key(patch: Patch, block: int) -> tuple:
    if patch.data_path:  # a slice: blocks on its footprint
        return (
            patch.scene_id,
            "m",
            int((patch.minx or 0) // (block * PIXEL_M)),
            int((patch.maxy or 0) // (block * PIXEL_M)),
        )
    return (patch.scene_id, patch.row_off // block, patch.col_off // block)


def _hash(seed: int, key: tuple) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


DRAWS = 400
TOLERANCE = 0.1


def choose_validation_blocks(blocks: dict[tuple, Block], fraction: float, seed: int) -> set[tuple]:
    """The blocks the first draw holds out (pure: blocks in, keys out).

    A stratified spatial split: ``DRAWS`` seeded random orders of the blocks are each taken
    until they hold ``fraction`` of the patches and scored by how far validation is from holding
    ``fraction`` of every class's labelled pixels (and of the patches); a class that two or more
    blocks show must be in validation, and training must keep every class it has. The first
    draw (in seeded order) within ``TOLERANCE`` of the best score wins, so that another seed gives
    another, equally good split. Rare classes (debris) are thus scored in validation whenever the
    labels allow it, and not by a handful of pixels.
    """
    keys = sorted(blocks, key=lambda key: _hash(seed, key))
    if len(keys) < 2:
        return set()
    names = sorted({name for b in blocks.values() for name in b.classes})
    pixels = np.array([[blocks[k].pixels.get(n, 0) for n in names] for k in keys], dtype=np.float64)
    sizes = np.array([len(blocks[k].patches) for k in keys])
    totals = pixels.sum(axis=0)
    shared = (pixels > 0).sum(axis=0) >= 2  # classes validation can hold without taking them from training
    target = max(1, round(fraction * sizes.sum()))
    rng = np.random.default_rng(seed)
    draws = []
    for draw in range(DRAWS):
        order = np.arange(len(keys)) if draw == 0 else rng.permutation(len(keys))
        taken = int(np.searchsorted(np.cumsum(sizes[order]), target)) + 1
        chosen = order[: min(taken, len(keys) - 1)]
        val = pixels[chosen].sum(axis=0)
        share = np.divide(val, totals, out=np.zeros_like(val), where=totals > 0)
        # Shares as ratios: holding a tenth of the wanted share is as bad as holding ten times it.
        cost = (
            abs(sizes[chosen].sum() - target) / target
            + np.abs(np.log((share + 0.01) / (fraction + 0.01)))[shared].sum()
        )
        cost += ((val == 0) & shared).sum()  # a class that could validate but does not
        cost += 100 * ((totals - val == 0) & (totals > 0)).sum()  # training loses a class: only if unavoidable
        draws.append((cost, chosen))
    best = min(cost for cost, _ in draws)
    chosen = next(chosen for cost, chosen in draws if cost <= best + TOLERANCE)
    return {keys[i] for i in chosen}


def route_block(block: Block, val_patches: int, split_patches: int, val_classes: set[str], train_classes: set[str],
                fraction: float, routing: str) -> str:
    """Where a new block of later labels goes (pure; see the module docstring)."""
    if routing == "train":
        return "train"
    if block.classes & train_classes - val_classes:
        return "val"
    n = len(block.patches)
    return "val" if (val_patches + n) / (split_patches + n) <= fraction else "train"


@dataclass
class SplitReport:
    """What an assignment did, for the training report and ``al-loop status``."""

    assigned: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    notes: list[str] = field(default_factory=list)


def check_settings(session: Session, cfg: TrainingConfig) -> None:
    """Remember the split settings; re-draw when they changed and no model depends on the split,
    else refuse with what to do."""
    current = settings_of(cfg)
    if not 0 < cfg.validation_fraction < 1:
        raise ValueError(f"training.validation_fraction must be between 0 and 1, found {cfg.validation_fraction}")
    if cfg.validation_block < 1:
        raise ValueError(f"training.validation_block must be a positive number of pixels, found {cfg.validation_block}")
    stored = queries.get_setting(session, SPLIT_SETTING)
    if stored == current:
        return
    if stored is not None:
        versions = queries.model_version_names(session)
        drawn = {k: v for k, v in current.items() if k != "fraction"}  # the fraction only routes new labels
        if versions and any(stored.get(k) != v for k, v in drawn.items()):
            changed = ", ".join(f"training.validation_{k} {stored[k]} -> {v}" for k, v in drawn.items()
                                if stored.get(k) != v)
            was = ", ".join(f"training.validation_{k} = {stored[k]}" for k in drawn)
            raise SplitSettingsChanged(
                f"the validation split changed ({changed}) but model versions {', '.join(versions)} were "
                f"validated on the current split: set {was} again (al-loop.toml or AL_LOOP_TRAINING_VALIDATION_*) "
                "to keep comparing them, or start a new workspace to draw a new split (a re-drawn split would "
                "validate on patches those versions trained on)")
        if not versions:
            queries.clear_splits(session)
    queries.set_setting(session, SPLIT_SETTING, current)


def _blocks(patches: Iterable[Patch], block: int, pixels: dict[int, dict[str, int]]) -> dict[tuple, Block]:
    blocks: dict[tuple, Block] = defaultdict(Block)
    for patch in patches:
        blocks[block_key(patch, block)].add(patch, pixels.get(patch.id, {}))
    return blocks


def assign_splits(session: Session, cfg: TrainingConfig) -> SplitReport:
    """Give every labelled patch without a split one (see the module docstring)."""
    check_settings(session, cfg)
    report = SplitReport()
    pixels = queries.labelled_patch_pixels(session)
    if not pixels:
        return report
    if queries.split_counts(session, list(pixels))["val"] == 0:
        # The first draw (again, while nothing validates: no model can depend on it yet).
        _first_draw(queries.patches_by_id(session, list(pixels)), pixels, cfg, report)
        return report
    todo = queries.patches_without_split(session, list(pixels))
    known = queries.block_splits(session, cfg.validation_block, block_key)
    new: list[Patch] = []
    for patch in todo:
        split = known.get(block_key(patch, cfg.validation_block))
        if split is None:
            new.append(patch)
        else:
            patch.split = split
            report.assigned[split] += 1
    blocks = _blocks(new, cfg.validation_block, pixels)
    counts = queries.split_counts(session)
    val_classes, train_classes = queries.split_classes(session, pixels)
    val_n, split_n = counts["val"], counts["val"] + counts["train"]
    for key in sorted(blocks, key=lambda k: _hash(cfg.validation_seed, k)):
        b = blocks[key]
        split = route_block(b, val_n, split_n, val_classes, train_classes, cfg.validation_fraction,
                            cfg.validation_routing)
        _set(b, split, report)
        val_n += len(b.patches) if split == "val" else 0
        split_n += len(b.patches)
        (val_classes if split == "val" else train_classes).update(b.classes)
    session.flush()
    return report


def _first_draw(patches: list[Patch], pixels: dict[int, dict[str, int]], cfg: TrainingConfig,
                report: SplitReport) -> None:
    blocks = _blocks(patches, cfg.validation_block, pixels)
    held_out = choose_validation_blocks(blocks, cfg.validation_fraction, cfg.validation_seed)
    if not held_out and len(patches) > 1:
        # All labels lie in one block: hold out single patches instead, and say so.
        blocks = {(key, p.id): Block([p], dict(pixels.get(p.id, {}))) for key, b in blocks.items() for p in b.patches}
        held_out = choose_validation_blocks(blocks, cfg.validation_fraction, cfg.validation_seed)
        report.notes.append(
            f"all labelled patches lie in one {cfg.validation_block}-px validation block: single patches are "
            "held out, so validation patches neighbour training patches and their figures are optimistic "
            "(label patches further apart, or lower training.validation_block)")
    for key, b in blocks.items():
        _set(b, "val" if key in held_out else "train", report)


def route_patches(session: Session, patches: list[Patch], cfg: TrainingConfig) -> None:
    """Decide the split of patches handed out for labelling (their classes are not known yet):
    as for later labels, block by block. Before the first draw nothing is decided: the draw
    takes them as they come."""
    check_settings(session, cfg)
    counts = queries.split_counts(session)
    val_n, split_n = counts["val"], counts["val"] + counts["train"]
    if val_n == 0:
        return
    known = queries.block_splits(session, cfg.validation_block, block_key)
    new: dict[tuple, Block] = defaultdict(Block)
    for patch in patches:
        if patch.split:
            continue
        key = block_key(patch, cfg.validation_block)
        if key in known:
            patch.split = known[key]
        else:
            new[key].add(patch, {})
    for key in sorted(new, key=lambda k: _hash(cfg.validation_seed, k)):
        block = new[key]
        split = route_block(block, val_n, split_n, set(), set(), cfg.validation_fraction, cfg.validation_routing)
        for patch in block.patches:
            patch.split = split
        val_n += len(block.patches) if split == "val" else 0
        split_n += len(block.patches)
    session.flush()


def _set(block: Block, split: str, report: SplitReport) -> None:
    for patch in block.patches:
        patch.split = split
    report.assigned[split] += len(block.patches)
