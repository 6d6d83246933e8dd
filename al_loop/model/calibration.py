"""Calibrated confidence: temperature scaling (Guo et al., 2017) fitted on validation pixels.

A prediction's score in Label Studio is the model's confidence for the patch: the expected share
of its valid pixels the pre-label gets right, i.e. the mean over pixels of the top-class
probability after dividing the logits by one temperature ``T``. ``T`` is fitted when a version is
trained, by minimising the negative log-likelihood of the validation pixels' labels (a 1-D search
over log T), and kept with the version's metrics beside the expected calibration error (ECE)
before and after. ``T`` > 1 softens an over-confident model; it never changes the predicted class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from al_loop.model.data import IGNORE, UNKNOWN_GLACIER, Sample
from al_loop.model.network import UNet
from al_loop.model.normalization import normalize

MAX_PIXELS = 200_000  # validation pixels sampled for the fit (plenty for one parameter)
ECE_BINS = 15


def log_softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``targets`` (N,) under ``logits`` (N, C) / ``temperature``."""
    return float(-log_softmax(logits, temperature)[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature minimising the NLL: golden-section search over log T (NLL is unimodal in T)."""
    if len(targets) == 0:
        return 1.0
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, targets, np.exp(c)), nll(logits, targets, np.exp(d))
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, targets, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, targets, np.exp(d))
    return float(np.exp((a + b) / 2))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """The gap between confidence and accuracy, averaged over equal-width confidence bins."""
    if len(confidence) == 0:
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for k in np.unique(which):
        inside = which == k
        total += inside.sum() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total / len(confidence))


def patch_confidence(probs: np.ndarray, valid: np.ndarray, temperature: float) -> float:
    """The calibrated confidence of one patch's prediction: the mean over valid pixels of the
    top-class probability of ``probs`` (C, H, W, softmax output) rescaled by ``temperature``."""
    if not valid.any():
        return 0.0
    logp = np.log(np.clip(probs[:, valid], 1e-12, None)).T  # (N, C): log-probabilities are logits
    return float(np.exp(log_softmax(logp, temperature).max(axis=1)).mean())


def validation_logits(model: UNet, samples: list[Sample], norm: dict, device: torch.device, seed: int = 0,
                      max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) and targets (N,) of up to ``max_pixels`` labelled pixels of ``samples``
    (glacier of unknown type left out: it has no single right class)."""
    rng = np.random.default_rng(seed)
    per_sample = max(1, max_pixels // max(1, len(samples)))
    logits, targets = [], []
    model.eval()
    with torch.inference_mode():
        for sample in samples:
            target = sample.target
            keep = (target != IGNORE) & (target != UNKNOWN_GLACIER)
            if not keep.any():
                continue
            x = torch.from_numpy(normalize(*sample.read(), norm)[None]).to(device)
            out = model(x)[0].float().cpu().numpy()  # (C, H, W)
            rows, cols = np.nonzero(keep)
            pick = rng.choice(len(rows), size=min(per_sample, len(rows)), replace=False)
            logits.append(out[:, rows[pick], cols[pick]].T)
            targets.append(target[rows[pick], cols[pick]].astype(np.int64))
    if not logits:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(targets)


def calibrate(model: UNet, samples: list[Sample], norm: dict, device: torch.device) -> dict[str, Any]:
    """Fit the temperature on validation ``samples``; the record kept with the version."""
    logits, targets = validation_logits(model, samples, norm, device)
    if len(targets) == 0:
        return {"temperature": 1.0, "pixels": 0, "ece_before": None, "ece_after": None}
    temperature = fit_temperature(logits, targets)

    def ece(t: float) -> float:
        p = np.exp(log_softmax(logits, t))
        return round(expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == targets), 4)

    return {"temperature": round(temperature, 4), "pixels": int(len(targets)),
            "ece_before": ece(1.0), "ece_after": ece(temperature)}
