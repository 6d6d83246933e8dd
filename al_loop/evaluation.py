"""Evaluating model versions on the current validation set: metrics from one confusion matrix
over the whole set (and per scene), cached per version and validation set in the store, written
as JSON and pictures by ``al-loop evaluate``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from al_loop import bands
from al_loop.config import Workspace
from al_loop.model.checkpoints import CheckpointError, load_version
from al_loop.model.data import (
    IGNORE,
    LabelledPatch,
    Sample,
    class_set,
    labelled_patches,
    load_samples,
    validation_patches,
    validation_set_id,
)
from al_loop.model.inference import pick_device
from al_loop.model.metrics import SegmentationScores, jsonable
from al_loop.model.network import UNet
from al_loop.model.normalization import normalize
from al_loop.model.training import evaluate_samples
from db import queries, registry
from db.models import ModelVersion
from db.session import Store

CLASS_COLOURS = np.array([[139, 125, 107], [102, 194, 255], [217, 95, 2], [255, 255, 255]], dtype=np.uint8)


@dataclass
class ValidationSet:
    """The labelled patches that validate now, and the name of that set."""

    id: str
    patches: list[LabelledPatch]
    notes: list[str] = field(default_factory=list)

    def sources(self) -> dict[str, int]:
        """Validation patches by the strongest source of their labels (expert annotations count
        as such even over an inventory)."""
        counts: dict[str, int] = {}
        for item in self.patches:
            source = item.labels[-1].source
            counts[source] = counts.get(source, 0) + 1
        return counts

    def samples_for(self, workspace: Workspace, channels: list[str], classes: list[str]) -> list[Sample]:
        return load_samples(workspace, self.patches, channels, class_set(classes))


def current_validation_set(workspace: Workspace, store: Store) -> ValidationSet:
    with store.session() as session:
        items, report = validation_patches(session, workspace)
    return ValidationSet(validation_set_id((p.patch.id, p.label_ids) for p in items), items, report.notes)


def version_scores(workspace: Workspace, store: Store, versions: list[ModelVersion], vset: ValidationSet,
                   loaded: dict[tuple, list[Sample]] | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any] | None]:
    """Each version's record on ``vset`` (:func:`scores_record`: rows with intervals, per-patch
    counts; evaluated once, then read from the store); None for a version that cannot run on it
    (a validation scene lacks one of its channels, or its model file is damaged). ``loaded`` holds
    samples of ``vset`` already read, by (channels, classes)."""
    out: dict[str, dict[str, Any] | None] = {}
    todo = []
    with store.session() as session:
        for version in versions:
            cached = queries.evaluation(session, version.id, vset.id)
            if cached is not None and "val_units" in cached.metrics:
                out[version.name] = cached.metrics
            else:  # not evaluated yet, or recorded before per-patch counts were kept
                todo.append(version)
    if not todo or not vset.patches:
        return {**out, **{v.name: None for v in todo}}
    device = pick_device()
    samples: dict[tuple, list[Sample]] = dict(loaded or {})
    for version in todo:
        if not _runs_on(version, vset):
            out[version.name] = None
            continue
        key = (tuple(version.channels), tuple(version.classes))
        if key not in samples:
            samples[key] = vset.samples_for(workspace, list(version.channels), list(version.classes))
        if progress:
            progress(f"evaluating {version.name} on the current validation set ({len(vset.patches)} patches)")
        try:
            model, _ = load_version(workspace, version)
        except CheckpointError:  # its file is gone or damaged: it can be neither served nor compared
            out[version.name] = None
            continue
        overall, per_scene = evaluate_samples(model, samples[key], version.normalization, version.classes, device)
        metrics = scores_record(overall, per_scene)
        with store.session() as session:
            queries.save_evaluation(session, version.id, vset.id, len(vset.patches), metrics)
        out[version.name] = metrics
    return out


def scores_record(overall: SegmentationScores, per_scene: dict[int, SegmentationScores]) -> dict[str, Any]:
    """Scores as stored: the rows (IoU with its interval over validation patches), per scene, and
    each validation patch's counts per row (what the gate pairs versions on)."""
    ids, counts = overall.unit_counts()
    return {"val": jsonable(overall.as_dict()),
            "val_per_scene": {str(scene): jsonable(s.as_dict()) for scene, s in per_scene.items()},
            "val_units": {"ids": ids, "counts": {row: c.tolist() for row, c in counts.items()}}}


def _runs_on(version: ModelVersion, vset: ValidationSet) -> bool:
    return all(all(c in p.patch.scene.available_channels for c in version.channels) for p in vset.patches)


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
    if split not in ("val", "train"):
        raise ValueError(f"--split must be val or train, found {split!r}")
    with store.session() as session:
        version = registry.version_or_champion(session, name)
        items, _ = validation_patches(session, workspace)
        if split == "train":
            items = [p for p in labelled_patches(session).values() if p.patch.split == "train"]
    if not items:
        raise LookupError(f"no labelled patches in the {split!r} split to evaluate on")
    missing = sorted({f"scene {p.patch.scene_id} ({p.patch.scene.name}) lacks {c}" for p in items
                      for c in version.channels if c not in p.patch.scene.available_channels})
    if missing:
        raise bands.MissingChannelError(f"{version.name} cannot run on the {split} patches: {'; '.join(missing)}")
    classes = list(version.classes)
    samples = load_samples(workspace, items, version.channels, class_set(classes))
    model, _ = load_version(workspace, version)
    device = pick_device()
    overall, per_scene = evaluate_samples(model, samples, version.normalization, classes, device)
    out = workspace.root / "evaluations" / f"{version.name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    result = Evaluation(
        version=version.name, split=split, patches=len(samples), metrics=overall.as_dict(),
        per_scene={str(s): m.as_dict() for s, m in per_scene.items()},
        confusion=overall.classes.matrix.tolist(), outputs={},
    )
    if split == "val":
        with store.session() as session:
            queries.save_evaluation(session, version.id, validation_set_id((p.patch.id, p.label_ids) for p in items),
                                    len(items), scores_record(overall, per_scene))
    quicklooks = {p.patch.id: p.patch.quicklook_false or p.patch.quicklook_rgb for p in items}
    result.outputs["json"] = out / "metrics.json"
    result.outputs["json"].write_text(json.dumps(_jsonable(result), indent=2))
    result.outputs["confusion"] = _plot_confusion(overall, classes, out / "confusion.png", version.name)
    result.outputs["examples"] = _plot_examples(
        workspace, model, samples[:examples], version, quicklooks, device, out / "examples.png"
    )
    return result


def _jsonable(result: Evaluation) -> dict[str, Any]:
    return {"version": result.version, "split": result.split, "patches": result.patches,
            "metrics": jsonable(result.metrics),
            "per_scene": {k: jsonable(v) for k, v in result.per_scene.items()}, "confusion": result.confusion}


def _plot_confusion(scores: SegmentationScores, classes: list[str], path: Path, title: str) -> Path:
    counts = scores.classes.matrix.astype(float)
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


def _plot_examples(workspace: Workspace, model: UNet, samples: list[Sample], version: ModelVersion,
                   quicklooks: dict[int, str | None], device: torch.device, path: Path) -> Path:
    fig, axes = plt.subplots(max(len(samples), 1), 3, figsize=(9, 3 * max(len(samples), 1)), squeeze=False)
    for row, sample in zip(axes, samples, strict=False):  # one empty row of axes when there are no samples
        pixels, valid = sample.read()
        x = torch.from_numpy(normalize(pixels, valid, version.normalization)[None]).to(device)
        with torch.inference_mode():
            pred = model.to(device)(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
        pred[~valid] = IGNORE
        look = quicklooks.get(sample.patch_id)
        if look:
            row[0].imshow(Image.open(workspace.resolve(look)))
        row[0].set_title(f"patch {sample.patch_id}")
        row[1].imshow(_colour(sample.target))
        row[1].set_title("label (white: glacier, type unknown)")
        row[2].imshow(_colour(pred))
        row[2].set_title(f"prediction {version.name}")
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _colour(classes: np.ndarray) -> np.ndarray:
    """Class map to RGB; glacier of unknown type white; ignored / invalid pixels grey."""
    rgb = np.full(classes.shape + (3,), 90, dtype=np.uint8)
    known = classes < len(CLASS_COLOURS) - 1
    rgb[known] = CLASS_COLOURS[classes[known]]
    rgb[classes == 254] = CLASS_COLOURS[-1]
    return rgb
