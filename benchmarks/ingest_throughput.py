"""Ingest throughput (patches/s) and peak memory for a synthetic tile of 1x and 4x the area.

Each ingest runs in its own process. Its peak resident memory (VmHWM) is reset just before the
ingest starts, and the figure reported is that peak minus the resident memory at that moment:
what ingesting added. (``ru_maxrss`` would not do: Linux carries it across fork and exec.) The
scenes are generated first, outside the measurement, and ingested as HKH fused tiles (read in
place through windows, quicklooks written), the path a real 15-channel tile takes.

    python benchmarks/ingest_throughput.py [--side 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(tile: str, workspace: str) -> None:
    from al_loop.ingest import ingest_hkh_tile
    from al_loop.workspace import init_workspace, open_store

    ws = init_workspace(workspace, profile="cuda")  # 512-px patches, as the HKH slices
    store = open_store(ws)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    base = _memory_mb("VmRSS")
    start = time.perf_counter()
    result = ingest_hkh_tile(ws, store, Path(tile), quiet=True)
    seconds = time.perf_counter() - start
    peak = _memory_mb("VmHWM")
    print(json.dumps({"patches": result.patches, "seconds": seconds, "added_mb": peak - base, "peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048, help="side of the 1x tile in pixels")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    from al_loop.synthetic import make_scene

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 4):
            side = args.side * (2 if factor == 4 else 1)
            scene = make_scene(Path(tmp) / f"scene{factor}", height=side, seed=1)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(scene.image), str(Path(tmp) / f"ws{factor}")],
                check=True, capture_output=True, text=True,
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((factor, side, figures))
    print(f"{'area':>5} {'tile':>11} {'patches':>8} {'seconds':>8} {'patches/s':>10} {'added MB':>9} {'peak MB':>8}")
    for factor, side, f in rows:
        print(f"{factor:>4}x {side:>5}x{side:<5} {f['patches']:>8} {f['seconds']:>8.2f} "
              f"{f['patches'] / f['seconds']:>10.2f} {f['added_mb']:>9.1f} {f['peak_mb']:>8.1f}")
    (_, _, one), (_, _, four) = rows
    print(
        f"ratio 4x/1x: patches/s {four['patches'] / four['seconds'] / (one['patches'] / one['seconds']):.2f}, "
        f"added memory {four['added_mb'] / max(one['added_mb'], 1e-9):.2f}, "
        f"peak memory {four['peak_mb'] / one['peak_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
