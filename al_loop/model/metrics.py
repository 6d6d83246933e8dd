"""Segmentation scores from one confusion matrix accumulated over a whole evaluation set.

Scores are computed once from the summed pixel counts, never averaged over batches or patches
(the paper's code averaged batch IoUs, which weights a nearly empty patch like a full one).
Every score is NaN where its denominator is zero (e.g. IoU of a class absent from both the
prediction and the labels): undefined, neither a perfect 1 nor a failing 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ConfusionMatrix:
    """Pixel counts ``matrix[target, pred]`` for ``n_classes`` classes."""

    def __init__(self, n_classes: int) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, found {n_classes}")
        self.n_classes = n_classes
        self.matrix = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Count pixels where ``valid`` (if given) and the target is a class in range; target
        codes outside ``[0, n_classes)`` (255 unlabeled, 3 glacier of unknown type) are ignored."""
        pred = np.asarray(pred).astype(np.int64, copy=False)
        target = np.asarray(target).astype(np.int64, copy=False)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} does not match target shape {target.shape}")
        keep = (target >= 0) & (target < self.n_classes)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != target.shape:
                raise ValueError(f"valid shape {valid.shape} does not match target shape {target.shape}")
            keep &= valid
        pred, target = pred[keep], target[keep]
        if pred.size and (pred.min() < 0 or pred.max() >= self.n_classes):
            raise ValueError(
                f"predicted classes must be in [0, {self.n_classes}), found {pred.min()}..{pred.max()}"
            )
        counts = np.bincount(target * self.n_classes + pred, minlength=self.n_classes**2)
        self.matrix += counts.reshape(self.n_classes, self.n_classes)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. per-scene matrices); returns self."""
        if other.n_classes != self.n_classes:
            raise ValueError(f"cannot merge {other.n_classes}-class counts into {self.n_classes} classes")
        self.matrix += other.matrix
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix(self.n_classes).merge(self).merge(other)

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix)

    @property
    def support(self) -> np.ndarray:
        """Labelled pixels of each class."""
        return self.matrix.sum(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        """Pixels predicted as each class."""
        return self.matrix.sum(axis=0)

    def iou(self) -> np.ndarray:
        return _ratio(self.true_positives, self.support + self.predicted - self.true_positives)

    def precision(self) -> np.ndarray:
        return _ratio(self.true_positives, self.predicted)

    def recall(self) -> np.ndarray:
        return _ratio(self.true_positives, self.support)

    def f1(self) -> np.ndarray:
        return _ratio(2 * self.true_positives, self.support + self.predicted)

    def as_dict(self, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{class: {iou, precision, recall, f1, support}}``."""
        if len(class_names) != self.n_classes:
            raise ValueError(f"{len(class_names)} class names given for {self.n_classes} classes")
        scores = {"iou": self.iou(), "precision": self.precision(), "recall": self.recall(), "f1": self.f1()}
        return {
            name: {**{key: float(v[k]) for key, v in scores.items()}, "support": int(self.support[k])}
            for k, name in enumerate(class_names)
        }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ratio, NaN where the denominator is zero."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
