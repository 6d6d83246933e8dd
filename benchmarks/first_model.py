"""A new user's first model, with the defaults, against a tuned threshold on the same validation set.

    python benchmarks/first_model.py

For the built-in scene (`ingest synthetic`) and a small real-like scene (800x655 px, bands B1-B4,
no DEM, glacier outlines over part of it and a clean-ice/debris map of one glacier), runs the
README's walkthrough through the CLI with the profile `al-loop init` picks here and no config
edit, and prints the time of each step and the first model's validation IoU. The baseline, in the
same run and on the same validation pixels: the best single-channel threshold (any channel the
model uses, either direction, tuned on the training patches only), scored as glacier.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from al_loop.config import open_workspace
from al_loop.model.data import UNKNOWN_GLACIER, Sample, split_samples
from al_loop.model.metrics import CountOnce, SegmentationScores
from al_loop.synthetic import make_level1_folder
from al_loop.workspace import open_store
from cli import app
from db import registry

console = Console()


def run(env: dict[str, str], *args) -> tuple[str, float]:
    start = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exit_code:
        raise SystemExit(f"al-loop {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output, time.perf_counter() - start


def glacier_truth(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Labelled valid pixels and whether each is glacier (any glacier label, typed or not)."""
    labelled = (sample.target < 3) | (sample.target == UNKNOWN_GLACIER)
    return labelled, sample.target != 0


def tuned_threshold(train: list[Sample], channels: list[str]) -> tuple[str, str, float]:
    """The channel, direction and threshold with the best glacier IoU on the training pixels."""
    best = (-1.0, "", "", 0.0)
    values, truth = [], []
    for s in train:  # each patch read once
        labelled, glacier = glacier_truth(s)
        values.append(s.read()[0][:, labelled])
        truth.append(glacier[labelled])
    all_values, t_all = np.concatenate(values, axis=1), np.concatenate(truth)
    for k, name in enumerate(channels):
        v, t = all_values[k], t_all
        finite = np.isfinite(v)
        v, t = v[finite], t[finite]
        for cut in np.unique(np.quantile(v, np.linspace(0.01, 0.99, 99))):
            for direction, pred in ((">", v > cut), ("<", v < cut)):
                iou = (pred & t).sum() / max((pred | t).sum(), 1)
                if iou > best[0]:
                    best = (iou, name, direction, float(cut))
    return best[1], best[2], best[3]


def threshold_glacier_iou(val: list[Sample], channels: list[str], rule: tuple[str, str, float]) -> float:
    name, direction, cut = rule
    scores, once = SegmentationScores(("background", "clean_ice", "debris"), UNKNOWN_GLACIER), CountOnce()
    for s in val:
        values = s.read()[0][channels.index(name)]
        pred = ((values > cut) if direction == ">" else (values < cut)).astype(np.int64)  # glacier as clean ice
        fresh = None if s.window is None else once.fresh(s.scene_id, *s.window, *pred.shape)
        scores.update(pred, s.target, fresh)
    return scores.as_dict()["glacier"]["iou"]


def iou(output: str, row: str) -> str:
    found = re.search(rf"│ {row} +│ +([0-9.]+|n/a) │", output)
    return found.group(1) if found else "?"


def walkthrough(root: Path, name: str) -> dict:
    env = {"AL_LOOP_WORKSPACE": str(root / "ws"), "COLUMNS": "200"}
    times = {}
    run(env, "init")
    if name == "built-in":
        _, times["ingest"] = run(env, "ingest", "synthetic", "-q")
    else:
        data = make_level1_folder(root / "data")
        _, a = run(env, "ingest", "scene", data.folder, "-q")
        _, b = run(env, "ingest", "labels", data.outlines, "-q")
        _, c = run(env, "ingest", "labels", data.glacier_map, "--map", "0=unlabeled", "--map", "1=clean_ice",
                   "--map", "2=debris", "-q")
        times["ingest"] = a + b + c
    trained, times["train"] = run(env, "train", "-q")
    _, times["evaluate"] = run(env, "evaluate")
    if name == "built-in":
        run(env, "ingest", "synthetic", "--unlabelled", "-q")
    _, times["next-round"] = run(env, "next-round", "-q")
    ws = open_workspace(root / "ws")
    store = open_store(ws)
    with store.session() as session:
        version = registry.champion(session)
        data = split_samples(session, ws, list(version.channels), "multiclass")
    store.dispose()
    rule = tuned_threshold(data.train, data.channels)
    epochs = re.search(r"best epoch (\d+) of (\d+)", " ".join(trained.split()))
    return {"scene": name, "times": times, "trained": trained, "train_patches": len(data.train),
            "val_patches": len(data.val), "channels": len(data.channels), "epochs": epochs.groups() if epochs else "?",
            "rule": rule, "threshold_iou": threshold_glacier_iou(data.val, data.channels, rule)}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("built-in", "B1-B4 800x655"):
            with console.status(f"walkthrough on the {name} scene"):
                rows.append(walkthrough(Path(tmp) / name.split()[0], name))
    table = Table(title="first model with the defaults (cpu profile, 2 CPU cores) vs a tuned "
                        "threshold, same validation set")
    for column in ("scene", "channels", "train/val patches", "ingest s", "train s", "evaluate s", "next-round s",
                   "best epoch", "glacier IoU", "clean IoU", "debris IoU", "threshold rule", "threshold glacier IoU",
                   "model - threshold"):
        table.add_column(column, justify="left" if column in ("scene", "threshold rule") else "right")
    for r in rows:
        t, model = r["times"], float(iou(r["trained"], "glacier"))
        name, direction, cut = r["rule"]
        table.add_row(
            r["scene"],
            str(r["channels"]),
            f"{r['train_patches']}/{r['val_patches']}",
            *(f"{t[k]:.0f}" for k in ("ingest", "train", "evaluate", "next-round")),
            "/".join(r["epochs"]),
            f"{model:.3f}",
            iou(r["trained"], "clean_ice"),
            iou(r["trained"], "debris"),
            f"{name} {direction} {cut:.3g}",
            f"{r['threshold_iou']:.3f}",
            f"{model - r['threshold_iou']:+.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
