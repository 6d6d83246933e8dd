"""Training and evaluation data from the store: labelled patches (their labels combined, their
pixels read when needed), the channels a model uses, and label-mask to model-target conversion."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from al_loop import bands
from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS, GLACIER, combine_masks
from al_loop.config import Workspace
from al_loop.model.metrics import CountOnce
from al_loop.patches import PatchSource, patch_source
from al_loop.validation import SplitReport, assign_splits
from db import queries
from db.models import Label, Patch
from db.queries import unpack_mask

IGNORE = 255
UNKNOWN_GLACIER = 254
"""Multiclass target of "glacier of unknown type": clean ice or debris, the loss does not say
which (it scores the two classes' summed probability), the metrics' glacier row counts it."""
CLASS_SETS = {
    "multiclass": ("background", "clean_ice", "debris"),
    "binary": ("background", "glacier"),
}
# Label code -> model target. A binary model folds every glacier kind into one class.
_TARGETS = {
    "multiclass": {BACKGROUND: 0, CLEAN_ICE: 1, DEBRIS: 2, GLACIER: UNKNOWN_GLACIER},
    "binary": {BACKGROUND: 0, CLEAN_ICE: 1, DEBRIS: 1, GLACIER: 1},
}
SOURCE_PRIORITY = ("inventory", "oracle", "annotation")
"""Label sources from weakest to strongest: where labels of one patch disagree, the stronger
says what the pixel is (see :func:`al_loop.classes.combine_masks`); an expert's annotation wins."""
AUTO_EXCLUDED = ("BQA",)
"""Channels automatic channel choice leaves out: quality flags are no surface property, and each
Landsat collection codes them differently."""


class TrainingDataError(ValueError):
    """The store cannot provide what training needs (no labels, one class only, ...)."""


@dataclass(frozen=True)
class HeldPixels:
    """Pixels kept in memory (simulations, hand-made samples), read like a :class:`PatchSource`."""

    pixels: np.ndarray
    valid: np.ndarray

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pixels, self.valid


class PixelCache:
    """The pixels of the patches read most recently, up to ``budget`` bytes: a labelled set that
    fits is read from its files once, a larger one streams (least recently used out first), so
    memory stops growing with the labels at the budget."""

    def __init__(self, budget: int) -> None:
        self.budget, self.size = budget, 0
        self.items: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        if sample.patch_id in self.items:
            self.items.move_to_end(sample.patch_id)
            return self.items[sample.patch_id]
        pixels, valid = sample.read()
        nbytes = pixels.nbytes + valid.nbytes
        if nbytes <= self.budget:
            self.items[sample.patch_id] = (pixels, valid)
            self.size += nbytes
            while self.size > self.budget:
                _, (old_pixels, old_valid) = self.items.popitem(last=False)
                self.size -= old_pixels.nbytes + old_valid.nbytes
        return pixels, valid


class Sample:
    """A labelled patch for training or evaluation. Its pixels are read when needed (``read``),
    from their file or from memory; its target is held compressed (zlib: masks are mostly one
    class), so what a sample keeps grows with neither its bands nor its size much."""

    def __init__(self, patch_id: int, scene_id: int, label_ids: tuple[int, ...], pixels: PatchSource | HeldPixels,
                 target: np.ndarray, window: tuple[int, int] | None = None) -> None:
        self.patch_id = patch_id
        self.scene_id = scene_id
        self.label_ids = label_ids  # the labels combined into the target
        self.pixels = pixels
        self.window = window  # (row, col) in the scene grid, for counting pixels once
        self.target = target

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``(C, H, W)`` float32 (raw values) and the valid-pixel mask ``(H, W)``."""
        return self.pixels.read()

    @property
    def target(self) -> np.ndarray:
        """``(H, W)`` uint8 model classes, IGNORE where unlabeled or invalid."""
        return np.frombuffer(zlib.decompress(self._target), np.uint8).reshape(self.shape).copy()

    @target.setter
    def target(self, value: np.ndarray) -> None:
        self.shape = value.shape
        self._target = zlib.compress(np.ascontiguousarray(value, np.uint8).tobytes(), 1)


def class_names(classes: str) -> tuple[str, ...]:
    try:
        return CLASS_SETS[classes]
    except KeyError:
        raise TrainingDataError(f"unknown class set {classes!r}; choose {', '.join(CLASS_SETS)}") from None


def class_set(classes: list[str] | tuple[str, ...]) -> str:
    """``binary`` or ``multiclass`` from a model's class list."""
    return "binary" if len(classes) == 2 else "multiclass"


def to_target(mask: np.ndarray, valid: np.ndarray, classes: str) -> np.ndarray:
    """A stored label mask as a model target; invalid pixels are ignored (no loss there)."""
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    for code, target in _TARGETS[classes].items():
        lookup[code] = target
    target = lookup[mask]
    target[~valid] = IGNORE
    return target


@dataclass
class LabelledPatch:
    """A patch and its accepted labels, weakest first."""

    patch: Patch
    labels: list[Label] = field(default_factory=list)

    @property
    def label_ids(self) -> tuple[int, ...]:
        return tuple(label.id for label in self.labels)

    def mask(self) -> np.ndarray:
        p = self.patch
        return combine_masks([unpack_mask(label.mask, p.height, p.width) for label in self.labels])


def _strength(label: Label) -> tuple:
    rank = SOURCE_PRIORITY.index(label.source) if label.source in SOURCE_PRIORITY else -1
    return (rank, label.created_at.timestamp(), label.id)


def labelled_patches(session: Session, patch_ids: list[int] | None = None) -> dict[int, LabelledPatch]:
    """Every patch with an accepted label, with its labels in the order they combine."""
    found: dict[int, LabelledPatch] = {}
    for label in queries.accepted_labels_with_patches(session, patch_ids):
        found.setdefault(label.patch_id, LabelledPatch(label.patch)).labels.append(label)
    for item in found.values():
        item.labels.sort(key=_strength)
    return dict(sorted(found.items()))


def label_set_hash(label_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(label_ids)).encode()).hexdigest()


def validation_set_id(patches: Iterable[tuple[int, tuple[int, ...]]]) -> str:
    """Names a validation set by its (patch id, label ids) pairs: the same name means the same
    pixels and the same truth."""
    content = sorted((patch_id, sorted(label_ids)) for patch_id, label_ids in patches)
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:32]


def training_channels(session: Session, wanted: list[str], scene_ids: set[int]) -> list[str]:
    """The channels a new model uses: ``wanted`` (``model.channels``), which every labelled
    scene must have, or, when empty, every channel the labelled scenes share except BQA."""
    scenes = queries.scenes_by_id(session, scene_ids)
    if wanted:
        for scene in scenes:
            bands.require_channels(wanted, scene.available_channels,
                                   where=f"labelled scene {scene.id} ({scene.name}), asked for by model.channels,")
        return list(wanted)
    shared = [c for c in bands.CHANNELS if c not in AUTO_EXCLUDED and all(c in s.available_channels for s in scenes)]
    if not any(c in bands.REFLECTIVE_BANDS for c in shared):
        have = "; ".join(f"scene {s.id}: {', '.join(s.available_channels)}" for s in scenes)
        raise TrainingDataError(f"the labelled scenes share no reflective band ({have}): set model.channels")
    return shared


def load_samples(
    workspace: Workspace, labelled: list[LabelledPatch], channels: list[str], classes: str
) -> list[Sample]:
    """Samples of labelled patches: where to read their pixels, and their targets (each patch is
    read once, for its valid mask; a missing channel is a clear error)."""
    samples = []
    for item in labelled:
        patch = item.patch
        source = patch_source(workspace, patch, channels)
        _, valid = source.read()
        window = None if patch.data_path else (patch.row_off, patch.col_off)
        samples.append(Sample(patch.id, patch.scene_id, item.label_ids, source, to_target(item.mask(), valid, classes),
                              window))
    return samples


@dataclass
class TrainingData:
    train: list[Sample]
    val: list[Sample]
    channels: list[str]
    split: SplitReport

    @property
    def validation_set(self) -> str:
        return validation_set_id((s.patch_id, s.label_ids) for s in self.val)

    @property
    def label_ids(self) -> list[int]:
        return sorted({i for s in self.train for i in s.label_ids})


def validation_patches(session: Session, workspace: Workspace) -> tuple[list[LabelledPatch], SplitReport]:
    """The labelled patches of the validation set (splits assigned first)."""
    report = assign_splits(session, workspace.config.training)
    return [p for p in labelled_patches(session).values() if p.patch.split == "val"], report


def split_samples(session: Session, workspace: Workspace, channels: list[str] | None, classes: str) -> TrainingData:
    """Training and validation samples from every accepted label, with their splits; channels
    as given (a parent's), else chosen by :func:`training_channels`."""
    report = assign_splits(session, workspace.config.training)
    chosen = labelled_patches(session)
    if not chosen:
        raise TrainingDataError("no accepted labels in the store: ingest labels (al-loop ingest labels) "
                                "or annotate patches first")
    if channels is None:
        channels = training_channels(session, list(workspace.config.model.channels),
                                     {p.patch.scene_id for p in chosen.values()})
    by_split: dict[str | None, list[LabelledPatch]] = defaultdict(list)
    for item in chosen.values():
        by_split[item.patch.split].append(item)
    if not by_split["train"] or not by_split["val"]:
        raise TrainingDataError(
            f"{len(chosen)} labelled patch(es): training needs at least two, one to learn from and one to "
            "validate on; label more patches")
    train = load_samples(workspace, by_split["train"], channels, classes)
    val = load_samples(workspace, by_split["val"], channels, classes)
    _exclude_validation_pixels(train, val)
    present = set().union(*(np.unique(s.target).tolist() for s in train)) - {IGNORE}
    if len(present | ({1} if UNKNOWN_GLACIER in present else set())) < 2:
        names = class_names(classes)
        shown = [names[c] if c < len(names) else "glacier" for c in sorted(present)]
        raise TrainingDataError(
            f"training labels hold only class(es) {shown}: a segmentation model needs at least two classes "
            "with labelled valid pixels")
    return TrainingData(train, val, channels, report)


def unlabelled_samples(session: Session, workspace: Workspace, channels: list[str], val: list[Sample], limit: int,
                       seed: int) -> list[Sample]:
    """Up to ``limit`` pool patches, drawn at random (seeded), for semi-supervised training: no
    accepted label, in no open round (those may validate), not mostly nodata, not routed to
    validation, of a scene with every channel the model reads, and not overlapping a validation
    patch. Their targets say nothing (every pixel IGNORE)."""
    held = {(s.scene_id, s.window, s.shape) for s in val if s.window is not None}
    candidates = [p for p in queries.pool_patches(session, []) if p.split != "val"
                  and all(c in p.scene.available_channels for c in channels)
                  and not any(scene == p.scene_id and _overlap((p.row_off, p.col_off, p.height, p.width), (*w, *shape))
                              for scene, w, shape in held)]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(candidates), size=min(limit, len(candidates)), replace=False).tolist())
    return [Sample(p.id, p.scene_id, (), patch_source(workspace, p, channels),
                   np.full((p.height, p.width), IGNORE, np.uint8), None if p.data_path else (p.row_off, p.col_off))
            for p in (candidates[i] for i in chosen)]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two windows (row, col, height, width) share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _exclude_validation_pixels(train: list[Sample], val: list[Sample]) -> None:
    """Training never sees a validation pixel, also where patches overlap (``patch_overlap``)."""
    covered = CountOnce()
    for s in val:
        if s.window is not None:
            covered.fresh(s.scene_id, *s.window, *s.shape)
    for s in train:
        if s.window is not None:
            target = s.target
            target[covered.seen(s.scene_id, *s.window, *target.shape)] = IGNORE
            s.target = target


def class_pixel_counts(samples: list[Sample], n_classes: int) -> tuple[list[int], int]:
    """Labelled valid pixels of each model class in the samples' targets, and those of "glacier
    of unknown type"."""
    counts = np.zeros(256, dtype=np.int64)
    for sample in samples:
        counts += np.bincount(sample.target.ravel(), minlength=256)
    return counts[:n_classes].tolist(), int(counts[UNKNOWN_GLACIER])


def normalization(samples: list[Sample], channels: list[str]) -> dict[str, list[float]]:
    """Per-channel mean and std over the valid pixels of the training patches (float64 sums)."""
    sums = np.zeros(len(channels))
    squares = np.zeros(len(channels))
    count = 0
    for sample in samples:
        pixels, valid = sample.read()
        values = np.nan_to_num(pixels[:, valid].astype(np.float64))
        sums += values.sum(axis=1)
        squares += (values**2).sum(axis=1)
        count += values.shape[1]
    if count == 0:
        raise TrainingDataError("no valid labelled pixels in the training patches")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {"channels": list(channels), "mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}
