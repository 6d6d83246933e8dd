"""Expected expert seconds per patch, from the lead times Label Studio records.

Drawing outlines is most of a glaciologist's time on a patch, so a patch costs a fixed part
(opening it, judging it, submitting) plus a part per pixel of class boundary in what is labelled.
The model is fitted by non-negative least squares on the stored labels (their lead time against the
boundary length of their own mask); before enough lead times exist, a prior is used. The prior is
an assumption, not a measurement: a minute per patch and a quarter of a second per boundary pixel
(about two minutes for a 128-px patch crossed by one glacier outline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from al_loop.classes import UNLABELED

PRIOR_SECONDS = 60.0
PRIOR_SECONDS_PER_EDGE_PX = 0.25
MIN_LEAD_TIMES = 5  # fewer stored lead times than this: the prior
MIN_SECONDS = 5.0  # no patch is predicted cheaper than this


@dataclass(frozen=True)
class CostModel:
    seconds: float  # fixed part per patch
    seconds_per_edge_px: float
    fitted_on: int  # lead times it was fitted on; 0: the prior

    def predict(self, edge_px: np.ndarray | float) -> np.ndarray:
        """Expected seconds for patches with ``edge_px`` boundary pixels in what is to be labelled."""
        return np.maximum(MIN_SECONDS, self.seconds + self.seconds_per_edge_px * np.asarray(edge_px, dtype=np.float64))

    def describe(self) -> str:
        source = f"fitted on {self.fitted_on} lead times" if self.fitted_on else "prior: no lead times yet"
        return f"{self.seconds:.0f} s + {self.seconds_per_edge_px:.2f} s per boundary pixel ({source})"


PRIOR = CostModel(PRIOR_SECONDS, PRIOR_SECONDS_PER_EDGE_PX, 0)


def edge_pixels(mask: np.ndarray) -> int:
    """Labelled pixels with a 4-neighbour of another labelled class: the outline to draw."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, found shape {mask.shape}")
    edge = np.zeros(mask.shape, dtype=bool)
    for a, b, ea, eb in (
        (mask[1:], mask[:-1], edge[1:], edge[:-1]),
        (mask[:, 1:], mask[:, :-1], edge[:, 1:], edge[:, :-1]),
    ):
        differs = (a != b) & (a != UNLABELED) & (b != UNLABELED)
        ea |= differs
        eb |= differs
    return int(edge.sum())


def fit(edge_px: np.ndarray, seconds: np.ndarray) -> CostModel:
    """The cost model of stored labels (their boundary pixels and lead times); the prior when
    fewer than :data:`MIN_LEAD_TIMES` are given."""
    edge_px = np.asarray(edge_px, dtype=np.float64)
    seconds = np.asarray(seconds, dtype=np.float64)
    if edge_px.shape != seconds.shape or edge_px.ndim != 1:
        raise ValueError(f"edge_px and seconds must be 1-D of one length, found {edge_px.shape} and {seconds.shape}")
    keep = np.isfinite(edge_px) & np.isfinite(seconds) & (seconds > 0)
    if keep.sum() < MIN_LEAD_TIMES:
        return PRIOR
    design = np.column_stack([np.ones(int(keep.sum())), edge_px[keep]])
    (base, per_edge), _ = nnls(design, seconds[keep])
    return CostModel(float(base), float(per_edge), int(keep.sum()))


def per_second(scores: np.ndarray, expected_seconds: np.ndarray) -> np.ndarray:
    """Scores per unit of relative cost: ``score / (cost / mean cost)``; a patch twice as slow
    to label as the average must be twice as informative to rank the same."""
    scores = np.asarray(scores, dtype=np.float64)
    expected_seconds = np.asarray(expected_seconds, dtype=np.float64)
    if scores.shape != expected_seconds.shape:
        raise ValueError(f"scores {scores.shape} and expected seconds {expected_seconds.shape} differ in shape")
    if (expected_seconds <= 0).any() or not np.isfinite(expected_seconds).all():
        raise ValueError("expected seconds must be positive and finite")
    return scores / (expected_seconds / expected_seconds.mean())
