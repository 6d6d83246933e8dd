"""Training and evaluation data from the store: labelled patches as arrays, the fixed
spatial-block validation split, and label-mask to model-target conversion."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER
from al_loop.config import Workspace
from al_loop.patches import read_patch
from db.models import Label, Patch
from db.queries import unpack_mask

IGNORE = 255
CLASS_SETS = {
    "multiclass": ("background", "clean_ice", "debris"),
    "binary": ("background", "glacier"),
}
# Label code -> model target. In a multiclass model an untyped "glacier" label could be either
# glacier class, so it is ignored; a binary model folds every glacier kind into one class.
_TARGETS = {
    "multiclass": {BACKGROUND: 0, CLEAN_ICE: 1, DEBRIS: 2},
    "binary": {BACKGROUND: 0, CLEAN_ICE: 1, DEBRIS: 1, GLACIER: 1},
}
SOURCE_PRIORITY = {"annotation": 0, "oracle": 1, "inventory": 2}
"""When a patch has accepted labels from several sources, an expert's annotation wins."""


class TrainingDataError(ValueError):
    """The store cannot provide what training needs (no labels, one class only, ...)."""


@dataclass
class Sample:
    patch_id: int
    scene_id: int
    label_id: int
    pixels: np.ndarray  # (C, H, W) float32, raw values
    valid: np.ndarray  # (H, W) bool, the valid-pixel mask
    target: np.ndarray  # (H, W) uint8 model classes, IGNORE where unlabeled or invalid


def class_names(classes: str) -> tuple[str, ...]:
    try:
        return CLASS_SETS[classes]
    except KeyError:
        raise TrainingDataError(f"unknown class set {classes!r}; choose {', '.join(CLASS_SETS)}") from None


def to_target(mask: np.ndarray, valid: np.ndarray, classes: str) -> np.ndarray:
    """A stored label mask as a model target; invalid pixels are ignored (no loss there)."""
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    for code, target in _TARGETS[classes].items():
        lookup[code] = target
    target = lookup[mask]
    target[~valid] = IGNORE
    return target


def best_labels(session: Session, patch_ids: list[int] | None = None) -> dict[int, Label]:
    """The one accepted label per patch that training uses (see ``SOURCE_PRIORITY``)."""
    query = select(Label).where(Label.status == "accepted")
    if patch_ids is not None:
        query = query.where(Label.patch_id.in_(patch_ids))
    chosen: dict[int, Label] = {}
    for label in session.scalars(query.options(selectinload(Label.patch).selectinload(Patch.scene))):
        current = chosen.get(label.patch_id)
        key = (SOURCE_PRIORITY.get(label.source, 9), -label.created_at.timestamp(), -label.id)
        if current is None or key < (
            SOURCE_PRIORITY.get(current.source, 9), -current.created_at.timestamp(), -current.id
        ):
            chosen[label.patch_id] = label
    return chosen


def label_set_hash(label_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(label_ids)).encode()).hexdigest()


def assign_splits(session: Session, fraction: float, block: int, seed: int) -> None:
    """Give every patch without one a fixed split, ``val`` or ``train``, by spatial block.

    Blocks are ``block`` x ``block`` pixels of a scene (slices: of the footprint, at 30 m), and
    a block goes to validation as a whole, so neighbouring patches never sit on both sides. Of
    the new blocks, the ``fraction`` with the lowest seeded hash (at least one, when there are
    two or more) are held out. Once set, a patch's split never changes: the validation set stays
    fixed as labels arrive, and models stay comparable.
    """
    blocks: dict[tuple, list[Patch]] = defaultdict(list)
    for patch in session.scalars(select(Patch).where(Patch.split.is_(None))):
        if patch.data_path:  # a slice: blocks on its footprint
            key = (patch.scene_id, int((patch.minx or 0) // (block * 30)), int((patch.maxy or 0) // (block * 30)))
        else:
            key = (patch.scene_id, patch.row_off // block, patch.col_off // block)
        blocks[key].append(patch)
    ranked = sorted(blocks, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).digest())
    n_val = min(len(ranked) - 1, max(1, round(fraction * len(ranked)))) if len(ranked) > 1 else 0
    for rank, key in enumerate(ranked):
        for patch in blocks[key]:
            patch.split = "val" if rank < n_val else "train"
    session.flush()


def load_samples(
    workspace: Workspace, labels: list[Label], channels: list[str], classes: str
) -> list[Sample]:
    """Pixels and targets of labelled patches (a missing channel is a clear error)."""
    samples = []
    for label in labels:
        patch = label.patch
        pixels, valid = read_patch(workspace, patch, channels)
        mask = unpack_mask(label.mask, patch.height, patch.width)
        samples.append(Sample(patch.id, patch.scene_id, label.id, pixels, valid, to_target(mask, valid, classes)))
    return samples


def split_samples(session: Session, workspace: Workspace, channels: list[str], classes: str):
    """Training and validation samples from every accepted label, splits fixed by block."""
    cfg = workspace.config.training
    assign_splits(session, cfg.validation_fraction, cfg.validation_block, cfg.seed)
    chosen = best_labels(session)
    if not chosen:
        raise TrainingDataError("no accepted labels in the store: ingest labels or annotate patches first")
    by_split: dict[str, list[Label]] = defaultdict(list)
    for label in chosen.values():
        by_split[label.patch.split].append(label)
    if not by_split["train"] or not by_split["val"]:
        have = {k: len(v) for k, v in by_split.items()}
        raise TrainingDataError(
            f"labelled patches fall in one split only ({have}): training needs labelled patches in "
            "both training and validation blocks; label patches in more places, or lower "
            "training.validation_block"
        )
    train = load_samples(workspace, by_split["train"], channels, classes)
    val = load_samples(workspace, by_split["val"], channels, classes)
    present = set(np.unique(np.concatenate([s.target.ravel() for s in train]))) - {IGNORE}
    if len(present) < 2:
        names = class_names(classes)
        raise TrainingDataError(
            f"training labels hold only class(es) {[names[c] for c in sorted(present)]}: a "
            "segmentation model needs at least two classes with labelled valid pixels"
        )
    return train, val


def normalization(samples: list[Sample], channels: list[str]) -> dict[str, list[float]]:
    """Per-channel mean and std over the valid pixels of the training patches (float64 sums)."""
    sums = np.zeros(len(channels))
    squares = np.zeros(len(channels))
    count = 0
    for sample in samples:
        values = np.nan_to_num(sample.pixels[:, sample.valid].astype(np.float64))
        sums += values.sum(axis=1)
        squares += (values**2).sum(axis=1)
        count += values.shape[1]
    if count == 0:
        raise TrainingDataError("no valid labelled pixels in the training patches")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {"channels": list(channels), "mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}
