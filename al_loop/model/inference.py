"""Prediction: deterministic probabilities, Monte Carlo dropout uncertainty, whole scenes.

Uncertainties are in nats. For T dropout samples p_t of one pixel's class probabilities:

* predictive entropy ``H[mean_t p_t]`` (total uncertainty),
* expected entropy ``mean_t H[p_t]`` (what the model expects even with its weights known),
* BALD, the mutual information = predictive - expected entropy (disagreement between samples).

Only running sums over the T samples are held. An invalid pixel (no data) is not uncertain: its
uncertainties are 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from al_loop.model.network import UNet
from al_loop.tiling import edge_aligned_starts

ReadWindow = Callable[[int, int, int, int], np.ndarray]
"""``read(row, col, height, width)`` -> array of shape (C, height, width) (model-ready input)."""
ReadValid = Callable[[int, int, int, int], np.ndarray]
"""``read(row, col, height, width)`` -> bool array (height, width), True where pixels are valid."""


@dataclass
class MCResult:
    """Per-pixel Monte Carlo dropout summaries of a batch of N images (CPU tensors)."""

    mean_probs: torch.Tensor  # (N, K, H, W) float32
    entropy: torch.Tensor  # (N, H, W) predictive entropy, 0 where invalid
    bald: torch.Tensor  # (N, H, W) mutual information, 0 where invalid
    embedding: torch.Tensor  # (N, C) pooled bottleneck features of the deterministic trunk


@dataclass
class ScenePrediction:
    """A whole scene's prediction (numpy)."""

    classes: np.ndarray  # (H, W) uint8, argmax of probs
    probs: np.ndarray  # (K, H, W) float32, blended (MC mean) probabilities
    entropy: np.ndarray  # (H, W) float32, predictive entropy, 0 where invalid
    bald: np.ndarray | None  # (H, W) float32, mutual information; None without MC (T=0)


def pick_device() -> torch.device:
    """CUDA when there is a GPU, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")
"""Inference arithmetic (``model.precision``): ``auto`` is bf16 where the hardware computes it
natively (CUDA; a CPU with AVX-512 BF16 or AMX), fp32 elsewhere; bf16 emulated on an older CPU is
slower than fp32."""


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic units (AVX-512 BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The lower precision autocast runs ``device``'s convolutions in; None for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" or cpu_has_bf16() else None


def autocast_for(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed precision at :func:`autocast_dtype`'s choice; a null context for fp32."""
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def training_autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Training's precision (``training.precision``): auto is mixed on CUDA and fp32 on the CPU,
    where bf16 trained 1.45x faster but lost about 0.01 glacier IoU
    (``benchmarks/cpu_training_precision.py``)."""
    return autocast_for(device, "fp32" if precision == "auto" and device.type != "cuda" else precision)


@contextlib.contextmanager
def _eval_on(model: nn.Module, device: torch.device | str | None, precision: str) -> Iterator[torch.device]:
    """Eval mode (restored afterwards) on ``device`` (default: where the model already is), in
    ``precision``. On the CPU the model's tensors go channels-last, the layout oneDNN's
    convolutions run fastest in."""
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_for(device, precision):
            yield device
    finally:
        model.train(was_training)


def _on(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``, channels-last on the CPU (see :func:`_eval_on`)."""
    x = x.to(device, torch.float32)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


def _batches(x: torch.Tensor | np.ndarray, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    x = torch.as_tensor(x, dtype=torch.float32)
    for start in range(0, len(x), batch_size):
        yield _on(x[start : start + batch_size], device)


def _entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(dim)


def predict_proba(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
) -> torch.Tensor:
    """Deterministic softmax probabilities (N, K, H, W), float32 on the CPU."""
    with _eval_on(model, device, precision) as dev:
        return torch.cat([_softmax(model(xb)).cpu() for xb in _batches(x, batch_size, dev)])


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)


def _mc_sums(
    model: UNet, x: torch.Tensor, T: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean probabilities, expected entropy and bottleneck embedding of one batch over T samples.

    The generator is reseeded per batch and every sample's dropout mask is shared by the batch
    (see :class:`~al_loop.model.network.SpatialDropout`), so results do not depend on batching.
    """
    if T < 1:
        raise ValueError(f"T must be at least 1 for Monte Carlo dropout, found {T}")
    with torch.random.fork_rng(devices=[]):  # masks are drawn on the CPU generator
        torch.manual_seed(seed)
        trunk = None if model.dropout_everywhere else model.features(x)
        embedding = model.bottleneck_features(x) if trunk is None else trunk.bottleneck
        for t in range(T):
            # With dropout everywhere every sample re-runs the network; otherwise only the head.
            logits = model(x, mc=True) if trunk is None else model.head(trunk.decoded, mc=True)
            log_p = torch.log_softmax(logits.float(), dim=1)
            p = log_p.exp()
            h = -(p * log_p).sum(1)
            if t == 0:
                prob_sum, entropy_sum = p, h
            else:
                prob_sum += p
                entropy_sum += h
    return prob_sum / T, entropy_sum / T, embedding.float()


def mc_predict(
    model: UNet,
    x: torch.Tensor | np.ndarray,
    T: int = 20,
    device: torch.device | str | None = None,
    seed: int = 0,
    valid: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 8,
    precision: str = "fp32",
) -> MCResult:
    """Monte Carlo dropout over a batch of images (N, C, H, W); ``valid`` is (N, H, W) bool.

    The trunk runs once per image and only the head is sampled, unless the model has dropout
    everywhere. Deterministic for a given ``seed``, whatever ``batch_size`` in fp32; in bf16 the
    convolutions' kernels differ with the batch's size, and a pixel's probabilities move by up to
    a few thousandths between batch sizes (a patch's mean by about 1e-5).
    """
    means, entropies, balds, embeddings = [], [], [], []
    with _eval_on(model, device, precision) as dev:
        for xb in _batches(x, batch_size, dev):
            mean, expected, embedding = _mc_sums(model, xb, T, seed)
            entropy = _entropy(mean)
            means.append(mean.cpu())
            entropies.append(entropy.cpu())
            balds.append((entropy - expected).clamp_(min=0).cpu())
            embeddings.append(embedding.cpu())
    result = MCResult(torch.cat(means), torch.cat(entropies), torch.cat(balds), torch.cat(embeddings))
    if valid is not None:
        invalid = ~torch.as_tensor(valid, dtype=torch.bool)
        result.entropy[invalid] = 0.0
        result.bald[invalid] = 0.0
    return result


def _ramp(n: int, overlap: int) -> np.ndarray:
    """Blending weights along one axis: linear from ~0 to 1 over ``overlap`` pixels at both ends.

    Always positive; two neighbours overlapping by ``overlap`` sum to exactly 1 there.
    """
    if overlap == 0:
        return np.ones(n, dtype=np.float32)
    i = np.arange(n, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 0.5, n - 0.5 - i) / overlap).astype(np.float32)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def predict_scene(
    model: UNet,
    read_window: ReadWindow,
    height: int,
    width: int,
    tile: int = 512,
    overlap: int = 64,
    T: int = 0,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    seed: int = 0,
    read_valid: ReadValid | None = None,
    precision: str = "fp32",
) -> ScenePrediction:
    """Sliding-window prediction of a scene of any size, tiles blended with linear ramps.

    Holds the (K, H, W) probabilities and two (H, W) planes, plus ``batch_size`` tiles. With
    ``T > 0`` each tile is scored by Monte Carlo dropout (the same T sub-networks everywhere);
    the scene's BALD is the predictive entropy of the blended mean minus the blended expected
    entropy. ``read_valid`` (same window arguments) zeroes uncertainty on invalid pixels.
    """
    if height < 1 or width < 1:
        raise ValueError(f"scene must have at least one pixel, found {height}x{width}")
    multiple = getattr(model, "multiple", 1)
    if tile % multiple:
        raise ValueError(f"tile must be a multiple of {multiple} for this model, found {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), found {overlap}")
    # A scene smaller than a tile is predicted in one smaller window.
    tile_h, tile_w = min(tile, _round_up(height, multiple)), min(tile, _round_up(width, multiple))
    ramp_h, ramp_w = _ramp(tile_h, min(overlap, tile_h - 1)), _ramp(tile_w, min(overlap, tile_w - 1))
    windows = [
        (r, c, min(tile_h, height - r), min(tile_w, width - c))
        for r in edge_aligned_starts(height, tile_h, tile_h - overlap)
        for c in edge_aligned_starts(width, tile_w, tile_w - overlap)
    ]

    probs: np.ndarray | None = None
    expected = np.zeros((height, width), np.float32) if T > 0 else None
    weight = np.zeros((height, width), np.float32)
    with _eval_on(model, device, precision) as dev:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            x = _on(torch.from_numpy(np.stack([_read_padded(read_window, w, tile_h, tile_w) for w in batch])), dev)
            if T > 0:
                mean_t, entropy_t, _ = _mc_sums(model, x, T, seed)
                exp_entropy = entropy_t.cpu().numpy()
            else:
                mean_t = _softmax(model(x))
            mean = mean_t.cpu().numpy()
            if probs is None:
                probs = np.zeros((mean.shape[1], height, width), np.float32)
            for i, (r, c, h, w) in enumerate(batch):
                wt = ramp_h[:h, None] * ramp_w[None, :w]
                probs[:, r : r + h, c : c + w] += wt * mean[i, :, :h, :w]
                weight[r : r + h, c : c + w] += wt
                if expected is not None:
                    expected[r : r + h, c : c + w] += wt * exp_entropy[i, :h, :w]
    assert probs is not None  # there is at least one window
    return _finish(probs, weight, expected, read_valid, block=tile_h)


def _read_padded(
    read_window: ReadWindow, window: tuple[int, int, int, int], tile_h: int, tile_w: int
) -> np.ndarray:
    """Read a window and reflect-pad it to the tile size (only where the scene is smaller)."""
    r, c, h, w = window
    data = np.asarray(read_window(r, c, h, w), dtype=np.float32)
    if data.shape[1:] != (h, w):
        raise ValueError(
            f"read_window({r}, {c}, {h}, {w}) returned shape {data.shape}, expected (C, {h}, {w})"
        )
    if (h, w) == (tile_h, tile_w):
        return data
    return np.pad(data, ((0, 0), (0, tile_h - h), (0, tile_w - w)), mode="reflect")


def _finish(
    probs: np.ndarray,
    weight: np.ndarray,
    expected: np.ndarray | None,
    read_valid: ReadValid | None,
    block: int,
) -> ScenePrediction:
    """Normalise the weighted sums and derive classes and uncertainties, a row block at a time
    (bounded temporaries). ``weight`` is reused in place for the entropy."""
    height, width = weight.shape
    classes = np.empty((height, width), np.uint8)
    for r in range(0, height, block):
        rows = slice(r, r + block)
        p = probs[:, rows]
        p /= weight[rows]
        classes[rows] = p.argmax(0)
        entropy = _entropy(torch.from_numpy(p), dim=0).numpy()
        invalid = None if read_valid is None else ~np.asarray(read_valid(r, 0, p.shape[1], width), dtype=bool)
        if expected is not None:
            bald = expected[rows]
            np.maximum(entropy - bald / weight[rows], 0.0, out=bald)
            if invalid is not None:
                bald[invalid] = 0.0
        if invalid is not None:
            entropy[invalid] = 0.0
        weight[rows] = entropy
    return ScenePrediction(classes, probs, entropy=weight, bald=expected)
