"""Training and fine-tuning: class-weighted soft Dice plus cross-entropy on valid labelled
pixels only, flips and rotations, early stopping on a fixed validation set (never a gradient
step on it), a checkpoint after every epoch so a job can be cancelled and resumed.

Defects of the original HKH code that this avoids on purpose: the scheduler/penalties it
declared but never applied, gradient steps on the validation set, sigmoid on softmax outputs,
IoU averaged over batches (here one confusion matrix over the whole set).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset, Sampler

from al_loop.config import ModelConfig, TrainingConfig
from al_loop.model import augment, balance, semi
from al_loop.model.checkpoints import atomic_save, safe_load
from al_loop.model.data import IGNORE, UNKNOWN_GLACIER, PixelCache, Sample, class_pixel_counts
from al_loop.model.inference import pick_device, training_autocast
from al_loop.model.metrics import CountOnce, SegmentationScores, validation_score
from al_loop.model.network import UNet
from al_loop.model.normalization import normalize


class TrainingCancelled(RuntimeError):
    """The job was asked to stop; its last checkpoint allows resuming."""


@dataclass
class TrainResult:
    model: UNet
    best_epoch: int
    epochs_run: int
    val_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)  # the loss's, as used
    chosen_by_validation: bool = True  # else the last epoch was kept (validation too small to choose)


def architecture(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "depth": cfg.depth,
        "base_filters": cfg.base_filters,
        "max_filters": cfg.max_filters,
        "dropout": cfg.dropout,
    }


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
            dice_weight: float, ce_weight: float) -> torch.Tensor:
    """Class-weighted soft Dice (over the whole batch, per class) plus weighted cross-entropy,
    on labelled valid pixels only.

    Pixels of "glacier of unknown type" (``UNKNOWN_GLACIER``, multiclass only) say that the pixel
    is clean ice or debris, not which: their cross-entropy is that of the summed glacier
    probability, ``-log(p_clean + p_debris)``, and they enter a glacier-versus-background Dice
    term, both weighted by the mean weight of the glacier classes. So outline inventories train
    the glacier extent of a 3-class model without pushing either glacier class.
    """
    n_classes = logits.shape[1]
    log_p = torch.log_softmax(logits.float(), dim=1)
    typed = target < n_classes
    unknown = target == UNKNOWN_GLACIER
    classes = torch.where(typed, target, 0).long()
    pixel_weight = weights[classes] * typed
    ce_sum = -(log_p.gather(1, classes[:, None])[:, 0] * pixel_weight).sum()
    weight_sum = pixel_weight.sum()
    glacier_weight = weights[1:].mean()
    if unknown.any():
        ce_sum = ce_sum - glacier_weight * (torch.logsumexp(log_p[:, 1:], dim=1) * unknown).sum()
        weight_sum = weight_sum + glacier_weight * unknown.sum()
    ce = ce_sum / (weight_sum + 1e-6)
    probs = log_p.exp()
    onehot = F.one_hot(classes, n_classes).permute(0, 3, 1, 2).float()
    mask = typed[:, None].float()
    intersection = (probs * onehot * mask).sum((0, 2, 3))
    total = ((probs + onehot) * mask).sum((0, 2, 3))
    dice_terms = weights * (1 - (2 * intersection + 1.0) / (total + 1.0))
    dice_weights = weights.sum()
    if unknown.any():
        labelled = (typed | unknown).float()
        glacier_target = ((target != 0) & (typed | unknown)).float()
        glacier_prob = (1 - probs[:, 0]) * labelled
        glacier_dice = 1 - (2 * (glacier_prob * glacier_target).sum() + 1.0) / (
            (glacier_prob + glacier_target).sum() + 1.0
        )
        dice_terms = torch.cat([dice_terms, (glacier_weight * glacier_dice)[None]])
        dice_weights = dice_weights + glacier_weight
    dice = dice_terms.sum() / dice_weights
    return dice_weight * dice + ce_weight * ce


def _crop(sample_x: np.ndarray, sample_y: np.ndarray, size: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = sample_y.shape
    if not size or size >= min(h, w):
        return sample_x, sample_y
    # Prefer crops with labelled pixels: try a few positions, keep the most labelled.
    best = (-1, 0, 0)
    for _ in range(4):
        r, c = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        labelled = int((sample_y[r : r + size, c : c + size] != IGNORE).sum())
        if labelled > best[0]:
            best = (labelled, r, c)
    _, r, c = best
    return sample_x[:, r : r + size, c : c + size], sample_y[r : r + size, c : c + size]


def evaluate_samples(model: UNet, samples: list[Sample], norm: dict, class_names: list[str] | tuple[str, ...],
                     device: torch.device, batch_size: int = 4,
                     cache: PixelCache | None = None) -> tuple[SegmentationScores, dict[int, SegmentationScores]]:
    """Scores over the whole set, and per scene, on labelled valid pixels; a scene pixel that
    two samples share (overlapping patches) is counted once. ``cache`` keeps pixels between calls."""
    read = cache.read if cache is not None else Sample.read
    model.eval()
    overall = SegmentationScores(class_names, UNKNOWN_GLACIER)
    per_scene: dict[int, SegmentationScores] = {}
    once = CountOnce()
    with torch.inference_mode(), training_autocast(device):
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            x = torch.from_numpy(np.stack([normalize(*read(s), norm) for s in batch])).to(device)
            pred = model(x).argmax(1).cpu().numpy()
            for sample, p in zip(batch, pred, strict=True):
                fresh = None if sample.window is None else once.fresh(sample.scene_id, *sample.window, *p.shape)
                target = sample.target
                overall.update(p, target, fresh, unit=sample.patch_id)
                per_scene.setdefault(sample.scene_id, SegmentationScores(class_names, UNKNOWN_GLACIER)).update(
                    p, target, fresh, unit=sample.patch_id)
    return overall, per_scene


def _jsonable_iou(rows: dict[str, dict[str, float]]) -> dict[str, float | None]:
    return {name: None if np.isnan(v["iou"]) else round(float(v["iou"]), 4) for name, v in rows.items()}


@dataclass
class TrainingState:
    """What a checkpoint keeps besides the weights: where a run is and the epoch kept so far.

    With ``choose`` the kept epoch is the one validation scores best, and a run stops after
    ``patience`` epochs without a better one. Without it (validation holds no glacier to choose
    by: :func:`validation_can_choose`) every epoch of the schedule runs and the last is kept.
    Choosing even on two or three validation patches beat keeping the last epoch on the built-in
    scene (test glacier IoU 0.708 against 0.679, debris 0.469 against 0.370)."""

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    choose: bool = True

    def record(self, record: dict[str, Any], score: float, model: UNet) -> None:
        """Close an epoch: its record, and the weights when it is the one to keep so far."""
        self.epoch += 1
        self.history.append(record)
        if score > self.best_score or not self.choose:
            self.best_score, self.best_epoch = score, self.epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def should_continue(self, cfg: TrainingConfig) -> bool:
        return self.epoch < cfg.max_epochs and (not self.choose or self.epoch - self.best_epoch < cfg.patience)


MIN_CHOOSING_PATCHES = 1


def validation_can_choose(val_samples: list[Sample]) -> bool:
    """Whether validation can choose an epoch: at least ``MIN_CHOOSING_PATCHES`` patches with
    labelled glacier pixels (any glacier class, typed or not)."""
    holding = sum(bool(((t > 0) & (t != IGNORE)).any()) for t in (s.target for s in val_samples))
    return holding >= MIN_CHOOSING_PATCHES


def train(
    train_samples: list[Sample],
    val_samples: list[Sample],
    *,
    arch: dict[str, Any],
    train_cfg: TrainingConfig,
    class_names: list[str] | tuple[str, ...],
    norm: dict[str, list[float]],
    parent: UNet | None = None,
    checkpoint: Path | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch: Callable[[dict[str, Any]], None] = lambda record: None,
    quiet: bool = False,
    device: torch.device | None = None,
    unlabelled: list[Sample] | None = None,
) -> TrainResult:
    """Train (or fine-tune ``parent``, warm-started with optional shrink-and-perturb) and return
    the model of the best validation epoch. With ``checkpoint``, state is saved after every
    epoch and a run finding a checkpoint there resumes from it. With ``training.weight_average``
    the average of the weights is what is validated and kept (:class:`semi.WeightAverage`); with
    ``unlabelled`` patches (``training.semi_supervised``) a mean teacher, that average, labels
    them for the model too (:mod:`semi`)."""
    device = device or pick_device()
    n_classes = len(class_names)
    class_weights = loss_weights(train_cfg.class_weights, train_samples, n_classes)
    weights = torch.tensor(class_weights, dtype=torch.float32, device=device)
    torch.manual_seed(train_cfg.seed)
    model = UNet(len(norm["mean"]), n_classes, **arch)
    if parent is not None:
        _warm_start(model, parent, train_cfg.shrink, train_cfg.perturb)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.learning_rate)
    state = TrainingState(choose=validation_can_choose(val_samples))
    crop = train_cfg.crop_size
    if crop and crop % model.multiple:
        raise ValueError(f"training.crop_size {crop} must be a multiple of {model.multiple} (2**depth)")
    plan = EpochPlan(len(train_samples), epoch_repeats(len(train_samples), train_cfg), train_cfg.seed)
    loader = _loader(TrainingPatches(train_samples, norm, crop, train_cfg, PixelCache(_cache_bytes(train_cfg))),
                     plan, train_cfg, device)
    average = semi.WeightAverage(model) if train_cfg.weight_average or unlabelled else None
    teacher = None
    if average is not None and unlabelled:
        teacher = _mean_teacher(average.model, unlabelled, norm, crop, train_cfg, device)
    if checkpoint is not None and Path(checkpoint).exists():
        saved = safe_load(checkpoint)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainingState(**saved["state"])
        if average is not None and "average" in saved:
            average.model.load_state_dict(saved["average"])
    judged = average.model if average is not None else model  # what validation scores and what is kept
    val_cache = PixelCache(_cache_bytes(train_cfg))
    with Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task("training", total=train_cfg.max_epochs, completed=state.epoch)
        while state.should_continue(train_cfg):
            if should_stop():
                raise TrainingCancelled(f"cancelled after epoch {state.epoch}")
            # Each epoch's randomness depends only on (seed, epoch): a resumed run is the same run.
            plan.set_epoch(state.epoch)
            torch.manual_seed(train_cfg.seed * 100_003 + state.epoch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(train_cfg, state.epoch)
            if teacher is not None:
                teacher.start_epoch(state.epoch)
            train_loss = _epoch(model, optimizer, loader, weights, train_cfg, device, average, teacher)
            scores, _ = evaluate_samples(judged, val_samples, norm, class_names, device, cache=val_cache)
            rows = scores.as_dict()
            score = validation_score(rows)
            record = {"epoch": state.epoch + 1, "train_loss": train_loss, "val_score": score,
                      "val_iou": _jsonable_iou(rows)}
            if teacher is not None:
                record["pseudo_labelled"] = round(float(np.mean(teacher.kept)), 4) if teacher.kept else 0.0
            state.record(record, score, judged)
            if checkpoint is not None:
                atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": vars(state),
                             **({"average": average.model.state_dict()} if average is not None else {})},
                            checkpoint)
            on_epoch(record)
            progress.update(task, completed=state.epoch,
                            description=f"training: epoch {state.epoch} loss {train_loss:.3f} val IoU {score:.3f}")
    if state.best_state is not None:
        judged.load_state_dict(state.best_state)
    return TrainResult(judged.cpu().eval(), state.best_epoch, state.epoch, state.best_score, state.history,
                       class_weights, state.choose)


def loss_weights(setting: str | list[float], samples: list[Sample], n_classes: int) -> list[float]:
    """The loss's class weights: ``training.class_weights`` as given (its first ``n_classes``
    values), or with ``auto`` from the training samples' labelled-pixel shares (:mod:`balance`)."""
    if setting == "auto":
        counts, unknown = class_pixel_counts(samples, n_classes)
        return balance.auto_weights(balance.class_shares(counts, unknown))
    if len(setting) < n_classes:
        raise ValueError(f"training.class_weights has {len(setting)} values, the model has {n_classes} classes")
    return [float(w) for w in setting[:n_classes]]


def epoch_repeats(patches: int, cfg: TrainingConfig) -> int:
    """How often an epoch takes each training patch: ``crops_per_patch`` times with crops, once
    without, and more where that would give fewer than ``min_steps`` gradient steps (a few
    labelled patches would otherwise give a few steps an epoch, and a run would end before it
    learnt anything); each time with its own crop and augmentation."""
    repeats = max(1, cfg.crops_per_patch) if cfg.crop_size else 1
    return max(repeats, math.ceil(cfg.min_steps * cfg.batch_size / max(patches, 1)))


def _mean_teacher(teacher: UNet, unlabelled: list[Sample], norm: dict[str, list[float]], crop: int,
                  cfg: TrainingConfig, device: torch.device) -> semi.MeanTeacher:
    """The mean teacher over a loader of unlabelled patches (each epoch in its own seeded order)."""
    patches = TrainingPatches(unlabelled, norm, crop, cfg, PixelCache(_cache_bytes(cfg)), unlabelled=True)
    plan = EpochPlan(len(unlabelled), 1, cfg.seed + 1)
    return semi.MeanTeacher(teacher, _loader(patches, plan, cfg, device), cfg.semi_weight, cfg.semi_threshold,
                            cfg.seed)


def _cache_bytes(cfg: TrainingConfig) -> int:
    return cfg.cache_mb * 2**20


def _loader(patches: TrainingPatches, plan: EpochPlan, cfg: TrainingConfig, device: torch.device) -> DataLoader:
    workers = cfg.loader_workers
    return DataLoader(patches, batch_size=cfg.batch_size, sampler=plan, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed))  # not the global one: dropout's


def learning_rate(cfg: TrainingConfig, epoch: int) -> float:
    """The learning rate of an epoch: constant, or cosine-annealed from ``learning_rate`` to
    a hundredth of it over ``max_epochs``. A function of the epoch alone, so a resumed run
    continues the same schedule."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = epoch / max(cfg.max_epochs - 1, 1)
    return cfg.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _warm_start(model: UNet, parent: UNet, shrink: float, perturb: float) -> None:
    """Start from the parent's weights, shrunk towards zero and perturbed (Ash & Adams 2020:
    shrink-and-perturb keeps warm-started networks from losing plasticity)."""
    parent_state = parent.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            value = parent_state[name].clone()
            if value.is_floating_point():
                value = value * shrink
                if perturb > 0:
                    value += perturb * torch.randn_like(value)
            tensor.copy_(value)


class EpochPlan(Sampler):
    """One epoch's items in order, each ``(sample index, item seed)``: every patch (``repeats``
    times with random crops) in an order drawn from (seed, epoch). An item's crop and augmentation
    come from its own seed, so an epoch is the same whichever worker reads which item, and a
    resumed run is the same run."""

    def __init__(self, n: int, repeats: int, seed: int) -> None:
        self.n, self.repeats, self.seed, self.epoch = n, repeats, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(np.repeat(np.arange(self.n), self.repeats))
        return iter([(int(i), (self.seed, self.epoch, k)) for k, i in enumerate(order)])

    def __len__(self) -> int:
        return self.n * self.repeats


class TrainingPatches(Dataset):
    """Training items read when asked (torchgeo's way): a patch's pixels from their file (or
    ``cache``, which each loader worker holds its own copy of), augmented (:mod:`augment`),
    normalised and cropped, with its target. Memory holds the cache and a few batches, never more
    of the labelled set."""

    def __init__(self, samples: list[Sample], norm: dict[str, list[float]], crop: int, cfg: TrainingConfig,
                 cache: PixelCache, unlabelled: bool = False) -> None:
        self.samples, self.norm, self.crop, self.cfg, self.cache = samples, norm, crop, cfg, cache
        self.unlabelled = unlabelled  # targets then say only which pixels are valid (0) or not (IGNORE)
        self.channels = [str(name) for name in norm["channels"]]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        sample = self.samples[index]
        pixels, valid = self.cache.read(sample)
        target = np.where(valid, 0, IGNORE).astype(np.uint8) if self.unlabelled else sample.target
        if self.cfg.band_jitter > 0:
            pixels = augment.jitter_bands(pixels, self.channels, self.norm["std"], self.cfg.band_jitter, rng)
        if rng.random() < self.cfg.gap_augment:
            gaps = augment.gap_stripes(valid.shape, rng)
            valid = valid & ~gaps
            target[gaps] = IGNORE
        pixels, target = _crop(normalize(pixels, valid, self.norm), target, self.crop, rng)
        x, y = torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(np.ascontiguousarray(target))
        return augment.flip_rotate(x, y, rng) if self.cfg.augment else (x, y)


def _epoch(model: UNet, optimizer: torch.optim.Optimizer, loader: DataLoader, weights: torch.Tensor,
           cfg: TrainingConfig, device: torch.device, average: semi.WeightAverage | None = None,
           teacher: semi.MeanTeacher | None = None) -> float:
    model.train()
    losses = []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if not (y != IGNORE).any():
            continue
        optimizer.zero_grad(set_to_none=True)
        with training_autocast(device, cfg.precision):
            logits = model(x)
            extra = teacher.loss(model, weights, device) if teacher is not None else None
        loss = loss_fn(logits.float(), y, weights, cfg.dice_weight, cfg.cross_entropy_weight)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")
