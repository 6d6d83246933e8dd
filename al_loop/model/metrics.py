"""Segmentation scores from one confusion matrix accumulated over a whole evaluation set.

Scores are computed once from the summed pixel counts, never averaged over batches or patches
(the paper's code averaged batch IoUs, which weights a nearly empty patch like a full one).
Every score is NaN where its denominator is zero: undefined, neither a perfect 1 nor a failing
0. :class:`SegmentationScores` reports a class absent from the labels as NaN ("n/a") whatever
the model predicts (its false alarms count against the classes whose pixels they took), adds a
``glacier`` row (clean ice and debris together, which also scores labels of "glacier of unknown
type"), and with :class:`CountOnce` counts every scene pixel once where patches overlap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

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


GLACIER_ROW = "glacier"


class SegmentationScores:
    """The per-class confusion matrix of a model, plus glacier-versus-background counts.

    ``unknown_glacier`` is the target code of pixels labelled "glacier of unknown type": they
    are left out of the per-class matrix (their class is not known) and scored in the glacier
    row, where a prediction of any class but background (index 0) is glacier.
    """

    def __init__(self, class_names: Sequence[str], unknown_glacier: int | None = None) -> None:
        self.class_names = tuple(class_names)
        self.classes = ConfusionMatrix(len(self.class_names))
        self.glacier = ConfusionMatrix(2)
        self.unknown_glacier = unknown_glacier

    def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        pred, target = np.asarray(pred), np.asarray(target)
        self.classes.update(pred, target, valid)
        labelled = target < len(self.class_names)
        if self.unknown_glacier is not None:
            labelled |= target == self.unknown_glacier
        if valid is not None:
            labelled &= np.asarray(valid, dtype=bool)
        self.glacier.update((pred[labelled] != 0).astype(np.int64), (target[labelled] != 0).astype(np.int64))

    def merge(self, other: SegmentationScores) -> SegmentationScores:
        self.classes.merge(other.classes)
        self.glacier.merge(other.glacier)
        return self

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{row: {iou, precision, recall, f1, support}}`` for every class and, for more than
        two classes, the ``glacier`` row; every score of a row without labelled pixels is NaN."""
        rows = self.classes.as_dict(self.class_names)
        if len(self.class_names) > 2:
            rows[GLACIER_ROW] = self.glacier.as_dict(("not glacier", GLACIER_ROW))[GLACIER_ROW]
        for values in rows.values():
            if values["support"] == 0:
                values.update(iou=math.nan, precision=math.nan, recall=math.nan, f1=math.nan)
        return rows


def validation_score(rows: dict[str, dict[str, float]]) -> float:
    """Mean IoU of the rows other than background that have labelled pixels (0 when none):
    the early-stopping criterion."""
    values = [v["iou"] for name, v in rows.items() if name != "background" and v["support"] > 0]
    return float(np.mean(values)) if values else 0.0


class CountOnce:
    """Which pixels of a window have not been counted yet, per scene: overlapping patches must
    not count the same ground twice."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, np.ndarray] = {}

    def seen(self, key: Hashable, row: int, col: int, height: int, width: int) -> np.ndarray:
        """A (height, width) bool mask of the window's pixels seen before (nothing is marked)."""
        out = np.zeros((height, width), dtype=bool)
        seen = self._seen.get(key)
        if seen is not None:
            part = seen[row : row + height, col : col + width]
            out[: part.shape[0], : part.shape[1]] = part
        return out

    def fresh(self, key: Hashable, row: int, col: int, height: int, width: int) -> np.ndarray:
        """A (height, width) bool mask of the window's pixels not seen before; marks them seen."""
        seen = self._seen.get(key)
        need = (row + height, col + width)
        if seen is None or seen.shape[0] < need[0] or seen.shape[1] < need[1]:
            grown = np.zeros((max(need[0], 0 if seen is None else seen.shape[0]),
                              max(need[1], 0 if seen is None else seen.shape[1])), dtype=bool)
            if seen is not None:
                grown[: seen.shape[0], : seen.shape[1]] = seen
            self._seen[key] = seen = grown
        window = seen[row : row + height, col : col + width]
        fresh = ~window
        window[...] = True
        return fresh


def jsonable(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Rows with NaN ("n/a") as None, for JSON columns (PostgreSQL refuses NaN)."""
    return {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}
            for name, values in rows.items()}
