"""Learning from the unlabelled pool too: a mean teacher with confident pseudo-labels.

Every labelled gradient step also takes a batch of unlabelled patches (never a validation patch,
never one overlapping it). A *teacher*, the exponential moving average of the model's weights
(Tarvainen & Valpola 2017), labels them from one view; the model learns those labels, where the
teacher is confident, from another view with each channel's gain and offset jittered and noise
added (FixMatch's weak/strong pairing, Sohn et al. 2020, with photometric changes that suit
multispectral bands). The unlabelled term is ramped in over the first epochs, while the teacher
is still guessing, and weighed like the labelled loss's cross-entropy by class. The teacher is
the run's :class:`WeightAverage`, which a semi-supervised run keeps and validates whatever
``training.weight_average`` says.

Cost per step: one more forward pass without gradients (the teacher) and one with them (the
model on the unlabelled batch): about twice a supervised step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from al_loop.model.network import UNet

EMA_DECAY = 0.99
RAMP_EPOCHS = 10
STRONG_JITTER = 0.1  # std of the gain and offset of each channel, in normalised units
STRONG_NOISE = 0.05  # std of per-pixel noise, in normalised units
IGNORE = 255


def ramp(epoch: int, epochs: int = RAMP_EPOCHS) -> float:
    """The unlabelled term's share at ``epoch`` (0-based): exp(-5 (1 - t)^2), 0 to 1 over ``epochs``."""
    t = min(max(epoch, 0) / max(epochs, 1), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def strong_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's channels scaled and shifted at random, plus pixel noise (normalised inputs)."""
    n, c = x.shape[:2]
    gain = 1 + STRONG_JITTER * torch.randn((n, c, 1, 1), generator=generator)
    offset = STRONG_JITTER * torch.randn((n, c, 1, 1), generator=generator)
    noise = STRONG_NOISE * torch.randn(x.shape, generator=generator)
    return x * gain.to(x.device) + offset.to(x.device) + noise.to(x.device)


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every step. Where used
    (``training.weight_average``, off by default: on the built-in scene it kept less debris than
    the best epoch of the plain weights) it is what validation scores and what a run keeps; it is
    a mean teacher's teacher."""

    def __init__(self, model: UNet, decay: float = EMA_DECAY) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: UNet) -> None:
        """Move the average towards the model after a step (buffers copied as they are)."""
        for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True):
            mine.mul_(self.decay).add_(theirs.detach(), alpha=1 - self.decay)
        for buffer, source in zip(self.model.buffers(), model.buffers(), strict=True):
            buffer.copy_(source)


class MeanTeacher:
    """The unlabelled batches and the pseudo-label loss of one training run; the teacher is the
    run's weight average."""

    def __init__(self, teacher: UNet, loader: DataLoader, weight: float, threshold: float, seed: int) -> None:
        self.teacher, self.loader, self.weight, self.threshold, self.seed = teacher, loader, weight, threshold, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._batches: Iterator | None = None
        self.kept: list[float] = []  # share of unlabelled pixels given a pseudo-label, per step

    def start_epoch(self, epoch: int) -> None:
        """Each epoch's draws depend on (seed, epoch) alone, so a resumed run is the same run."""
        self.epoch, self._batches, self.kept = epoch, None, []
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(2):  # a fresh pass over the pool when one runs out
            if self._batches is None:
                self._batches = iter(self.loader)
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
        raise RuntimeError("the unlabelled pool gave no batch")

    def loss(self, model: UNet, weights: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The ramped, class-weighted cross-entropy of the model's strong view against the teacher's
        confident labels of the weak view."""
        share = self.weight * ramp(self.epoch)
        x, valid = self._next()
        x, valid = x.to(device, non_blocking=True), valid.to(device, non_blocking=True) != IGNORE
        with torch.no_grad():
            probs = torch.softmax(self.teacher(x).float(), dim=1)
        confidence, pseudo = probs.max(dim=1)
        keep = (confidence >= self.threshold) & valid
        self.kept.append(float(keep.float().mean()))
        if share == 0 or not keep.any():
            return torch.zeros((), device=device)
        logits = model(strong_view(x, self.generator)).float()
        per_pixel = F.cross_entropy(logits, pseudo, weight=weights, reduction="none")
        return share * (per_pixel * keep).sum() / (weights[pseudo] * keep).sum().clamp_min(1e-6)
