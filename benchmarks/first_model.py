"""A new user's first model, with the defaults, against a tuned threshold on the same validation set.

    python benchmarks/first_model.py [--seeds 3] [--scenes built-in,4-band,4-band-outlines]

For the built-in scene (``ingest synthetic``) and a small real-like scene (800x655 px, bands
B1-B4, no DEM; ``4-band``: glacier outlines over the western 60 % and a clean-ice/debris map of
one glacier; ``4-band-outlines``: outlines over the whole scene and nothing else), runs the
README's walkthrough through the CLI with the profile ``al-loop init`` picks here and no config
edit, and prints the time of each step and the first model's validation IoU with its interval.
The baseline, in the same run and on the same validation pixels, is the one every training now
reports (``al_loop.model.baseline``): the best single-channel threshold (any channel the model
uses, either direction, tuned on the training patches only), scored as glacier; the difference
is paired over the validation patches, with its bootstrap interval. ``--seeds`` draws other
small scenes (the built-in scene is one). Settings in the environment (``AL_LOOP_TRAINING_...``)
apply to every walkthrough, for trying other defaults. Last line:
``first model minus threshold, glacier IoU: SCENE +X [LOW, HIGH], ... (N scenes at least +0.05)``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from al_loop.config import open_workspace
from al_loop.model.metrics import iou_text
from al_loop.synthetic import make_level1_folder
from al_loop.workspace import open_store
from cli import app
from db import registry

console = Console(width=220)
SCENES = ("built-in", "4-band", "4-band-outlines")


def run(env: dict[str, str], *args: Any) -> tuple[str, float]:
    start = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exit_code:
        raise SystemExit(f"al-loop {' '.join(map(str, args))} failed:\n{result.output}")
    return result.output, time.perf_counter() - start


def walkthrough(root: Path, scene: str, seed: int) -> dict[str, Any]:
    """The README's steps on ``scene``; the first model's recorded figures and the times."""
    settings = {k: v for k, v in os.environ.items() if k.startswith("AL_LOOP_") and k != "AL_LOOP_WORKSPACE"}
    env = {**settings, "AL_LOOP_WORKSPACE": str(root / "ws"), "COLUMNS": "200"}
    times = {}
    run(env, "init")
    if scene == "built-in":
        _, times["ingest"] = run(env, "ingest", "synthetic", "-q")
    else:
        data = make_level1_folder(root / "data", seed=seed, outline_fraction=0.6 if scene == "4-band" else 1.0)
        _, a = run(env, "ingest", "scene", data.folder, "-q")
        _, b = run(env, "ingest", "labels", data.outlines, "-q")
        c = 0.0
        if scene == "4-band":
            _, c = run(env, "ingest", "labels", data.glacier_map, "--map", "0=unlabeled", "--map", "1=clean_ice",
                       "--map", "2=debris", "-q")
        times["ingest"] = a + b + c
    _, times["train"] = run(env, "train", "-q")
    _, times["evaluate"] = run(env, "evaluate")
    if scene == "built-in":
        run(env, "ingest", "synthetic", "--unlabelled", "-q")
    # Outlines over the whole scene leave no pool to choose from.
    times["next-round"] = run(env, "next-round", "-q")[1] if scene != "4-band-outlines" else float("nan")
    ws = open_workspace(root / "ws", environ={})
    store = open_store(ws)
    with store.session() as session:
        version = registry.champion(session) or registry.versions(session)[-1]
        metrics, channels = dict(version.metrics), len(version.channels)
    store.dispose()
    return {"scene": scene, "seed": seed, "times": times, "metrics": metrics, "channels": channels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3", help="comma-separated seeds of the small scenes (default 3)")
    parser.add_argument("--scenes", default=",".join(SCENES), help="comma-separated: " + ", ".join(SCENES))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scene in args.scenes.split(","):
            for seed in [0] if scene == "built-in" else [int(s) for s in args.seeds.split(",")]:
                with console.status(f"walkthrough on the {scene} scene, seed {seed}"):
                    rows.append(walkthrough(Path(tmp) / f"{scene}-{seed}", scene, seed))
    table = Table(title="first model with the defaults (the profile al-loop init picks, here cpu) vs a tuned "
                        "threshold, same validation pixels; in brackets: the 95% bootstrap interval over the "
                        "validation patches")
    for column in ("scene", "seed", "channels", "train/val patches", "ingest s", "train s", "evaluate s",
                   "next-round s", "epochs", "glacier IoU", "clean IoU", "debris IoU", "threshold rule",
                   "threshold glacier IoU", "model - threshold (paired)"):
        table.add_column(column, justify="left" if column in ("scene", "threshold rule") else "right")
    summary = []
    for r in rows:
        m, t = r["metrics"], r["times"]
        base = m.get("baseline") or {}
        kept = f"{m['best_epoch']}/{m['epochs']}" + ("" if m.get("epoch_chosen_by_validation", True) else " (last)")
        interval = "" if base.get("low") is None else f" [{base['low']:+.3f}, {base['high']:+.3f}]"
        difference = f"{base['difference']:+.3f}{interval}" if base else "n/a"
        summary.append((f"{r['scene']} (seed {r['seed']})", difference, base.get("difference", float("nan"))))
        table.add_row(r["scene"], str(r["seed"]), str(r["channels"]), f"{m['train_patches']}/{m['val_patches']}",
                      *(f"{t[k]:.0f}" for k in ("ingest", "train", "evaluate", "next-round")), kept,
                      *(iou_text(m["val"].get(row)) for row in ("glacier", "clean_ice", "debris")),
                      base.get("rule", "n/a"), iou_text(base["val"]["glacier"]) if base else "n/a", difference)
    console.print(table)
    wins = sum(d >= 0.05 for *_, d in summary)
    print("first model minus threshold, glacier IoU: " + ", ".join(f"{name} {text}" for name, text, _ in summary)
          + f" ({wins} of {len(summary)} scenes at least +0.05)")


if __name__ == "__main__":
    main()
