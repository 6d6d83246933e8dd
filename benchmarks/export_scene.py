"""How long `al-loop export` takes on a full-size scene, and its peak memory, against `al-loop
predict` (which holds the whole scene's probabilities) on the same scene in the same run.

    python benchmarks/export_scene.py --workspace DIR [--tiles 7]

``--workspace``: one with a champion (e.g. after the README walkthrough); it is copied, not
changed. The scene is the built-in synthetic scene (1024 px, 15 channels) tiled ``--tiles`` x
``--tiles`` times (7: 7,168 px square, about a Landsat scene), written as a tiled GeoTIFF and
ingested. Each command runs in its own process; peak memory is its maximum resident set size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rich.console import Console
from rich.table import Table

from al_loop import bands
from al_loop.config import open_workspace
from al_loop.synthetic import generate
from al_loop.workspace import open_store
from db.queries import raster_scene_ids

console = Console(width=140)


def big_scene(path: Path, tiles: int) -> tuple[int, int]:
    """The synthetic scene tiled ``tiles`` x ``tiles`` times, as a tiled, uncompressed, band-interleaved
    GeoTIFF named like an HKH tile. (A deflate-compressed, pixel-interleaved one took over 18 minutes
    to ingest here: the stretch's decimated read decompresses every tile once per band.)"""
    pixels, _, _ = generate(1024, 1024, 0)
    size = 1024 * tiles
    profile = dict(driver="GTiff", width=size, height=size, count=len(bands.CHANNELS), dtype="float32",
                   crs="EPSG:32645", transform=rasterio.transform.from_origin(400000, 3200000, 30, 30),
                   tiled=True, blockxsize=256, blockysize=256, interleave="band", BIGTIFF="YES")
    with rasterio.open(path, "w", **profile) as dst:
        for k, name in enumerate(bands.CHANNELS, start=1):
            dst.write(np.tile(pixels[k - 1], (tiles, tiles)), k)
            dst.set_band_description(k, name)
    return size, size


def timed(args: list[str], log: Path) -> tuple[float, float]:
    """Seconds and peak resident memory (GiB, that process's own maximum RSS) of one command."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(args)} failed:\n{log.read_text()}")
    return seconds, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with a champion (copied)")
    parser.add_argument("--tiles", type=int, default=7, help="the 1024-px scene tiled N x N times")
    args = parser.parse_args()
    cli = [sys.executable, "-c", "import cli; cli.app()"]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        shutil.copytree(args.workspace, ws)
        with console.status("writing the scene"):
            size = big_scene(Path(tmp) / "LE07_140041_20201030.tif", args.tiles)
        subprocess.run([*cli, "ingest", "scene", str(Path(tmp) / "LE07_140041_20201030.tif"), "-q", "-w", str(ws)],
                       check=True, capture_output=True)
        store = open_store(open_workspace(ws))
        with store.session() as session:
            scene_id = raster_scene_ids(session)[-1]
        store.dispose()
        rows = []
        with console.status("al-loop predict (the whole scene's probabilities in memory)"):
            rows.append(("al-loop predict", *timed([*cli, "predict", str(scene_id), "--mc", "0", "-w", str(ws)],
                                                   Path(tmp) / "predict.log")))
        with console.status("al-loop export (strips)"):
            rows.append(("al-loop export", *timed([*cli, "export", str(scene_id), "-w", str(ws)],
                                                  Path(tmp) / "export.log")))
            console.print((Path(tmp) / "export.log").read_text(), highlight=False)
    megapixels = size[0] * size[1] / 1e6
    table = Table(title=f"a {size[0]} x {size[1]} px scene ({megapixels:.0f} Mpx, 15 channels), one process each")
    for column in ("command", "seconds", "s / Mpx", "peak memory GiB"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, seconds, peak in rows:
        table.add_row(name, f"{seconds:.0f}", f"{seconds / megapixels:.2f}", f"{peak:.2f}")
    console.print(table)
    (_, p_s, p_mem), (_, e_s, e_mem) = rows
    console.print(f"export: {e_s:.0f} s, peak {e_mem:.2f} GiB for {megapixels:.0f} Mpx "
                  f"(predict: {p_s:.0f} s, {p_mem:.2f} GiB; export/predict time {e_s / p_s:.2f}x)", highlight=False)


if __name__ == "__main__":
    main()
