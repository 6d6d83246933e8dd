"""The strongest baseline that costs nothing: one channel, one threshold (pure, over arrays).

Glaciologists map clean ice with a band ratio or a single band above a cut; a model that does
not beat that on the same pixels has not earned its training. The rule is tuned on the training
patches only: every channel the model reads, either direction, cuts at the 1st to 99th
percentiles of the labelled pixels, the best glacier IoU (any glacier class, typed or not,
against background) wins. Scored as glacier, like the model's glacier row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from al_loop.model.data import IGNORE, UNKNOWN_GLACIER, Sample
from al_loop.model.metrics import CountOnce, SegmentationScores

CUTS = np.linspace(0.01, 0.99, 99)
MAX_PIXELS = 2_000_000  # beyond this, tuned on an even sample of each patch's labelled pixels


@dataclass(frozen=True)
class ThresholdRule:
    channel: str
    direction: str  # ">" or "<"
    cut: float
    train_iou: float

    def __str__(self) -> str:
        return f"{self.channel} {self.direction} {self.cut:.4g}"

    def glacier(self, values: np.ndarray) -> np.ndarray:
        """Glacier (True) where a channel's values pass the rule."""
        return values > self.cut if self.direction == ">" else values < self.cut


def _labelled(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which pixels are labelled, and which of those are glacier (typed or not)."""
    labelled = target != IGNORE
    return labelled, (target != 0) & labelled


def tune_threshold(samples: Sequence[Sample], channels: Sequence[str]) -> ThresholdRule:
    """The channel, direction and cut with the best glacier IoU on the samples' labelled pixels."""
    values, truth = [], []
    per_patch = max(MAX_PIXELS // max(len(samples), 1), 1)
    for sample in samples:
        pixels, _ = sample.read()
        labelled, glacier = _labelled(sample.target)
        where = np.flatnonzero(labelled)
        where = where[np.linspace(0, len(where) - 1, per_patch).astype(np.int64)] if len(where) > per_patch else where
        values.append(pixels.reshape(len(pixels), -1)[:, where])
        truth.append(glacier.ravel()[where])
    stacked, glacier = np.concatenate(values, axis=1), np.concatenate(truth)
    if not glacier.any() or glacier.all():
        raise ValueError("a threshold needs labelled glacier and labelled background pixels")
    best = ThresholdRule("", ">", 0.0, -1.0)
    for k, name in enumerate(channels):
        finite = np.isfinite(stacked[k])
        v, t = stacked[k][finite], glacier[finite]
        for cut in np.unique(np.quantile(v, CUTS)):
            for direction, pred in ((">", v > cut), ("<", v < cut)):
                iou = float((pred & t).sum() / max(int((pred | t).sum()), 1))
                if iou > best.train_iou:
                    best = ThresholdRule(name, direction, float(cut), iou)
    return best


def threshold_scores(samples: Sequence[Sample], channels: Sequence[str], rule: ThresholdRule) -> SegmentationScores:
    """The rule's scores on the samples, per patch too (each scene pixel counted once), with glacier
    predicted as clean ice: only its glacier row means anything."""
    scores, once = SegmentationScores(("background", "clean_ice", "debris"), UNKNOWN_GLACIER), CountOnce()
    index = list(channels).index(rule.channel)
    for sample in samples:
        pixels, _ = sample.read()
        pred = rule.glacier(pixels[index]).astype(np.int64)
        fresh = None if sample.window is None else once.fresh(sample.scene_id, *sample.window, *pred.shape)
        scores.update(pred, sample.target, fresh, unit=sample.patch_id)
    return scores
