"""Class weights of the loss from the labels' own class balance (pure, over counts).

The paper's weights (background 0.2, clean ice 0.6, debris 0.9) suit ground where glacier is a few
percent of the pixels; on ground that is half glacier they make painting glacier everywhere the
cheapest answer. ``training.class_weights = "auto"`` instead weighs each class by its share of
the training set's labelled pixels, ``share ** -POWER`` (a softened inverse frequency: rare
classes count more, not so much that their false alarms stop costing), bounded so that no class
weighs more than ``MAX_RATIO`` times another. Pixels of "glacier of unknown type" (outline
inventories) count toward clean ice and debris in the proportion of the typed glacier pixels
(half each when none is typed). A class without any labelled pixel gets the weight of the most
common class: its soft-Dice term then keeps it from being predicted without dominating the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POWER = 0.5
MAX_RATIO = 10.0


def class_shares(counts: Sequence[int], unknown_glacier: int = 0) -> np.ndarray:
    """Each class's share of the labelled pixels, ``counts`` in class order (background first),
    with ``unknown_glacier`` pixels given to the glacier classes (index 1 on)."""
    shares = np.asarray(counts, dtype=np.float64).copy()
    if unknown_glacier and len(shares) > 1:
        glacier = shares[1:]
        split = glacier / glacier.sum() if glacier.sum() > 0 else np.full(len(glacier), 1 / len(glacier))
        shares[1:] += unknown_glacier * split
    total = shares.sum()
    if total <= 0:
        raise ValueError("no labelled pixels to weigh classes by")
    return shares / total


def auto_weights(shares: Sequence[float] | np.ndarray) -> list[float]:
    """Weights ``share ** -POWER``, the most common class weighing 1 and none more than
    ``MAX_RATIO``; absent classes (share 0) weigh 1."""
    s = np.asarray(shares, dtype=np.float64)
    present = s > 0
    if not present.any():
        raise ValueError("no class has labelled pixels")
    weights = np.ones(len(s))
    weights[present] = (s[present] / s[present].max()) ** -POWER
    return [round(float(w), 4) for w in np.clip(weights, 1.0, MAX_RATIO)]
