"""One ground seen by Landsat 7 ETM+, 5 TM and 8/9 OLI: does a model trained on ETM+ map it alike?

    python benchmarks/sensors.py [--workspace DIR] [--seeds 11 12 13] [--size 512] [--quick]

Runs the README's walkthrough in a throwaway workspace (as ``benchmarks/prelabels.py`` does) or
takes ``--workspace``, a workspace that has been through it. For each seed, the synthetic
generator's scene is written as a Level-1 folder of each sensor with a DEM
(``al_loop.synthetic.make_level1_folder``: ETM+ with all its bands; TM and OLI with theirs, no pan
and one thermal band), each folder is ingested through the CLI (``al-loop ingest scene``) and
predicted with the champion (``al_loop.prediction.predict_scene_file``).

Per sensor: per-class IoU against the scene's exact labels (over valid pixels), the share of valid
pixels whose class equals the ETM+ prediction, and the mean absolute difference of each built
channel from the ETM+ stack. Paired differences against ETM+ over the seeds, with their spread.

What this measures and what not: the TM and OLI files are made from the ETM+ values by the
inverse of al-loop's own conversion (``al_loop.sensors.from_etm``, OLI's mean difference to ETM+
after Roy et al. 2016 included), so the figures show what the conversion loses (TM's coarser
quantisation, saturation limits, the synthesised pan set against the generator's own pan, the
thermal band's high gain) and that the whole path works; they do not show how far real scenes
depart from those mean differences (OLI's narrower NIR over snow, TIRS' narrower thermal band),
which needs real scenes of one day. The rows "unadjusted" show, for OLI, how far its channels
would be from ETM+ without removing the mean difference. The last line is ``sensors: glacier IoU ETM+ X,
TM Y (paired d), OLI Z (paired d); agreement with ETM+ TM a, OLI b``. ``--quick`` trains for 3
epochs: a smoke run, not figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rich.console import Console
from rich.progress import track
from rich.table import Table
from sqlalchemy import select
from typer.testing import CliRunner

from al_loop import bands, sensors
from al_loop.config import open_workspace
from al_loop.io.landsat import find_level1_scene, sensor_of
from al_loop.prediction import NODATA_CLASS, predict_scene_file
from al_loop.synthetic import make_level1_folder
from al_loop.workspace import open_store
from cli import app
from db.models import Scene

from prelabels import walkthrough_workspace  # benchmarks/prelabels.py: the same walkthrough

console = Console(width=200)

ETM_BANDS = bands.RAW_BANDS
OTHER_BANDS = tuple(b for b in ETM_BANDS if b not in ("B6_VCID_2", "B8"))  # what TM and OLI give
SENSORS = {  # code: (scene id on the same day of year, WRS-2 path from the seed; the ETM+ channels it gives)
    "LE07": ("LE07_L1TP_{path:03d}041_20001012_20170209_01_T1", ETM_BANDS),
    "LT05": ("LT05_L1TP_{path:03d}041_19901012_20200916_02_T1", OTHER_BANDS),
    "LC08": ("LC08_L1TP_{path:03d}041_20201012_20201019_02_T1", OTHER_BANDS),
    "LC09": ("LC09_L1TP_{path:03d}041_20221012_20230320_02_T1", OTHER_BANDS),
}
CLASSES = {"clean ice": [1], "debris": [2], "glacier": [1, 2]}
CHANNELS = ("B1", "B4", "B5", "B6_VCID_2", "B8", "ndsi")  # a few to show; all are built
ADJUSTED = ("B1", "B4", "B5")  # OLI without the between-sensor adjustment


def iou(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray, classes: list[int]) -> float:
    a, b = np.isin(predicted, classes) & valid, np.isin(truth, classes) & valid
    return float((a & b).sum() / max((a | b).sum(), 1))


def one_seed(root: Path, workspace: Path, seed: int, size: int) -> dict[str, dict[str, float]]:
    """Ingest and predict the seed's ground as each sensor saw it; figures per sensor."""
    runner, truth, folders = CliRunner(), None, {}
    names = {code: template.format(path=100 + seed % 100) for code, (template, _) in SENSORS.items()}
    for code, (_, delivered) in SENSORS.items():
        scene_id = names[code]
        data = make_level1_folder(root / f"{seed}-{code}", height=size, width=size, seed=seed, band_names=delivered,
                                  scene_id=scene_id, outline_fraction=1.0, with_dem=True)
        result = runner.invoke(
            app, ["ingest", "scene", str(data.folder), "--dem", str(data.dem), "-w", str(workspace), "-q"]
        )
        if result.exit_code != 0:
            raise RuntimeError(result.output)
        truth, folders[code] = data.truth, data.folder
    ws = open_workspace(workspace)
    store = open_store(ws)
    with store.session() as session:
        scenes = {s.name: (s.id, ws.resolve(s.data_path)) for s in session.scalars(select(Scene))}
    maps, stacks = {}, {}
    for code in SENSORS:
        scene, stack = scenes[names[code]]
        out = predict_scene_file(ws, store, scene, out=root / f"{seed}-{code}.tif")
        with rasterio.open(out) as src:
            maps[code] = src.read(1)
        with rasterio.open(stack) as src:
            stacks[code] = {name: src.read(bands.CHANNELS.index(name) + 1) for name in CHANNELS}
    store.dispose()
    valid = maps["LE07"] != NODATA_CLASS
    figures = {}
    for code in SENSORS:
        row = {name: iou(maps[code], truth, valid, classes) for name, classes in CLASSES.items()}
        row["agreement"] = float((maps[code] == maps["LE07"])[valid].mean())
        for name in CHANNELS:
            difference = np.abs(stacks[code][name] - stacks["LE07"][name])[valid]
            row[f"|{name} - ETM+|"] = float(np.nanmean(difference))
        unadjusted = unadjusted_oli(folders[code]) if sensors.SENSORS[code].between_sensors else {}
        for name in ADJUSTED:
            difference = np.abs(unadjusted[name] - stacks["LE07"][name])[valid] if unadjusted else None
            row[f"|{name} - ETM+| unadjusted"] = float(difference.mean()) if difference is not None else float("nan")
        figures[code] = row
    return figures


def unadjusted_oli(folder: Path) -> dict[str, np.ndarray]:
    """ETM+ channels from an OLI folder without removing OLI's mean difference to ETM+."""
    scene = find_level1_scene(folder)
    sensor = sensor_of(scene.sensor)
    raw = {}
    for source in scene.sources(sensor):
        with rasterio.open(source.path) as src:
            raw[source.name] = src.read(1).astype(np.float32)
    bare = dataclasses.replace(sensor, between_sensors={})
    return sensors.to_etm(raw, bare, sensors.calibration(bare, scene.acquired, scene.mtl))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace that has been through the walkthrough")
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--size", type=int, default=512, help="scene height and width in pixels")
    parser.add_argument("--quick", action="store_true", help="train 3 epochs: checks that it runs")
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = walkthrough_workspace(args.workspace, tmp, args.quick, console)
        per_seed = [one_seed(Path(tmp), root, seed, args.size) for seed in track(args.seeds, description="sensors")]
    keys = list(per_seed[0]["LE07"])
    table = Table(title=f"seeds {args.seeds}, {args.size} px scenes; mean (sd) over seeds, paired difference "
                        f"from ETM+ in brackets; {time.perf_counter() - began:.0f} s")
    table.add_column("figure")
    for code in SENSORS:
        table.add_column(code, justify="right")
    for key in keys:
        cells = []
        for code in SENSORS:
            values = [f[code][key] for f in per_seed]
            if np.isnan(values).any():
                cells.append("-")
                continue
            cell = f"{statistics.mean(values):.4f} ({statistics.pstdev(values):.4f})"
            if code != "LE07" and key in CLASSES:
                paired = [f[code][key] - f["LE07"][key] for f in per_seed]
                cell += f" [{statistics.mean(paired):+.4f} ± {statistics.pstdev(paired):.4f}]"
            cells.append(cell)
        table.add_row(key, *cells)
    console.print(table)

    def mean(code: str, key: str) -> float:
        return statistics.mean(f[code][key] for f in per_seed)

    def paired(code: str) -> float:
        return statistics.mean(f[code]["glacier"] - f["LE07"]["glacier"] for f in per_seed)

    console.print(f"sensors: glacier IoU ETM+ {mean('LE07', 'glacier'):.4f}, TM {mean('LT05', 'glacier'):.4f} "
                  f"({paired('LT05'):+.4f}), OLI {mean('LC08', 'glacier'):.4f} ({paired('LC08'):+.4f}); agreement with "
                  f"ETM+ TM {mean('LT05', 'agreement'):.4f}, OLI {mean('LC08', 'agreement'):.4f}", highlight=False)


if __name__ == "__main__":
    main()
