"""Pool scoring throughput at T=20 (CUDA when there is one, else the CPU): patches per second of
the whole per-patch pipeline of `al-loop next-round` (read, normalise, Monte Carlo dropout, every
acquisition component), against one deterministic pass over the same patches measured in the same run.

    python benchmarks/pool_scoring.py [--patches 8] [--size 512] [--precision auto|fp32|bf16]

The paper-size U-Net (depth 5, 16-512 filters) with freshly initialised weights: throughput
does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from al_loop import bands
from al_loop.config import Config, apply_profile
from al_loop.model.inference import PRECISIONS, autocast_dtype, mc_predict, pick_device, predict_proba
from al_loop.model.network import UNet
from al_loop.sampling import acquisition
from al_loop.synthetic import make_scene
from al_loop.tiling import patch_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--T", type=int, default=20)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="model.precision "
                                                                                "(default: the product's)")
    args = parser.parse_args()
    cfg = apply_profile(Config(), "cuda")  # the paper's U-Net
    side = args.size * int(np.ceil(np.sqrt(args.patches)))
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_scene(Path(tmp), height=side, seed=7)
        with rasterio.open(scene.image) as src:
            pixels = src.read()
    windows = patch_windows(side, side, args.size)[: args.patches]
    patches = [pixels[:, r : r + args.size, c : c + args.size] for r, c in windows]
    valid = [bands.valid_mask(p) for p in patches]
    thresholds = acquisition.cloud_thresholds(pixels[:, ::4, ::4], bands.CHANNELS)
    torch.manual_seed(0)
    model = UNet(15, 3, cfg.model.depth, cfg.model.base_filters, cfg.model.max_filters, cfg.model.dropout).eval()
    x = torch.from_numpy(
        np.stack(
            [
                np.nan_to_num((p - p.mean((1, 2), keepdims=True)) / (p.std((1, 2), keepdims=True) + 1e-6))
                for p in patches
            ]
        )
    )

    device, run = pick_device(), {"batch_size": cfg.sampling.batch_size, "precision": args.precision}
    predict_proba(model, x[:1], device, **run)  # warm-up: kernels chosen on first use
    start = time.perf_counter()
    predict_proba(model, x, device, **run)
    deterministic = time.perf_counter() - start

    start = time.perf_counter()
    mc = mc_predict(model, x, T=args.T, device=device, valid=np.stack(valid), **run)
    mc_seconds = time.perf_counter() - start
    for i, (p, v) in enumerate(zip(patches, valid, strict=True)):
        acquisition.score_patch(mc, p, bands.CHANNELS, index=i, valid=v, cloud_thresholds=thresholds)
    scoring = time.perf_counter() - start

    n = len(patches)
    print(f"{n} patches of {args.size}x{args.size}x15, paper-size U-Net, {device}, precision {args.precision} "
          f"({autocast_dtype(device, args.precision) or 'fp32'}), CPU threads {torch.get_num_threads()}")
    print(f"{'step':<42} {'seconds':>8} {'patches/s':>10} {'x one pass':>11}")
    for name, seconds in (("one deterministic pass", deterministic), (f"MC dropout T={args.T}", mc_seconds),
                          (f"MC T={args.T} + every acquisition component", scoring)):
        print(f"{name:<42} {seconds:>8.2f} {n / seconds:>10.2f} {seconds / deterministic:>11.2f}")


if __name__ == "__main__":
    main()
