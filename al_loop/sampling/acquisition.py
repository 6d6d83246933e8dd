"""Acquisition functions: how informative a patch would be to label.

Each heuristic is a small function over the arrays of ONE patch that returns an ``(H, W)`` float
map, NaN on invalid pixels (an invalid pixel is not uncertain, so it never counts), and
:func:`aggregate` is the one reduction of such a map to one score per patch. Across the pool,
components are put on one scale by :func:`rank_normalize` and mixed by :func:`combine`.

Inputs: ``probs`` is ``(K, H, W)`` class probabilities (MC dropout mean) with classes as in
:mod:`al_loop.classes`; ``pixels`` is ``(C, H, W)`` in the dataset's raw units (DN, metres,
degrees, NOT normalised) with channel names ``channels`` (see :mod:`al_loop.bands`).

Thresholds and their sources (medians "on the clip" are by the clip's own BQA flags, from
``shared/docs/hkh_data.md`` or measured on ``LE07_134040_20070922_clip.tif`` when writing this):

* snow/ice NDSI 0.4: the standard snow threshold (Dozier 1989; Hall et al. 1995, SNOWMAP);
  on the clip snow has NDSI 0.72, cloud 0.27, medium-confidence cloud 0.38 (hkh_data.md).
* clean-ice brightness, visible mean > 80 DN: on the clip the 90th percentile of clear ground is
  76 DN and the 10th percentile of snow 82 DN (measured). Shadowed snow falls below it.
* slope ramp 12 -> 30 degrees (midpoint 21): debris-covered tongues are gentle; Paul et al. (2004,
  RSE 89) cut debris candidates at 24 degrees, the brief's "< ~20-25 deg".
* NDVI ramp 0.1 -> 0.3 (midpoint 0.2): the usual bare/vegetated split; clear ground on the clip
  has NDVI 0.11 (measured, DN-based index as stored).
* elevation band 3500-5800 m, 500 m soft edges: HKH-typical elevations of debris-covered ice
  (project brief); a soft band because termini reach lower in the Karakoram.
* near clean ice: exp(-d / 30 px), 30 px = 900 m at Landsat's 30 m (project brief, ~1 km).
* cloud: per-scene percentiles of the valid pixels (:func:`cloud_thresholds`), with minimum
  spans so that a uniform scene does not turn a ramp into a step; the thermal span of 8 degrees C
  follows Fmask's +-4 K buffer around its clear-sky percentiles (Zhu & Woodcock 2012). NDSI is a
  ratio and stays fixed: 1 below 0.4, 0 above 0.7 (cloud 0.27/0.38 versus snow 0.72, hkh_data.md).
* opaque cloud: likelihood > 0.8 on more than 60% of a patch's valid pixels starts the patch
  penalty, which reaches 0 at 90% (design choice: an expert can label nothing under thick cloud).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, special, stats

from al_loop import bands
from al_loop.classes import BACKGROUND, CLEAN_ICE, DEBRIS

if TYPE_CHECKING:
    from al_loop.model.inference import MCResult

SNOW_NDSI = 0.4
ICE_BRIGHT_DN = 80.0
SLOPE_RAMP = (12.0, 30.0)  # degrees: prior 1 below, 0 above
NDVI_RAMP = (0.1, 0.3)
ELEVATION_BAND = (3500.0, 5800.0)  # metres
ELEVATION_SOFT = 500.0
ICE_DECAY_PX = 30.0
CLOUD_NDSI_RAMP = (0.4, 0.7)  # usual NDSI: cloud-compatible below, snow above
VISIBLE = ("B1", "B2", "B3")
THERMAL = "B6_VCID_1"  # low gain: does not saturate on warm ground
OPAQUE_LIKELIHOOD = 0.8
OPAQUE_FRACTION = (0.6, 0.9)  # patch penalty: 1 below, 0 above

# cloud_thresholds: (low percentile, high percentile, minimum span) per scene-adapted ramp
_CLOUD_PERCENTILES = {
    "visible": (25.0, 99.0, 40.0),  # ground level -> the brightest (snow, cloud: saturated)
    "swir": (25.0, 95.0, 30.0),  # snow/shadow or ground level -> bright SWIR (cloud)
    "thermal": (75.0, 10.0, 8.0),  # warm ground -> cold (cloud, snow); degrees C
}

COMPONENTS = ("entropy", "margin", "least_confidence", "bald", "debris", "cloud", "glacier")

STRATEGIES: dict[str, dict[str, float]] = {
    "random": {},  # uniform random scores, drawn at selection time (pool_scores)
    "entropy": {"entropy": 1.0},
    "margin": {"margin": 1.0},
    "bald": {"bald": 1.0},
    "debris": {"debris": 1.0},
    "cloud": {"cloud": 1.0},
    # BALD rather than entropy: inventories agree at only 0.43-0.57 IoU (hkh_data.md), so much of
    # the entropy is label noise that more labels will not remove; BALD is the reducible part.
    "combined": {"bald": 1.0, "debris": 1.0, "cloud": 0.5},
    # Glacier is a few percent of the pixels: a patch the model sees glacier in is worth more
    # than one it is unsure about on bare rock, so presence counts beside the uncertainties.
    "balanced": {"bald": 1.0, "debris": 1.0, "glacier": 1.0, "cloud": 0.5},
}
"""Strategy name -> weights of the components it combines (one component: that score as is)."""

PRIOR_WEIGHTS: dict[str, float] = {"glacier": 1.0, "debris": 1.0, "cloud": 0.5}
"""Weights for :func:`combine` over :func:`prior_components` (cold start, no model yet)."""


# ---------------------------------------------------------------- helpers


def _ramp(x: np.ndarray | np.floating, start: float, end: float) -> np.ndarray:
    """Smooth step: 0 at ``start``, 1 at ``end`` (either order), cubic in between; NaN stays NaN."""
    t = np.clip((np.asarray(x, dtype=np.float32) - start) / (end - start), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _plane(pixels: np.ndarray, channels: Sequence[str], name: str) -> np.ndarray | None:
    """One channel as float32, or None when the patch does not have it."""
    if name not in channels:
        return None
    return pixels[list(channels).index(name)].astype(np.float32, copy=False)


def _index(pixels: np.ndarray, channels: Sequence[str], name: str) -> np.ndarray | None:
    """A normalised-difference index, recomputed from the bands when present, else as stored."""
    a, b = bands.INDEX_INPUTS[name]
    pa, pb = _plane(pixels, channels, a), _plane(pixels, channels, b)
    if pa is not None and pb is not None:
        return bands.normalized_difference(pa, pb)
    return _plane(pixels, channels, name)


def _usual_ndsi(pixels: np.ndarray, channels: Sequence[str]) -> np.ndarray | None:
    ndsi = _index(pixels, channels, "ndsi")
    return None if ndsi is None else bands.usual_ndsi(ndsi)


def _visible(pixels: np.ndarray, channels: Sequence[str]) -> np.ndarray | None:
    planes = [p for name in VISIBLE if (p := _plane(pixels, channels, name)) is not None]
    return np.mean(planes, axis=0) if planes else None


def _thermal(pixels: np.ndarray, channels: Sequence[str]) -> np.ndarray | None:
    dn = _plane(pixels, channels, THERMAL)
    return None if dn is None else bands.brightness_temperature(dn, THERMAL)


def _product(factors: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Soft AND of factors in [0, 1]; a NaN factor (no data in that channel) counts as 1."""
    out = np.ones(shape, dtype=np.float32)
    for f in factors:
        out *= np.where(np.isnan(f), np.float32(1.0), f)
    return out


def _geometric_mean(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pixel geometric mean of factors in [0, 1], skipping NaN factors (NaN if all are)."""
    with np.errstate(divide="ignore"):
        logs = np.log(np.stack(factors))
    count = (~np.isnan(logs)).sum(axis=0)
    total = np.nansum(logs, axis=0)
    return np.where(count > 0, np.exp(total / np.maximum(count, 1)), np.nan).astype(np.float32)


def _check_pixels(pixels: np.ndarray, channels: Sequence[str]) -> None:
    if pixels.ndim != 3 or pixels.shape[0] != len(channels):
        raise ValueError(
            f"pixels must be (C, H, W) with C = len(channels) = {len(channels)}, found shape {pixels.shape}"
        )


def _valid_from_pixels(
    pixels: np.ndarray, channels: Sequence[str], valid: np.ndarray | None
) -> np.ndarray:
    _check_pixels(pixels, channels)
    if valid is None:
        return bands.valid_mask(pixels, channels)
    return _check_valid(valid, pixels.shape[1:])


def _check_valid(valid: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != shape:
        raise ValueError(f"valid mask must have shape {shape}, found {valid.shape}")
    return valid


def _check_probs(probs: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities as float32 (K, H, W) and the valid mask (default: finite probabilities)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (K, H, W) for one patch, found shape {probs.shape}")
    if valid is None:
        return probs, np.isfinite(probs).all(axis=0)
    return probs, _check_valid(valid, probs.shape[1:])


def _masked(score: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, score, np.nan).astype(np.float32)


# ---------------------------------------------------------------- model uncertainty


def entropy(probs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Predictive entropy in nats (max log K for uniform, 0 for one-hot)."""
    probs, valid = _check_probs(probs, valid)
    return _masked(-special.xlogy(probs, probs).sum(axis=0), valid)


def margin(probs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``1 - (p1 - p2)`` of the two most probable classes: 1 for a tie, 0 for one-hot."""
    probs, valid = _check_probs(probs, valid)
    top2 = -np.partition(-probs, 1, axis=0)[:2]
    return _masked(1.0 - (top2[0] - top2[1]), valid)


def least_confidence(probs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``1 - max p`` (``1 - 1/K`` for uniform, 0 for one-hot)."""
    probs, valid = _check_probs(probs, valid)
    return _masked(1.0 - probs.max(axis=0), valid)


def glacier_presence(probs: np.ndarray, valid: np.ndarray | None = None, background: int = BACKGROUND) -> np.ndarray:
    """The model's probability that a pixel is glacier (any glacier class): ``1 - p_background``."""
    probs, valid = _check_probs(probs, valid)
    return _masked(1.0 - probs[background], valid)


def bald(bald_map: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The mutual-information map of an MC dropout run (``MCResult.bald``), as is."""
    bald_map = np.asarray(bald_map, dtype=np.float32)
    valid = np.isfinite(bald_map) if valid is None else _check_valid(valid, bald_map.shape)
    return _masked(bald_map, valid)


# ---------------------------------------------------------------- debris


def debris_prior(
    pixels: np.ndarray, channels: Sequence[str], valid: np.ndarray | None = None
) -> np.ndarray:
    """Where debris-covered ice can be, in [0, 1] (NaN where invalid): gentle, not snow, bare, at
    glacier elevations and near clean ice. A product of smooth factors; a factor whose channels
    are missing (or NaN at a pixel) is 1."""
    valid = _valid_from_pixels(pixels, channels, valid)
    factors = []
    slope = _plane(pixels, channels, "slope")
    if slope is not None:
        factors.append(_ramp(slope, SLOPE_RAMP[1], SLOPE_RAMP[0]))
    ndsi = _usual_ndsi(pixels, channels)
    if ndsi is not None:
        factors.append(_ramp(ndsi, SNOW_NDSI + 0.1, SNOW_NDSI - 0.1))
        factors.append(near_clean_ice(ndsi, _visible(pixels, channels)))
    ndvi = _index(pixels, channels, "ndvi")
    if ndvi is not None:
        factors.append(_ramp(ndvi, NDVI_RAMP[1], NDVI_RAMP[0]))
    elevation = _plane(pixels, channels, "elevation")
    if elevation is not None:
        low, high = ELEVATION_BAND
        factors.append(_ramp(elevation, low - ELEVATION_SOFT, low) * _ramp(elevation, high + ELEVATION_SOFT, high))
    return _masked(_product(factors, pixels.shape[1:]), valid)


def near_clean_ice(
    usual_ndsi: np.ndarray, visible: np.ndarray | None, decay_px: float = ICE_DECAY_PX
) -> np.ndarray:
    """``exp(-d / decay_px)``, d the distance in pixels to the nearest clean-ice-looking pixel
    (NDSI above the snow threshold and, when the visible bands exist, bright). 0 everywhere when
    the patch has no such pixel: the ice is then farther than the patch is wide."""
    ice = usual_ndsi > SNOW_NDSI
    if visible is not None:
        ice &= visible > ICE_BRIGHT_DN
    if not ice.any():
        return np.zeros(ice.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~ice)
    return np.exp(-distance / decay_px).astype(np.float32)


def debris_background_confusion(
    probs: np.ndarray, debris: int = DEBRIS, background: int = BACKGROUND
) -> np.ndarray:
    """``2 * min(p_debris, p_background)`` where those two are the top two classes, else 0.

    1 for an even split between them, 0 when either wins outright or another class is involved.
    """
    if max(debris, background) >= len(probs):
        raise ValueError(
            f"debris/background classes {debris}/{background} need a multiclass model; "
            f"probs have {len(probs)} classes"
        )
    p_d, p_b = probs[debris], probs[background]
    others = np.delete(probs, [debris, background], axis=0)
    shared = np.minimum(p_d, p_b)
    top_two = shared >= others.max(axis=0) if len(others) else np.ones_like(shared, dtype=bool)
    return np.where(top_two, 2.0 * shared, 0.0).astype(np.float32)


def debris_ambiguity(
    probs: np.ndarray,
    pixels: np.ndarray,
    channels: Sequence[str],
    debris: int = DEBRIS,
    background: int = BACKGROUND,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Model confusion between debris and background, times the terrain/spectral debris prior.

    Debris-covered ice looks like moraine and bare rock in every band (hkh_data.md): confusion is
    only worth an expert's time where the terrain says debris-covered ice is possible.
    """
    valid = _valid_from_pixels(pixels, channels, valid)
    probs, valid = _check_probs(probs, valid)
    return debris_background_confusion(probs, debris, background) * debris_prior(pixels, channels, valid)


# ---------------------------------------------------------------- cloud


def cloud_thresholds(pixels_sample: np.ndarray, channels: Sequence[str]) -> dict[str, float]:
    """Per-scene ramp ends for :func:`cloud_likelihood`, from a sample of a scene's pixels.

    ``pixels_sample`` is ``(C, ...)`` (a patch, a strided scene, or ``(C, N)`` pixels); only its
    valid pixels count. Keys: ``visible_dark/visible_bright`` (DN), ``swir_low/swir_high`` (B5
    DN), ``thermal_warm/thermal_cold`` (degrees C); a key is absent when its channel is.
    """
    sample = np.asarray(pixels_sample, dtype=np.float32)
    if sample.shape[0] != len(channels):
        raise ValueError(f"pixels_sample must be (C, ...) with C = {len(channels)} channels, found {sample.shape}")
    sample = sample.reshape(len(channels), -1)
    sample = sample[:, bands.valid_mask(sample, channels)]
    if sample.shape[1] == 0:
        raise ValueError("cloud_thresholds needs valid pixels; the sample has none")
    sample = sample[:, None, :]  # (C, 1, N): the plane helpers expect (C, H, W)
    planes = {
        "visible": (_visible(sample, channels), ("visible_dark", "visible_bright")),
        "swir": (_plane(sample, channels, "B5"), ("swir_low", "swir_high")),
        "thermal": (_thermal(sample, channels), ("thermal_warm", "thermal_cold")),
    }
    thresholds: dict[str, float] = {}
    for kind, (values, (k_start, k_end)) in planes.items():
        if values is None:
            continue
        q_start, q_end, min_span = _CLOUD_PERCENTILES[kind]
        start, end = np.nanpercentile(values, [q_start, q_end])
        direction = 1.0 if q_end > q_start else -1.0
        if direction * (end - start) < min_span:
            end = start + direction * min_span
        thresholds[k_start], thresholds[k_end] = float(start), float(end)
    return thresholds


def cloud_likelihood(
    pixels: np.ndarray,
    channels: Sequence[str],
    thresholds: Mapping[str, float],
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """How cloud-like each pixel looks, in [0, 1], from the bands alone.

    Cloud is bright in the visible, cold, bright in SWIR (snow is dark there: B5 21 versus 97 DN
    on the clip) and of middling NDSI (0.27 versus snow 0.72). The geometric mean of those four
    smooth factors: one clear "no" vetoes, and partial evidence stays mid-range, which is what
    :func:`cloud_ambiguity` looks for. Factors whose channel (or threshold) is missing are left
    out; at least one must be available.
    """
    valid = _valid_from_pixels(pixels, channels, valid)
    inputs = [
        (_visible(pixels, channels), "visible_dark", "visible_bright"),
        (_thermal(pixels, channels), "thermal_warm", "thermal_cold"),
        (_plane(pixels, channels, "B5"), "swir_low", "swir_high"),
    ]
    factors = [
        _ramp(values, thresholds[start], thresholds[end])
        for values, start, end in inputs
        if values is not None and start in thresholds and end in thresholds
    ]
    ndsi = _usual_ndsi(pixels, channels)
    if ndsi is not None:
        factors.append(_ramp(ndsi, CLOUD_NDSI_RAMP[1], CLOUD_NDSI_RAMP[0]))
    if not factors:
        raise bands.MissingChannelError(
            "cloud_likelihood needs at least one of B1-B3, B6_VCID_1, B5 or ndsi (with thresholds); "
            f"the patch has: {', '.join(channels)}"
        )
    return _masked(_geometric_mean(factors), valid)


def cloud_ambiguity(
    likelihood: np.ndarray,
    probs: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    ice: int = CLEAN_ICE,
) -> np.ndarray:
    """Where cloud and snow/ice cannot be told apart, times a patch-level opaque-cloud penalty.

    Per pixel ``4 L (1 - L)``: 1 at likelihood 0.5, 0 for a sure "cloud" or "not cloud". With
    model probabilities it is scaled by ``(1 + p_ice) / 2``: the model calling a half-cloud pixel
    clean ice is the confusion that matters for glacier maps. A patch mostly under opaque cloud
    (:data:`OPAQUE_LIKELIHOOD`, :data:`OPAQUE_FRACTION`) is pushed down: nothing to label there.
    """
    likelihood = np.asarray(likelihood, dtype=np.float32)
    valid = np.isfinite(likelihood) if valid is None else _check_valid(valid, likelihood.shape)
    score = 4.0 * likelihood * (1.0 - likelihood)
    if probs is not None:
        probs, _ = _check_probs(probs, valid)
        score = score * (1.0 + probs[ice]) / 2.0
    return _masked(score * opaque_cloud_penalty(likelihood, valid), valid)


def opaque_cloud_penalty(likelihood: np.ndarray, valid: np.ndarray) -> float:
    """1 for a patch with little opaque cloud, falling to 0 as opaque cloud covers it."""
    if not valid.any():
        return 1.0
    fraction = float(np.mean(likelihood[valid] > OPAQUE_LIKELIHOOD))
    return float(1.0 - _ramp(np.float32(fraction), *OPAQUE_FRACTION))


# ---------------------------------------------------------------- BQA (Landsat 7 Collection 1)


def bqa_flags(bqa: np.ndarray) -> dict[str, np.ndarray]:
    """Decode a Landsat 7 Collection 1 BQA band.

    Bits: 0 fill, 1 dropped pixel, 2-3 radiometric saturation, 4 cloud, 5-6 cloud confidence,
    7-8 cloud shadow confidence, 9-10 snow/ice confidence (confidence: 1 low, 2 medium, 3 high).
    On the clip: 672 clear (all confidences low), 704 medium cloud, 752 cloud, 928 cloud shadow,
    1696 snow, 1728 snow with medium cloud confidence; +4/+8 add saturation. Values are rounded
    (NaN reads as 0): an interpolated BQA (patches) is only trustworthy away from flag edges.
    """
    codes = np.rint(np.nan_to_num(np.asarray(bqa, dtype=np.float64), nan=0.0)).astype(np.int64)
    return {
        "fill": codes & 1,
        "dropped": (codes >> 1) & 1,
        "saturation": (codes >> 2) & 3,
        "cloud": (codes >> 4) & 1,
        "cloud_confidence": (codes >> 5) & 3,
        "shadow_confidence": (codes >> 7) & 3,
        "snow_confidence": (codes >> 9) & 3,
    }


def bqa_cloud_mask(bqa: np.ndarray, min_confidence: int = 3) -> np.ndarray:
    """Cloud by the BQA: cloud bit set, or cloud confidence at least ``min_confidence``."""
    flags = bqa_flags(bqa)
    return (flags["cloud"] == 1) | (flags["cloud_confidence"] >= min_confidence)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cloud_agreement(
    likelihood: np.ndarray,
    bqa: np.ndarray,
    valid: np.ndarray | None = None,
    threshold: float = 0.5,
    exclude_medium: bool = False,
) -> dict[str, float]:
    """How well a cloud likelihood matches the BQA cloud flag on valid pixels.

    Returns ``auroc``, ``precision`` and ``recall`` at ``threshold``, ``n_cloud`` and ``n_clear``.
    ``exclude_medium`` drops pixels of medium cloud confidence that are not flagged cloud (the
    in-between group, which is neither a clear positive nor a clear negative).
    """
    likelihood = np.asarray(likelihood, dtype=np.float32)
    keep = np.isfinite(likelihood) if valid is None else _check_valid(valid, likelihood.shape)
    cloud = bqa_cloud_mask(bqa)
    if exclude_medium:
        keep = keep & (cloud | (bqa_flags(bqa)["cloud_confidence"] < 2))
    scores, positive = likelihood[keep], cloud[keep]
    predicted = scores > threshold
    hits = int((predicted & positive).sum())
    return {
        "auroc": auroc(scores, positive),
        "precision": hits / int(predicted.sum()) if predicted.any() else float("nan"),
        "recall": hits / int(positive.sum()) if positive.any() else float("nan"),
        "n_cloud": int(positive.sum()),
        "n_clear": int((~positive).sum()),
    }


# ---------------------------------------------------------------- cold start


def glacier_likelihood(
    pixels: np.ndarray,
    channels: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Snow/ice-looking (NDSI above the snow threshold), cold and high: a glacier may be here.

    In [0, 1], NaN where invalid. Brightness is not used: glacier ice in shadow is dark, and cloud
    is bright too. Factors whose channels (or, for thermal, thresholds) are missing are left out.
    """
    valid = _valid_from_pixels(pixels, channels, valid)
    factors = []
    ndsi = _usual_ndsi(pixels, channels)
    if ndsi is not None:
        factors.append(_ramp(ndsi, SNOW_NDSI - 0.1, SNOW_NDSI + 0.1))
    temperature = _thermal(pixels, channels)
    if temperature is not None and thresholds and "thermal_warm" in thresholds:
        factors.append(_ramp(temperature, thresholds["thermal_warm"], thresholds["thermal_cold"]))
    elevation = _plane(pixels, channels, "elevation")
    if elevation is not None:
        low = ELEVATION_BAND[0]
        factors.append(_ramp(elevation, low - ELEVATION_SOFT, low))
    return _masked(_product(factors, pixels.shape[1:]), valid)


def prior_components(
    pixels: np.ndarray,
    channels: Sequence[str],
    valid: np.ndarray | None = None,
    cloud_thresholds: Mapping[str, float] | None = None,
    q: float = 0.1,
) -> dict[str, float]:
    """Per-patch scores before any model exists: ``glacier`` (glacier-likely), ``debris``
    (debris prior, near clean ice) and, with thresholds, ``cloud`` (cloud-ambiguous)."""
    valid = _valid_from_pixels(pixels, channels, valid)
    maps = {
        "glacier": glacier_likelihood(pixels, channels, cloud_thresholds, valid),
        "debris": debris_prior(pixels, channels, valid),
    }
    if cloud_thresholds is not None:
        likelihood = cloud_likelihood(pixels, channels, cloud_thresholds, valid)
        maps["cloud"] = cloud_ambiguity(likelihood, valid=valid)
    return {name: aggregate(m, valid, q) for name, m in maps.items()}


# ---------------------------------------------------------------- reductions and mixing


def aggregate(pixel_scores: np.ndarray, valid: np.ndarray | None = None, q: float = 0.1) -> float:
    """One score per patch: the mean of the top ``q`` fraction of valid pixels' scores.

    A small glacier tongue in a big patch should count, so not the plain mean; several pixels,
    so not the max (one noisy pixel). NaN scores are ignored; no valid pixel scores 0.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], found {q}")
    pixel_scores = np.asarray(pixel_scores, dtype=np.float64)
    keep = np.isfinite(pixel_scores)
    if valid is not None:
        keep &= _check_valid(valid, pixel_scores.shape)
    values = pixel_scores[keep]
    if values.size == 0:
        return 0.0
    n_top = max(1, int(np.ceil(q * values.size)))
    return float(np.partition(values, values.size - n_top)[values.size - n_top :].mean())


def rank_normalize(scores: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] across the pool (ties share a rank; one patch gets 0.5)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one value per patch (1-D), found shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite to rank them")
    if scores.size == 1:
        return np.array([0.5])
    return (stats.rankdata(scores) - 1.0) / (scores.size - 1.0)


def combine(
    components: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    exponents: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Weighted ARITHMETIC mean of rank-normalised components, each raised to its exponent.

    Arithmetic, not geometric: the components are complementary (a patch worth labelling for its
    cloud/snow confusion may be dull for BALD), and a geometric mean would let the lowest rank in
    any component (0) veto a patch. An exponent above 1 makes a component count mostly at the
    top of its ranking. Components without a weight are ignored.
    """
    missing = [name for name in weights if name not in components]
    if missing:
        raise ValueError(f"weights name component(s) {missing} not given; given: {sorted(components)}")
    exponents = dict(exponents or {})
    stray = [name for name in exponents if name not in weights]
    if stray:
        raise ValueError(f"exponents name component(s) {stray} that have no weight; weighted: {sorted(weights)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, found {dict(weights)}")
    sizes = {name: np.shape(components[name]) for name in weights}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"components must all have one score per patch, found shapes {sizes}")
    total = sum(w * rank_normalize(components[name]) ** exponents.get(name, 1.0) for name, w in weights.items())
    return np.asarray(total / sum(weights.values()))


def strategy_components(strategy: str) -> tuple[str, ...]:
    """The components a strategy needs; a clear error for an unknown strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    return tuple(STRATEGIES[strategy])


def pool_scores(
    strategy: str, components: Mapping[str, np.ndarray], rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """One score per patch of the pool under ``strategy`` (higher = label first).

    ``random`` draws uniform scores from ``rng`` (the pool size from any component); a
    one-component strategy uses the raw scores; ``combined`` uses :func:`combine`.
    """
    names = strategy_components(strategy)
    if strategy == "random":
        if not components:
            raise ValueError("random scores need the pool size: pass at least one component array")
        size = len(next(iter(components.values())))
        return np.random.default_rng(rng).random(size)
    if len(names) == 1:
        if names[0] not in components:
            raise ValueError(f"strategy {strategy!r} needs component {names[0]!r}; given: {sorted(components)}")
        return np.asarray(components[names[0]], dtype=np.float64)
    return combine(components, STRATEGIES[strategy])


def pixel_maps(
    mc: MCResult,
    pixels: np.ndarray,
    channels: Sequence[str],
    *,
    index: int = 0,
    valid: np.ndarray | None = None,
    cloud_thresholds: Mapping[str, float] | None = None,
    strategy: str | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-pixel component maps of one patch (image ``index`` of an MC dropout result), and the
    valid mask they were computed over.

    ``strategy`` None computes every component of :data:`COMPONENTS` (``cloud`` only when the
    scene's ``cloud_thresholds`` are given); a name computes only what that strategy needs
    (``random``: nothing), and ``cloud`` then requires the thresholds.
    """
    names = COMPONENTS if strategy is None else strategy_components(strategy)
    valid = _valid_from_pixels(pixels, channels, valid)
    probs = np.asarray(mc.mean_probs[index], dtype=np.float32)
    if probs.shape[1:] != pixels.shape[1:]:
        raise ValueError(f"probabilities are {probs.shape[1:]} pixels, the patch is {pixels.shape[1:]}")
    maps = {}
    for name in names:
        if name == "entropy":
            maps[name] = entropy(probs, valid)
        elif name == "margin":
            maps[name] = margin(probs, valid)
        elif name == "least_confidence":
            maps[name] = least_confidence(probs, valid)
        elif name == "bald":
            maps[name] = bald(np.asarray(mc.bald[index]), valid)
        elif name == "glacier":
            maps[name] = glacier_presence(probs, valid)
        elif name == "debris":
            maps[name] = debris_ambiguity(probs, pixels, channels, valid=valid)
        elif name == "cloud":
            if cloud_thresholds is None:
                if strategy is None:
                    continue  # every component asked for: a scene without cloud thresholds has none
                raise ValueError("the cloud component needs the scene's cloud_thresholds (see cloud_thresholds())")
            likelihood = cloud_likelihood(pixels, channels, cloud_thresholds, valid)
            maps[name] = cloud_ambiguity(likelihood, probs, valid)
    return maps, valid


def score_patch(
    mc: MCResult,
    pixels: np.ndarray,
    channels: Sequence[str],
    *,
    index: int = 0,
    valid: np.ndarray | None = None,
    cloud_thresholds: Mapping[str, float] | None = None,
    strategy: str | None = None,
    q: float = 0.1,
) -> dict[str, float]:
    """Component scores of one patch: each map of :func:`pixel_maps` reduced by :func:`aggregate`."""
    maps, valid = pixel_maps(mc, pixels, channels, index=index, valid=valid, cloud_thresholds=cloud_thresholds,
                             strategy=strategy)
    return {name: aggregate(m, valid, q) for name, m in maps.items()}
