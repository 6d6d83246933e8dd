"""A model's input: pixels standardised with the statistics it was trained with (pure, over arrays).

Training, scoring, serving and scene prediction all feed the model through :func:`normalize`;
it lives apart from training so that serving need not import the training loop.
"""

from __future__ import annotations

import numpy as np


def normalize(pixels: np.ndarray, valid: np.ndarray, norm: dict[str, list[float]]) -> np.ndarray:
    """Standardise with the model's own statistics; invalid pixels become 0 (the mean)."""
    mean = np.asarray(norm["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(norm["std"], dtype=np.float32)[:, None, None]
    out = (np.nan_to_num(pixels) - mean) / std
    out[:, ~valid] = 0.0
    return out.astype(np.float32)
