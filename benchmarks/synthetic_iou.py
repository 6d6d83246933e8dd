"""IoU on the synthetic benchmark: train on one synthetic scene with all its labels, test on
another (a different, disjoint location: a held-out region), for the head-only dropout
design and the paper's dropout-everywhere, both scored by Monte Carlo dropout (T samples).

    python benchmarks/synthetic_iou.py [--side 1024] [--patch 256] [--epochs 30] [--T 20]

Prints per-class IoU on the held-out scene for both designs and MC time relative to one
deterministic pass of the same model, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from al_loop import bands
from al_loop.config import Config, apply_profile
from al_loop.model.data import HeldPixels, Sample, normalization, to_target
from al_loop.model.inference import mc_predict, predict_proba
from al_loop.model.metrics import ConfusionMatrix
from al_loop.model.normalization import normalize
from al_loop.model.training import architecture, train
from al_loop.synthetic import generate
from al_loop.tiling import patch_windows

CLASSES = ["background", "clean_ice", "debris"]


def patches(seed: int, side: int, size: int) -> list[Sample]:
    pixels, labels, _ = generate(side, side, seed)
    out = []
    for i, (r, c) in enumerate(patch_windows(side, side, size)):
        truth = np.zeros((size, size), np.uint8)
        part = labels[r : r + size, c : c + size]
        truth[: part.shape[0], : part.shape[1]] = part
        window = np.zeros((pixels.shape[0], size, size), np.float32)  # edge patches reach past the scene
        window[:, : part.shape[0], : part.shape[1]] = pixels[:, r : r + size, c : c + size]
        valid = bands.valid_mask(window)
        out.append(Sample(i, seed, (i,), HeldPixels(window, valid), to_target(truth, valid, "multiclass"), (r, c)))
    return out


def score(model, samples, norm, T: int) -> tuple[ConfusionMatrix, float, float]:
    read = [s.read() for s in samples]
    x = torch.from_numpy(np.stack([normalize(pixels, valid, norm) for pixels, valid in read]))
    start = time.perf_counter()
    predict_proba(model, x, batch_size=4)
    deterministic = time.perf_counter() - start
    start = time.perf_counter()
    result = mc_predict(model, x, T=T, batch_size=4, valid=np.stack([valid for _, valid in read]))
    mc = time.perf_counter() - start
    matrix = ConfusionMatrix(3)
    for s, p in zip(samples, result.mean_probs.argmax(1).numpy(), strict=True):
        matrix.update(p, s.target)
    return matrix, deterministic, mc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--T", type=int, default=20)
    args = parser.parse_args()
    train_samples = patches(seed=1, side=args.side, size=args.patch)
    val_samples = patches(seed=2, side=args.side // 2, size=args.patch)  # early stopping
    test_samples = patches(seed=3, side=args.side, size=args.patch)  # held out, never seen
    config = apply_profile(Config(), "cuda")  # the paper's U-Net
    config.training.crop_size = 0
    config.training.max_epochs = args.epochs
    config.training.learning_rate = 1e-3
    channels = list(bands.CHANNELS)
    norm = normalization(train_samples, channels)
    print(f"train {len(train_samples)} / val {len(val_samples)} / test {len(test_samples)} patches of {args.patch}px, "
          f"paper-size U-Net (depth {config.model.depth}, "
          f"{config.model.base_filters}-{config.model.max_filters} filters)")
    rows = []
    for design, everywhere in (("head-only dropout", False), ("dropout everywhere", True)):
        arch = {**architecture(config.model), "dropout_everywhere": everywhere}
        start = time.perf_counter()
        result = train(train_samples, val_samples, arch=arch, train_cfg=config.training, class_names=CLASSES, norm=norm)
        minutes = (time.perf_counter() - start) / 60
        matrix, deterministic, mc = score(result.model, test_samples, norm, args.T)
        iou = matrix.iou()
        rows.append((design, iou, mc / deterministic, result.best_epoch, minutes))
    print(
        f"\n{'design':<20} {'background':>10} {'clean ice':>10} {'debris':>10} "
        f"{'MC T=' + str(args.T) + ' / 1 pass':>16} {'best epoch':>10} {'train min':>9}"
    )
    for design, iou, ratio, epoch, minutes in rows:
        print(
            f"{design:<20} {iou[0]:>10.3f} {iou[1]:>10.3f} {iou[2]:>10.3f} {ratio:>16.2f} {epoch:>10} {minutes:>9.1f}"
        )


if __name__ == "__main__":
    main()
