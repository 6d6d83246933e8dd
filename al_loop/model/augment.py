"""Training augmentation for multispectral patches (pure, over arrays; each draw from the item's
own generator, so an epoch is the same whichever loader worker reads it).

* Flips and 90-degree rotations: the ground has no preferred orientation at 30 m.
* Gain and offset jitter of the raw bands (``band_jitter``): digital numbers of the same surface
  differ between scenes and slopes by illumination (all bands alike) and by calibration and
  atmosphere (each band its own). The reflective bands are scaled by one ``1 + N(0, j)``, each by its own
  ``1 + N(0, j)`` and shifted by ``N(0, j)`` times its spread in the training set; the index
  channels are computed again from the jittered bands, so ndvi and ndsi stay consistent with
  them: a model learns that a ratio survives a change of light that brightness does not. Thermal
  bands (emitted, not reflected), quality flags and terrain are left alone.
* SLC-off-like gaps (``gap_probability``): stripes along a tilted scan direction, one every 32
  lines and 2-14 px wide, as Landsat 7 after May 2003 has them, become no-data (no input, no
  loss), so a model meets gap edges in training that its labelled patches may lack.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from al_loop import bands

REFLECTED = (*bands.REFLECTIVE_BANDS, "B8")
"""Bands of reflected sunlight: the jitter's. Thermal bands measure emitted heat (a debris tongue's
few kelvin of cooling is what tells it from moraine), quality flags are codes: neither is jittered."""
GAP_PERIOD_PX = 32
GAP_WIDTH_PX = (2, 14)
GAP_TILT_DEG = (9, 13)


def flip_rotate(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random rotation by a multiple of 90 degrees and flip of an input and its target."""
    k = int(rng.integers(4))
    x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return x, y


def jitter_bands(pixels: np.ndarray, channels: Sequence[str], spread: Sequence[float], strength: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Raw bands scaled by ``1 + N(0, strength)`` and shifted by ``N(0, strength) * spread``, index
    channels recomputed from them where their bands are among ``channels``; a new array."""
    out = pixels.astype(np.float32, copy=True)
    raw = [k for k, name in enumerate(channels) if name in REFLECTED]
    gains = (1 + strength * rng.standard_normal()) * (1 + strength * rng.standard_normal(len(raw)))
    offsets = strength * rng.standard_normal(len(raw)) * np.asarray(spread, dtype=np.float64)[raw]
    for k, gain, offset in zip(raw, gains, offsets, strict=True):
        out[k] = out[k] * np.float32(gain) + np.float32(offset)
    named = {name: out[k] for k, name in enumerate(channels)}
    for k, name in enumerate(channels):
        if name in bands.INDEX_INPUTS and all(b in named for b in bands.INDEX_INPUTS[name]):
            out[k] = bands.compute_index(name, named)
    return out


def gap_stripes(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (H, W) bool mask of SLC-off-like gap stripes."""
    tilt = np.radians(rng.uniform(*GAP_TILT_DEG)) * rng.choice([-1.0, 1.0])
    rows, cols = np.indices(shape, dtype=np.float32)
    along = rows * np.cos(tilt) - cols * np.sin(tilt) + rng.uniform(0, GAP_PERIOD_PX)
    return np.mod(along, GAP_PERIOD_PX) < rng.uniform(*GAP_WIDTH_PX)
