"""CPU precision: fp32 eager against channels-last fp32 and channels-last bf16, speed and accuracy.

    python benchmarks/cpu_precision.py [--workspace DIR] [--quick] [--repeats 3] [--T 20]

Speed: the paper-size U-Net (depth 5, 16 to 512 filters, random weights) on a batch of 4
512x512x15 patches: patches/s of a forward pass and of Monte Carlo scoring at T samples
(``mc_predict``, head-only dropout), in three settings timed interleaved, best of ``--repeats``:
fp32 with contiguous tensors (what inference did before), channels-last fp32, channels-last bf16
autocast (what ``model.precision = "auto"`` picks on a CPU with AVX-512 BF16 or AMX). The network's
achieved GFLOP/s is set against the best rate one mid-level 3x3 convolution (64 to 64 filters at
128x128) reaches in any of the three settings.

Accuracy: the README walkthrough's model (trained here, or ``--workspace``) on the pool scene:
per-class IoU of fp32 and bf16 predictions against the scene's exact labels, the share of pixels
whose class differs, and the pool's acquisition scores (``rounds.score_batch``, the product's
``combined`` strategy) under both: Spearman's rho and the overlap of the top quarter. The last line is
``bf16/fp32 scoring speed ratio: X``, channels-last bf16 over fp32 eager (what scoring was).
``--quick``: 3-epoch model, one repeat, T=4.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr
from sqlalchemy import select
from torch.utils.flop_counter import FlopCounterMode

from al_loop import rounds
from al_loop.classes import UNLABELED
from al_loop.model.inference import _mc_sums, cpu_has_bf16, mc_predict
from al_loop.model.network import UNet
from al_loop.model.normalization import normalize
from al_loop.patches import read_patch
from db import registry
from db.models import Scene

from prelabels import pool_truth, served_champion, walkthrough_workspace  # benchmarks/prelabels.py

console = Console(width=200)
SETTINGS = {  # name: (channels-last, bf16 autocast)
    "fp32 eager": (False, False),
    "channels-last fp32": (True, False),
    "channels-last bf16": (True, True),
}
CLASSES = {"background": [0], "clean ice": [1], "debris": [2], "glacier": [1, 2]}


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, taking turns, after a warm-up."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def speed(repeats: int, T: int, batch: int = 4) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    model = UNet(15, 3).eval()
    x = torch.randn(batch, 15, 512, 512)
    conv_in, conv_w = torch.randn(batch, 64, 128, 128), torch.randn(64, 64, 3, 3)

    def layout(tensor: torch.Tensor, last: bool) -> torch.Tensor:
        return tensor.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format)

    def setting(last: bool, bf16: bool) -> dict[str, Callable[[], object]]:
        def run(fn: Callable[[], object]) -> Callable[[], object]:
            def go() -> object:
                model.to(memory_format=torch.channels_last if last else torch.contiguous_format)
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return fn()
            return go
        xs, ci, cw = layout(x, last), layout(conv_in, last), layout(conv_w, last)
        return {"forward": run(lambda: model(xs)),
                "mc": run(lambda: _mc_sums(model, xs, T, 0)),
                "conv": run(lambda: F.conv2d(ci, cw, padding=1))}

    fns = {name: setting(*flags) for name, flags in SETTINGS.items()}
    net_flops = flops(fns["fp32 eager"]["forward"])
    conv_flops = flops(fns["fp32 eager"]["conv"])
    times = best_of({f"{name}/{kind}": fn for name, kinds in fns.items() for kind, fn in kinds.items()}, repeats)
    out = {}
    for name in SETTINGS:
        out[name] = {"forward patches/s": batch / times[f"{name}/forward"],
                     f"MC T={T} patches/s": batch / times[f"{name}/mc"],
                     "net GFLOP/s": net_flops / times[f"{name}/forward"] / 1e9,
                     "3x3 conv GFLOP/s": conv_flops / times[f"{name}/conv"] / 1e9}
    best_conv = max(r["3x3 conv GFLOP/s"] for r in out.values())
    for row in out.values():
        row["net / best conv"] = row["net GFLOP/s"] / best_conv
    return out


def accuracy(root: Path) -> dict[str, float]:
    """fp32 against bf16 on the walkthrough's pool scene: IoU, changed pixels, acquisition ranking."""
    ws, store, holder = served_champion(root)
    with store.session() as session:
        patches, truths, _ = pool_truth(session)
        version = registry.champion(session)
        scene = session.scalars(select(Scene).where(Scene.id == patches[0].scene_id)).one()
        thresholds = {scene.id: rounds.scene_cloud_thresholds(ws, scene)}
    model = holder.current.model
    read = [read_patch(ws, p, version.channels) for p in patches]
    x = np.stack([normalize(pixels, ok, version.normalization) for pixels, ok in read])
    valid = np.stack([ok for _, ok in read]) & (np.stack(truths) != UNLABELED)
    truth = np.stack(truths)
    maps, scores = {}, {}
    for precision in ("fp32", "bf16"):
        mc = mc_predict(model, x, T=ws.config.model.mc_samples, valid=valid, precision=precision, batch_size=4)
        maps[precision] = mc.mean_probs.argmax(1).numpy()
        ws.config.model.precision = precision
        ordered = rounds.score_batch(ws, patches, model, version, thresholds, torch.device("cpu"))
        scores[precision], _, _ = rounds._pool_scores(ordered, len(ordered), version, "combined", 0)
    store.dispose()
    out = {}
    for name, classes in CLASSES.items():
        for precision in ("fp32", "bf16"):
            a, b = np.isin(maps[precision], classes) & valid, np.isin(truth, classes) & valid
            out[f"{name} IoU {precision}"] = float((a & b).sum() / max((a | b).sum(), 1))
        out[f"{name} IoU bf16 - fp32"] = out[f"{name} IoU bf16"] - out[f"{name} IoU fp32"]
    out["pixels whose class differs"] = float((maps["fp32"] != maps["bf16"])[valid].mean())
    out["acquisition Spearman rho"] = float(spearmanr(scores["fp32"], scores["bf16"]).statistic)
    k = max(1, len(patches) // 4)  # a round's worth
    top = [set(np.argsort(-scores[p])[:k]) for p in ("fp32", "bf16")]
    out[f"top-{k} overlap"] = len(top[0] & top[1]) / k
    out["pool patches"] = len(patches)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace that has been through the walkthrough")
    parser.add_argument("--quick", action="store_true", help="3-epoch model, one repeat, T=4: checks that it runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--T", type=int, default=20)
    args = parser.parse_args()
    repeats, T = (1, 4) if args.quick else (args.repeats, args.T)
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 units: {cpu_has_bf16()}",
                  highlight=False)
    with console.status("timing"):
        timing = speed(repeats, T)
    table = Table(title=f"paper-size U-Net, batch of 4 512x512x15 patches, best of {repeats}")
    table.add_column("")
    for name in SETTINGS:
        table.add_column(name, justify="right")
    for key in next(iter(timing.values())):
        table.add_row(key, *(f"{timing[name][key]:.3f}" for name in SETTINGS))
    console.print(table)
    with tempfile.TemporaryDirectory() as tmp:
        root = walkthrough_workspace(args.workspace, tmp, args.quick, console)
        with console.status("fp32 against bf16 on the pool scene"):
            figures = accuracy(root)
    table = Table(title="the walkthrough's model on its pool scene: fp32 against bf16")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:+.4f}" if "- fp32" in key else f"{value:.4f}")
    console.print(table)
    mc_key = f"MC T={T} patches/s"
    bf16 = timing["channels-last bf16"][mc_key]
    console.print(f"network rate / best conv rate (bf16): {timing['channels-last bf16']['net / best conv']:.3f}; "
                  f"bf16 over channels-last fp32: {bf16 / timing['channels-last fp32'][mc_key]:.2f}x; largest IoU "
                  f"change {max(abs(v) for k, v in figures.items() if '- fp32' in k):.4f}", highlight=False)
    console.print(f"bf16/fp32 scoring speed ratio: {bf16 / timing['fp32 eager'][mc_key]:.2f}", highlight=False)


if __name__ == "__main__":
    main()
