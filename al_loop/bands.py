"""Channel names, index formulas, the dataset's sign conventions and the valid-pixel rule.

This is the only module that knows what a channel position means. Everything else selects
channels by name through :func:`channel_index` / :func:`require_channels`.

Conventions follow the HKH glacier mapping dataset (checked on a real fused tile clip, see
``shared/docs/hkh_data.md``):

* bands 0-8 are Landsat 7 ETM+ digital numbers (0-255), not reflectance;
* ``ndsi`` is stored SIGN-FLIPPED, ``(B5 - B2) / (B5 + B2)``: snow and ice are negative.
  The usual NDSI is ``-ndsi`` (:func:`usual_ndsi`);
* ``ndwi`` is the NIR-SWIR moisture index ``(B4 - B5) / (B4 + B5)``;
* a pixel is valid when every reflective band the scene has is finite and above zero
  (scene edges and SLC-off stripes are 0 or NaN in every band).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

CHANNELS: tuple[str, ...] = (
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6_VCID_1",
    "B6_VCID_2",
    "B7",
    "B8",
    "BQA",
    "ndvi",
    "ndsi",
    "ndwi",
    "elevation",
    "slope",
)
"""The 15-channel layout of an HKH fused tile, in file order."""

RAW_BANDS: tuple[str, ...] = CHANNELS[:10]
"""Bands that come from the Landsat scene itself (one file each in a USGS Level-1 folder)."""

REFLECTIVE_BANDS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B7")
"""Bands used by the valid-pixel rule."""

INDEX_CHANNELS: tuple[str, ...] = ("ndvi", "ndsi", "ndwi")
TERRAIN_CHANNELS: tuple[str, ...] = ("elevation", "slope")

INDEX_INPUTS: dict[str, tuple[str, str]] = {
    # name: (a, b) for (a - b) / (a + b), the dataset's own conventions
    "ndvi": ("B4", "B3"),
    "ndsi": ("B5", "B2"),  # sign-flipped: snow and ice are negative
    "ndwi": ("B4", "B5"),
}

# ETM+ thermal calibration (Landsat 7 handbook): DN -> radiance -> brightness temperature.
THERMAL_GAIN = {"B6_VCID_1": (0.0, 17.04), "B6_VCID_2": (3.2, 12.65)}  # (LMIN, LMAX)
THERMAL_K1 = 666.09
THERMAL_K2 = 1282.71
_QCAL_MIN, _QCAL_MAX = 1.0, 255.0


class MissingChannelError(ValueError):
    """A channel was asked for that a scene (or file) does not have."""


class BandNameError(ValueError):
    """Band names in a file do not match what was expected."""


def channel_index(name: str, available: Sequence[str] = CHANNELS) -> int:
    """Position of channel ``name`` in ``available``; a clear error if it is not there."""
    try:
        return list(available).index(name)
    except ValueError:
        raise MissingChannelError(
            f"channel {name!r} is not available; available channels: {', '.join(available)}"
        ) from None


def require_channels(
    wanted: Iterable[str], available: Sequence[str], where: str = "scene"
) -> list[int]:
    """Indices of ``wanted`` channels within ``available``, naming every missing one at once."""
    wanted = list(wanted)
    unknown = [c for c in wanted if c not in CHANNELS]
    if unknown:
        raise MissingChannelError(
            f"unknown channel name(s) {unknown}; known channels: {', '.join(CHANNELS)}"
        )
    missing = [c for c in wanted if c not in available]
    if missing:
        raise MissingChannelError(
            f"{where} lacks channel(s) {', '.join(missing)}; it has: {', '.join(available)}"
        )
    return [list(available).index(c) for c in wanted]


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` in float32, NaN where the denominator is zero or input is invalid."""
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    total = a + b
    out = np.full(np.broadcast(a, b).shape, np.nan, dtype=np.float32)
    np.divide(a - b, total, out=out, where=np.isfinite(total) & (total != 0))
    return out


def compute_index(name: str, bands: dict[str, np.ndarray]) -> np.ndarray:
    """Compute ``ndvi``, ``ndsi`` (sign-flipped) or ``ndwi`` from band arrays keyed by name."""
    if name not in INDEX_INPUTS:
        raise ValueError(f"{name!r} is not an index channel; index channels: {INDEX_CHANNELS}")
    a, b = INDEX_INPUTS[name]
    return normalized_difference(bands[a], bands[b])


def usual_ndsi(dataset_ndsi: np.ndarray) -> np.ndarray:
    """The usual NDSI (snow and ice positive) from the dataset's sign-flipped ``ndsi``."""
    return -dataset_ndsi


def brightness_temperature(dn: np.ndarray, band: str = "B6_VCID_1") -> np.ndarray:
    """ETM+ thermal DN to brightness temperature in degrees Celsius."""
    lmin, lmax = THERMAL_GAIN[band]
    radiance = (lmax - lmin) / (_QCAL_MAX - _QCAL_MIN) * (dn.astype(np.float32) - _QCAL_MIN) + lmin
    with np.errstate(divide="ignore", invalid="ignore"):
        kelvin = THERMAL_K2 / np.log(THERMAL_K1 / radiance + 1.0)
    return (kelvin - 273.15).astype(np.float32)


def valid_mask(pixels: np.ndarray, available: Sequence[str] = CHANNELS) -> np.ndarray:
    """Valid-pixel mask of a ``(channels, H, W)`` array.

    Valid where every reflective band the array has is finite and above zero. Scene edges and
    Landsat 7 SLC-off stripes are zero (tiles) or NaN (patches) in every band, and a genuine DN
    of zero does not occur in these bands over land. An array without any reflective band is
    judged on all of its channels being finite.
    """
    idx = [i for i, name in enumerate(available) if name in REFLECTIVE_BANDS]
    if not idx:
        return np.isfinite(pixels).all(axis=0)
    spectral = pixels[idx]
    return (np.isfinite(spectral) & (spectral > 0)).all(axis=0)
