"""Evaluating a model version on the fixed validation set: metrics from one confusion matrix
over the whole set (and per scene), written as JSON and pictures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from al_loop.config import Workspace
from al_loop.model.data import IGNORE, assign_splits, best_labels, load_samples
from al_loop.model.inference import pick_device
from al_loop.model.metrics import ConfusionMatrix
from al_loop.model.training import evaluate_samples, normalize
from al_loop.retrain import load_version
from db import registry
from db.models import ModelVersion
from db.session import Store

CLASS_COLOURS = np.array([[139, 125, 107], [102, 194, 255], [217, 95, 2], [255, 255, 255]], dtype=np.uint8)


@dataclass
class Evaluation:
    version: str
    split: str
    patches: int
    metrics: dict[str, dict[str, float]]
    per_scene: dict[str, dict[str, dict[str, float]]]
    confusion: list[list[int]]
    outputs: dict[str, Path]


def evaluate_version(workspace: Workspace, store: Store, name: str | None = None, split: str = "val",
                     examples: int = 4) -> Evaluation:
    """Evaluate ``name`` (default: the champion) on the labelled patches of ``split``."""
    with store.session() as session:
        version = registry.version(session, name) if name else registry.champion(session)
        if version is None:
            raise LookupError("no champion model yet: train one with `al-loop train`")
        cfg = workspace.config.training
        assign_splits(session, cfg.validation_fraction, cfg.validation_block, cfg.seed)
        labels = [l for l in best_labels(session).values() if l.patch.split == split]
        if not labels:
            raise LookupError(f"no labelled patches in the {split!r} split to evaluate on")
        classes = list(version.classes)
        samples = load_samples(workspace, labels, version.channels, "binary" if len(classes) == 2 else "multiclass")
        model, _ = load_version(workspace, version)
        quicklooks = {l.patch_id: l.patch.quicklook_false or l.patch.quicklook_rgb for l in labels}
    device = pick_device()
    matrix, per_scene = evaluate_samples(model, samples, version.normalization, len(classes), device)
    out = workspace.root / "evaluations" / f"{version.name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    result = Evaluation(
        version=version.name, split=split, patches=len(samples), metrics=matrix.as_dict(classes),
        per_scene={str(s): m.as_dict(classes) for s, m in per_scene.items()},
        confusion=matrix.matrix.tolist(), outputs={},
    )
    result.outputs["json"] = out / "metrics.json"
    result.outputs["json"].write_text(json.dumps(_jsonable(result), indent=2))
    result.outputs["confusion"] = _plot_confusion(matrix, classes, out / "confusion.png", version.name)
    result.outputs["examples"] = _plot_examples(
        workspace, model, samples[:examples], version, quicklooks, device, out / "examples.png"
    )
    return result


def _jsonable(result: Evaluation) -> dict[str, Any]:
    return {"version": result.version, "split": result.split, "patches": result.patches,
            "metrics": result.metrics, "per_scene": result.per_scene, "confusion": result.confusion}


def _plot_confusion(matrix: ConfusionMatrix, classes: list[str], path: Path, title: str) -> Path:
    counts = matrix.matrix.astype(float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rows[i, j]:.2f}\n{int(counts[i, j]):,}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label (row-normalised)")
    ax.set_title(f"{title}: confusion over all pixels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_examples(workspace: Workspace, model, samples, version: ModelVersion, quicklooks, device, path: Path) -> Path:
    import torch

    fig, axes = plt.subplots(max(len(samples), 1), 3, figsize=(9, 3 * max(len(samples), 1)), squeeze=False)
    for row, sample in zip(axes, samples):
        x = torch.from_numpy(normalize(sample.pixels, sample.valid, version.normalization)[None]).to(device)
        with torch.inference_mode():
            pred = model.to(device)(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
        pred[~sample.valid] = IGNORE
        look = quicklooks.get(sample.patch_id)
        if look:
            row[0].imshow(Image.open(workspace.resolve(look)))
        row[0].set_title(f"patch {sample.patch_id}")
        row[1].imshow(_colour(sample.target))
        row[1].set_title("label")
        row[2].imshow(_colour(pred))
        row[2].set_title(f"prediction {version.name}")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _colour(classes: np.ndarray) -> np.ndarray:
    """Class map to RGB; ignored / invalid pixels grey."""
    rgb = np.full(classes.shape + (3,), 90, dtype=np.uint8)
    known = classes < len(CLASS_COLOURS)
    rgb[known] = CLASS_COLOURS[classes[known]]
    return rgb
