"""Speed of the segmentation model: patches/s, efficiency against torch's own convolution, and
the cost of Monte Carlo dropout scoring (head-only design against dropout everywhere).

Paper-size U-Net (depth 5, 16 to 512 filters) on 512x512x15 patches, random weights and inputs
(speed does not depend on them). Runs on the CPU, and on CUDA too when there is one (mixed
precision there, as in inference). Thread count as torch sets it. Runs that are compared are
timed interleaved, best of a few, so that other load on the machine hits both alike.

(a) and (b) use a batch of 4. (c) divides mc_predict at T samples by predict_proba on the same
batch: head-only at batch 4 and batch 1, dropout everywhere at batch 1 only (T full passes of a
batch of 4 take minutes on 2 cores; its cost per patch does not depend on the batch).

    python benchmarks/model_speed.py [--batch 4] [--T 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from al_loop.model.inference import autocast_for, mc_predict, predict_proba
from al_loop.model.network import UNet

CHANNELS, CLASSES, SIDE = 15, 3, 512


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def best_times(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: bool = True
) -> dict[str, float]:
    """Best of ``repeats`` runs of each function, the functions taking turns."""
    if warmup:
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, device))
    return best


def flops_of(fn: Callable[[], object]) -> int:
    """FLOPs torch counts for one call (convolutions and matrix products, 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench(device: torch.device, batch: int, T: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = UNet(CHANNELS, CLASSES).to(device).eval()
    everywhere = UNet(CHANNELS, CLASSES, dropout_everywhere=True).to(device).eval()
    x = torch.randn(batch, CHANNELS, SIDE, SIDE, device=device)
    one = x[:1]
    # A single 3x3 convolution of a mid-level U-Net shape: 64 to 64 filters at 128x128.
    conv_in = torch.randn(batch, 64, SIDE // 4, SIDE // 4, device=device)
    conv_weight = torch.randn(64, 64, 3, 3, device=device)

    def forward() -> None:
        with torch.inference_mode(), autocast_for(device):
            model(x)

    def conv() -> None:
        with torch.inference_mode(), autocast_for(device):
            F.conv2d(conv_in, conv_weight, padding=1)

    def det(images: torch.Tensor) -> Callable[[], object]:
        return lambda: predict_proba(model, images, device, batch_size=len(images))

    def mc(net: UNet, images: torch.Tensor) -> Callable[[], object]:
        return lambda: mc_predict(net, images, T, device, batch_size=len(images))

    net_flops, conv_flops = flops_of(forward), flops_of(conv)
    t = best_times({"forward": forward, "conv": conv, "det": det(x), "head": mc(model, x)}, device, repeats)
    t1 = best_times({"det": det(one), "head": mc(model, one)}, device, repeats)
    # no warm-up of its own: the same layer shapes have just run
    naive = best_times({"everywhere": mc(everywhere, one)}, device, repeats, warmup=False)
    t1["everywhere"] = naive["everywhere"]
    return {
        "(a) patches/s": batch / t["det"],
        "GFLOP/patch": net_flops / batch / 1e9,
        "net GFLOP/s": net_flops / t["forward"] / 1e9,
        "3x3 conv GFLOP/s": conv_flops / t["conv"] / 1e9,
        "(b) net / conv": (net_flops / t["forward"]) / (conv_flops / t["conv"]),
        f"det pass s (b{batch})": t["det"],
        f"MC head s (b{batch})": t["head"],
        f"(c) head/det (b{batch})": t["head"] / t["det"],
        "det pass s (b1)": t1["det"],
        "MC head s (b1)": t1["head"],
        "(c) head/det (b1)": t1["head"] / t1["det"],
        "MC everywhere s (b1)": t1["everywhere"],
        "(c) everywhere/det (b1)": t1["everywhere"] / t1["det"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--T", type=int, default=20, help="Monte Carlo samples")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best kept) after a warm-up")
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"U-Net depth 5, 16-512 filters, {SIDE}x{SIDE}x{CHANNELS} patches, T={args.T}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    load_before = os.getloadavg()[0]
    results = {str(d): bench(d, args.batch, args.T, args.repeats) for d in devices}
    print(f"{'':>26}" + "".join(f"{d:>10}" for d in results))
    for key in next(iter(results.values())):
        print(f"{key:>26}" + "".join(f"{r[key]:>10.3f}" for r in results.values()))
    print("(b) the network's achieved GFLOP/s over one mid-level 3x3 conv's, same run")
    print("(c) mc_predict at T samples over predict_proba (forward + softmax), same batch")
    print(f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}: "
          "other load on the machine skews the figures")


if __name__ == "__main__":
    main()
