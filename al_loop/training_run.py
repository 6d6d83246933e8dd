"""A training run as a job: labels from the store, train or fine-tune, register the version,
apply the promotion gate. The model file is written (atomically) before the version row is
committed, and the champion changes only in the same transaction, so the served model is
always complete."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from al_loop import gate, jobs
from al_loop.config import Workspace
from al_loop.evaluation import ValidationSet, scores_record, version_scores
from al_loop.model import balance
from al_loop.model.baseline import threshold_scores, tune_threshold
from al_loop.model.calibration import calibrate
from al_loop.model.checkpoints import load_version, save_model
from al_loop.model.data import (
    Sample,
    TrainingData,
    class_names,
    class_pixel_counts,
    class_set,
    label_set_hash,
    labelled_patches,
    normalization,
    split_samples,
    unlabelled_samples,
)
from al_loop.model.inference import pick_device
from al_loop.model.metrics import SegmentationScores, jsonable, paired_iou_difference, validation_score
from al_loop.model.network import UNet
from al_loop.model.training import TrainingCancelled, TrainResult, architecture, evaluate_samples, train
from db import queries, registry
from db.models import ModelVersion
from db.session import Store


@dataclass
class TrainingReport:
    job_id: int
    version: str
    status: str  # champion / rejected
    metrics: dict[str, Any]
    gate: str  # the decision in words
    notes: list[str] = field(default_factory=list)  # about the validation split, the channels


def models_dir(workspace: Workspace) -> Path:
    return workspace.root / "models"


@dataclass
class _Inputs:
    """What a run trains from, all checked before a new job is recorded."""

    parent: ModelVersion | None
    parent_model: UNet | None
    classes: list[str]
    data: TrainingData
    norm: dict[str, Any]
    arch: dict[str, Any]
    watermark: int  # the newest label this run could see (retraining counts those after it)
    unlabelled: list[Sample]  # pool patches for semi-supervised training (none unless asked for)


@dataclass
class _Outcome:
    """A trained candidate, scored and judged."""

    result: TrainResult
    overall: SegmentationScores
    scores: dict[str, Any]
    calibration: dict[str, Any]
    decision: gate.GateDecision
    champion_name: str | None


def run_training(
    workspace: Workspace,
    store: Store,
    *,
    parent_name: str | None = None,
    resume: int | None = None,
    claimed: jobs.Claimed | None = None,
    worker: str | None = None,
    trigger: str = "manual",
    should_stop: Callable[[], bool] | None = None,
    quiet: bool = False,
) -> TrainingReport:
    """Train a new version (from scratch, or fine-tuned from ``parent_name``), resume job
    ``resume`` from its last epoch checkpoint, or run a job a worker ``claimed``; then judge the
    candidate with the promotion gate against every served version on the current validation
    set. Jobs start through :func:`al_loop.jobs.claim` only; while one runs, its heartbeat is
    beaten and it stops after its current epoch when cancelled (or ``should_stop()``)."""
    cfg = workspace.config
    worker = worker or jobs.worker_name()
    if claimed is None and resume is not None:
        claimed = jobs.claim(store, worker, cfg.retraining.stale_seconds, job_id=resume)
    if claimed is not None:
        parent_name, trigger = claimed.parent, claimed.trigger
    try:
        inputs = _inputs(workspace, store, parent_name, claimed)
    except Exception as exc:
        if claimed is not None:
            jobs.finish(store, claimed.id, worker, jobs.JobState.FAILED, error=str(exc))
        raise
    parent = inputs.parent
    if claimed is None:
        claimed = jobs.claim(store, worker, cfg.retraining.stale_seconds, new={
            "trigger": trigger, "parent": parent.name if parent else None, "parent_id": parent.id if parent else None,
            "normalization": inputs.norm})
        if claimed is None:
            raise jobs.JobError("the new training job was not claimed")  # claim() raises when it cannot
    elif not claimed.normalization:
        jobs.record_normalization(store, claimed.id, inputs.norm)
    checkpoint = models_dir(workspace) / "jobs" / f"job-{claimed.id}.pt"
    interval = min(60.0, cfg.retraining.stale_seconds / 4)
    # The job beats until its result is recorded: registering (the model file, the evaluation) takes
    # time too, and a silent job may be taken over.
    with jobs.Heartbeat(store, claimed.id, worker, interval) as heart:
        outcome = _run_job(workspace, store, inputs, claimed.id, worker, checkpoint, heart, should_stop, quiet)
        report = _register(workspace, store, inputs, outcome, claimed.id, worker, trigger)
    checkpoint.unlink(missing_ok=True)
    return report


def _inputs(workspace: Workspace, store: Store, parent_name: str | None, claimed: jobs.Claimed | None) -> _Inputs:
    cfg = workspace.config
    with store.session() as session:
        parent = registry.version(session, parent_name) if parent_name else None
        classes = list(parent.classes) if parent else list(class_names(cfg.model.classes))
        data = split_samples(session, workspace, list(parent.channels) if parent else None, class_set(classes))
        norm = (claimed.normalization if claimed and claimed.normalization else None) or (
            parent.normalization if parent else normalization(data.train, data.channels))
        unlabelled = unlabelled_samples(session, workspace, data.channels, data.val,
                                        cfg.training.semi_pool * len(data.train),
                                        cfg.training.seed) if cfg.training.semi_supervised else []
        return _Inputs(parent, load_version(workspace, parent)[0] if parent else None, classes, data, norm,
                       parent.config["architecture"] if parent else architecture(cfg.model),
                       queries.newest_label_id(session), unlabelled)


def _run_job(workspace: Workspace, store: Store, inputs: _Inputs, job_id: int, worker: str, checkpoint: Path,
             heart: jobs.Heartbeat, should_stop: Callable[[], bool] | None, quiet: bool) -> _Outcome:
    """Train (stopping when ``heart`` or ``should_stop`` says so), score and judge the candidate;
    a cancelled or failed run ends its job so."""
    cfg, data, device = workspace.config, inputs.data, pick_device()
    stop = (lambda: heart.should_stop() or should_stop()) if should_stop else heart.should_stop
    try:
        result = train(
            data.train, data.val, arch=inputs.arch, train_cfg=cfg.training,
            class_names=inputs.classes, norm=inputs.norm, parent=inputs.parent_model, checkpoint=checkpoint,
            should_stop=stop, quiet=quiet, device=device, unlabelled=inputs.unlabelled,
        )
        overall, per_scene = evaluate_samples(result.model, data.val, inputs.norm, inputs.classes, device)
        calibration = calibrate(result.model, data.val, inputs.norm, device)
        scores = scores_record(overall, per_scene)
        decision, champion_name = _judge(workspace, store, scores, data, data.channels, inputs.classes)
        heart.should_stop()  # still ours? (raises JobLost if another runner took it over)
    except jobs.JobLost:
        raise  # the job is someone else's now: record nothing
    except (TrainingCancelled, KeyboardInterrupt) as exc:
        jobs.finish(store, job_id, worker, jobs.JobState.CANCELLED,
                    error=f"{exc or 'interrupted'}; resume with --resume {job_id}")
        raise
    except Exception as exc:
        jobs.finish(store, job_id, worker, jobs.JobState.FAILED, error=str(exc))
        raise
    return _Outcome(result, overall, scores, calibration, decision, champion_name)


def _register(workspace: Workspace, store: Store, inputs: _Inputs, outcome: _Outcome, job_id: int, worker: str,
              trigger: str) -> TrainingReport:
    """Write the model file, then record the version, the gate's decision and the job's end in
    one transaction."""
    cfg, data, result, parent = workspace.config, inputs.data, outcome.result, inputs.parent
    metrics = {
        **outcome.scores,
        "val_score": validation_score(outcome.overall.as_dict()),
        "validation_set": data.validation_set,
        "val_patches": len(data.val),
        "train_patches": len(data.train),
        "unlabelled_patches": len(inputs.unlabelled),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "epoch_chosen_by_validation": result.chosen_by_validation,
        "history": result.history,
        "gate": outcome.decision.as_dict(),
        "champion_before": outcome.champion_name,
        "calibration": outcome.calibration,
        "class_balance": class_balance(cfg.training.class_weights, data, inputs.classes, result.class_weights),
        "baseline": threshold_baseline(data, outcome.scores),
    }
    label_ids = data.label_ids
    with store.session() as session:
        name = registry.next_name(session)
        path = models_dir(workspace) / f"{name}.pt"
        save_model(result.model, path, channels=data.channels, classes=inputs.classes, architecture=inputs.arch,
                   normalization=inputs.norm)
        version = ModelVersion(
            name=name,
            parent_id=parent.id if parent else None,
            channels=data.channels,
            classes=inputs.classes,
            config={"architecture": inputs.arch, "training": vars(cfg.training).copy(), "trigger": trigger,
                    "label_watermark": inputs.watermark},
            seed=cfg.training.seed,
            normalization=inputs.norm,
            label_set_hash=label_set_hash(label_ids),
            metrics=metrics,
            checkpoint_path=workspace.relative(path),
            labels=queries.labels_by_id(session, label_ids),
        )
        session.add(version)
        session.flush()
        queries.save_evaluation(session, version.id, data.validation_set, len(data.val), outcome.scores)
        if outcome.decision.passed:
            registry.promote(session, version)
        else:
            version.status = "rejected"
        # In the same transaction: a job taken over meanwhile registers nothing (JobLost).
        jobs.finish(store, job_id, worker, jobs.JobState.DONE, result_model_id=version.id, session=session,
                    progress={"epochs": result.epochs_run, "best_epoch": result.best_epoch})
        return TrainingReport(job_id, name, version.status, metrics, outcome.decision.summary,
                              list(data.split.notes))


def threshold_baseline(data: TrainingData, scores: dict[str, Any]) -> dict[str, Any] | None:
    """The best single-channel threshold tuned on the training patches, scored on the validation
    patches, and the model's glacier IoU minus its, paired over those patches; None where the
    training labels hold no glacier or nothing else, or validation no glacier."""
    try:
        rule = tune_threshold(data.train, data.channels)
    except ValueError:
        return None
    theirs = threshold_scores(data.val, data.channels, rule)
    row = jsonable(theirs.as_dict())["glacier"]
    if not row["support"]:
        return None
    ids, counts = theirs.unit_counts()
    mine = dict(zip(scores["val_units"]["ids"], scores["val_units"]["counts"]["glacier"], strict=True))
    d, low, high = paired_iou_difference(np.array([mine[i] for i in ids]).reshape(-1, 3), counts["glacier"])
    return {"rule": str(rule), "train_iou": round(rule.train_iou, 4), "val": {"glacier": row},
            "difference": round(d, 4), "low": None if np.isnan(low) else round(low, 4),
            "high": None if np.isnan(high) else round(high, 4), "paired_patches": len(ids)}


def class_balance(setting: str | list[float], data: TrainingData, classes: list[str],
                  weights: list[float]) -> dict[str, Any]:
    """The training labels' class shares (untyped glacier given to the glacier classes) and the
    loss weights used, for the record and the training summary."""
    counts, unknown = class_pixel_counts(data.train, len(classes))
    shares = balance.class_shares(counts, unknown)
    return {"weights": dict(zip(classes, weights, strict=True)),
            "source": "auto" if setting == "auto" else "configured",
            "shares": {name: round(float(share), 4) for name, share in zip(classes, shares, strict=True)},
            "untyped_glacier_pixels": unknown}


def _judge(workspace: Workspace, store: Store, candidate: dict[str, Any], data: TrainingData, channels: list[str],
           classes: list[str]) -> tuple[gate.GateDecision, str | None]:
    """The gate's decision on the candidate's rows, against every served version evaluated
    (once, then cached) on the same validation samples; and the champion's name."""
    with store.session() as session:
        served = queries.served_versions(session)
        champion = registry.champion(session)
        items = labelled_patches(session, [s.patch_id for s in data.val])
    vset = ValidationSet(data.validation_set, list(items.values()))
    loaded = {(tuple(channels), tuple(classes)): data.val}
    references = {k: v for k, v in version_scores(workspace, store, served, vset, loaded).items() if v is not None}
    decision = gate.decide(candidate, references, workspace.config.training.promotion_margin,
                           data.validation_set, champion.name if champion else None)
    return decision, champion.name if champion else None
