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
from typing import Any

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
        self.units: dict[Hashable, SegmentationScores] = {}  # the counts of each unit (patch) updated by name

    def update(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
               unit: Hashable | None = None) -> None:
        """Count a prediction against its target; ``unit`` (a patch id) also keeps its counts apart,
        for intervals over units."""
        if unit is not None:
            part = SegmentationScores(self.class_names, self.unknown_glacier)
            part.update(pred, target, valid)
            self.merge(part)
            self.units.setdefault(unit, SegmentationScores(self.class_names, self.unknown_glacier)).merge(part)
            return
        pred, target = np.asarray(pred), np.asarray(target)
        self.classes.update(pred, target, valid)
        labelled = target < len(self.class_names)
        if self.unknown_glacier is not None:
            labelled |= target == self.unknown_glacier
        if valid is not None:
            labelled &= np.asarray(valid, dtype=bool)
        self.glacier.update((pred[labelled] != 0).astype(np.int64), (target[labelled] != 0).astype(np.int64))

    def merge(self, other: SegmentationScores) -> SegmentationScores:
        """Add another's counts (its units' too) into these; returns self."""
        self.classes.merge(other.classes)
        self.glacier.merge(other.glacier)
        for unit, part in other.units.items():
            self.units.setdefault(unit, SegmentationScores(self.class_names, self.unknown_glacier)).merge(part)
        return self

    def row_counts(self) -> dict[str, np.ndarray]:
        """Per row, ``[true positives, false positives, false negatives]`` (what an IoU is made of)."""
        out = {}
        for name, matrix, k in [*((n, self.classes, i) for i, n in enumerate(self.class_names)),
                                *([(GLACIER_ROW, self.glacier, 1)] if len(self.class_names) > 2 else [])]:
            tp = int(matrix.matrix[k, k])
            out[name] = np.array([tp, int(matrix.predicted[k]) - tp, int(matrix.support[k]) - tp], dtype=np.int64)
        return out

    def unit_counts(self) -> tuple[list[Hashable], dict[str, np.ndarray]]:
        """The units in order, and per row their counts as an ``(units, 3)`` array (:meth:`row_counts`)."""
        ids = list(self.units)
        per_unit = [self.units[u].row_counts() for u in ids]
        rows = self.row_counts()
        return ids, {row: np.array([c[row] for c in per_unit], dtype=np.int64).reshape(len(ids), 3) for row in rows}

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{row: {iou, precision, recall, f1, support, iou_low, iou_high}}`` for every class and,
        for more than two classes, the ``glacier`` row; every score of a row without labelled pixels
        is NaN, and so is the interval (:func:`iou_interval`) without two units that hold the row."""
        rows = self.classes.as_dict(self.class_names)
        if len(self.class_names) > 2:
            rows[GLACIER_ROW] = self.glacier.as_dict(("not glacier", GLACIER_ROW))[GLACIER_ROW]
        _, units = self.unit_counts()
        for name, values in rows.items():
            if values["support"] == 0:
                values.update(iou=math.nan, precision=math.nan, recall=math.nan, f1=math.nan)
            values["iou_low"], values["iou_high"] = iou_interval(units[name]) if values["support"] else (math.nan,) * 2
        return rows


INTERVAL_LEVEL = 0.95
BOOTSTRAP_DRAWS = 2000


def _iou_of_sums(counts: np.ndarray) -> np.ndarray:
    """IoU of summed ``[tp, fp, fn]`` along the last axis; NaN where nothing was labelled or predicted."""
    tp = counts[..., 0].astype(np.float64)
    union = counts.sum(axis=-1).astype(np.float64)
    return np.divide(tp, union, out=np.full(tp.shape, np.nan), where=union > 0)


def _resampled(counts: list[np.ndarray], draws: int, seed: int) -> list[np.ndarray]:
    """The same bootstrap resamples of units for every array of ``(units, 3)`` counts: summed counts,
    ``(draws, 3)`` each."""
    n = len(counts[0])
    picks = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    return [c[picks].sum(axis=1) for c in counts]


def iou_interval(counts: np.ndarray, level: float = INTERVAL_LEVEL, draws: int = BOOTSTRAP_DRAWS,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of an IoU over units (patches): ``counts`` is ``(units, 3)``
    of ``[tp, fp, fn]``; units are drawn with replacement and the IoU taken of their summed counts,
    as the whole set's IoU is. NaN without two units that hold labelled pixels of the row."""
    counts = np.asarray(counts)
    if len(counts) < 2 or int(((counts[:, 0] + counts[:, 2]) > 0).sum()) < 2:
        return math.nan, math.nan
    (sums,) = _resampled([counts], draws, seed)
    values = _iou_of_sums(sums)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_iou_difference(a: np.ndarray, b: np.ndarray, level: float = INTERVAL_LEVEL, draws: int = BOOTSTRAP_DRAWS,
                          seed: int = 0) -> tuple[float, float, float]:
    """IoU of ``a`` minus IoU of ``b`` over the same units (``(units, 3)`` counts each, rows in the
    same unit order), and its percentile bootstrap interval: each draw resamples units for both,
    so what the two share (which patches are hard) cancels. The interval is NaN with fewer than two
    units."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"paired counts must cover the same units: {a.shape} against {b.shape}")
    difference = float(_iou_of_sums(a.sum(axis=0)) - _iou_of_sums(b.sum(axis=0)))
    if len(a) < 2:
        return difference, math.nan, math.nan
    sa, sb = _resampled([a, b], draws, seed)
    values = _iou_of_sums(sa) - _iou_of_sums(sb)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return difference, float(low), float(high)


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


def iou_text(row: dict[str, Any] | None) -> str:
    """A row's IoU with its interval, for people: ``0.712 [0.650, 0.770]``; ``n/a`` without labelled
    pixels; the interval left out where it could not be drawn (fewer than two patches hold the row)."""
    iou = None if row is None else row.get("iou")
    if iou is None or iou != iou:
        return "n/a"
    low, high = row.get("iou_low"), row.get("iou_high")  # type: ignore[union-attr]
    if low is None or high is None or low != low or high != high:
        return f"{iou:.3f}"
    return f"{iou:.3f} [{low:.3f}, {high:.3f}]"


INTERVAL_NOTE = (f"in brackets: the {INTERVAL_LEVEL:.0%} bootstrap interval over the validation patches (patches drawn "
                 "with replacement, IoU of their summed pixels)")

