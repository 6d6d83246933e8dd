"""A training run as a job: labels from the store, train or fine-tune, register the version,
apply the promotion gate. The model file is written (atomically) before the version row is
committed, and the champion changes only in the same transaction, so the served model is
always complete."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from al_loop import gate, jobs
from al_loop.config import Workspace
from al_loop.evaluation import ValidationSet, scores_record, version_scores
from al_loop.model.calibration import calibrate
from al_loop.model.checkpoints import load_version, save_model
from al_loop.model.data import (
    TrainingData,
    class_names,
    class_set,
    label_set_hash,
    labelled_patches,
    normalization,
    split_samples,
)
from al_loop.model.inference import pick_device
from al_loop.model.metrics import validation_score
from al_loop.model.training import TrainingCancelled, architecture, evaluate_samples, train
from db import queries, registry
from db.models import Label, ModelVersion
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
        # Everything that can be wrong with the inputs is found before a new job is recorded.
        with store.session() as session:
            parent = registry.version(session, parent_name) if parent_name else None
            classes = list(parent.classes) if parent else list(class_names(cfg.model.classes))
            data = split_samples(session, workspace, list(parent.channels) if parent else None, class_set(classes))
            channels = data.channels
            parent_model = load_version(workspace, parent)[0] if parent else None
            norm = (claimed.normalization if claimed and claimed.normalization else None) or (
                parent.normalization if parent else normalization(data.train, channels))
            arch = parent.config["architecture"] if parent else architecture(cfg.model)
            # Labels up to here are the ones this run could see (retraining counts those after it).
            watermark = queries.newest_label_id(session)
    except Exception as exc:
        if claimed is not None:
            jobs.finish(store, claimed.id, worker, jobs.JobState.FAILED, error=str(exc))
        raise
    if claimed is None:
        claimed = jobs.claim(store, worker, cfg.retraining.stale_seconds, new={
            "trigger": trigger, "parent": parent.name if parent else None, "parent_id": parent.id if parent else None,
            "normalization": norm})
    elif not claimed.normalization:
        jobs.record_normalization(store, claimed.id, norm)
    job_id = claimed.id
    checkpoint = models_dir(workspace) / "jobs" / f"job-{job_id}.pt"
    device = pick_device()
    interval = min(60.0, cfg.retraining.stale_seconds / 4)
    try:
        with jobs.Heartbeat(store, job_id, worker, interval) as heart:
            stop = (lambda: heart.should_stop() or should_stop()) if should_stop else heart.should_stop
            result = train(
                data.train, data.val, arch=arch, train_cfg=cfg.training,
                class_names=classes, norm=norm, parent=parent_model, checkpoint=checkpoint,
                should_stop=stop, quiet=quiet, device=device,
            )
            overall, per_scene = evaluate_samples(result.model, data.val, norm, classes, device)
            calibration = calibrate(result.model, data.val, norm, device)
            scores = scores_record(overall, per_scene)
            decision, champion_name = _judge(workspace, store, scores["val"], data, channels, classes)
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
    metrics = {
        **scores,
        "val_score": validation_score(overall.as_dict()),
        "validation_set": data.validation_set,
        "val_patches": len(data.val),
        "train_patches": len(data.train),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "history": result.history,
        "gate": decision.as_dict(),
        "champion_before": champion_name,
        "calibration": calibration,
    }
    label_ids = data.label_ids
    with store.session() as session:
        name = registry.next_name(session)
        path = models_dir(workspace) / f"{name}.pt"
        save_model(result.model, path, channels=channels, classes=classes, architecture=arch, normalization=norm)
        version = ModelVersion(
            name=name,
            parent_id=parent.id if parent else None,
            channels=channels,
            classes=classes,
            config={"architecture": arch, "training": vars(cfg.training).copy(), "trigger": trigger,
                    "label_watermark": watermark},
            seed=cfg.training.seed,
            normalization=norm,
            label_set_hash=label_set_hash(label_ids),
            metrics=metrics,
            checkpoint_path=workspace.relative(path),
            labels=[session.get(Label, i) for i in label_ids],
        )
        session.add(version)
        session.flush()
        queries.save_evaluation(session, version.id, data.validation_set, len(data.val), scores)
        if decision.passed:
            registry.promote(session, version)
        else:
            version.status = "rejected"
        # In the same transaction: a job taken over meanwhile registers nothing (JobLost).
        jobs.finish(store, job_id, worker, jobs.JobState.DONE, result_model_id=version.id, session=session,
                    progress={"epochs": result.epochs_run, "best_epoch": result.best_epoch})
        report = TrainingReport(job_id, name, version.status, metrics, decision.summary, list(data.split.notes))
    checkpoint.unlink(missing_ok=True)
    return report


def _judge(workspace: Workspace, store: Store, candidate: dict[str, Any], data: TrainingData, channels: list[str],
           classes: list[str]):
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
