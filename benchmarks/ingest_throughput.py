"""Ingest throughput (patches/s) and peak memory for a synthetic tile of 1x and 4x the area.

Each ingest runs in its own process, so its peak resident memory is its own; the figure
reported is the peak minus the process's memory after imports (what ingesting added). The
scenes are generated first, outside the measurement, and ingested as HKH fused tiles (read in
place through windows, quicklooks written), the path a real 15-channel tile takes.

    python benchmarks/ingest_throughput.py [--side 2048]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(tile: str, workspace: str) -> None:
    from al_loop.ingest import ingest_hkh_tile
    from al_loop.workspace import init_workspace, open_store

    ws = init_workspace(workspace)
    store = open_store(ws)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = ingest_hkh_tile(ws, store, Path(tile), quiet=True)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"patches": result.patches, "seconds": seconds, "added_mb": (peak_kb - base_kb) / 1024, "peak_mb": peak_kb / 1024}))


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
    print(f"ratio 4x/1x: patches/s {four['patches'] / four['seconds'] / (one['patches'] / one['seconds']):.2f}, "
          f"added memory {four['added_mb'] / max(one['added_mb'], 1e-9):.2f}, peak memory {four['peak_mb'] / one['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
