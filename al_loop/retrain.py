"""A training run as a job: labels from the store, train or fine-tune, register the version,
apply the promotion gate. The model file is written (atomically) before the version row is
committed, and the champion changes only in the same transaction, so the served model is
always complete."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from al_loop import gate
from al_loop.config import Workspace
from al_loop.evaluation import ValidationSet, scores_record, version_scores
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
from db.models import Label, ModelVersion, TrainingJob, utcnow
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
    job_id: int | None = None,
    trigger: str = "manual",
    should_stop: Callable[[], bool] | None = None,
    quiet: bool = False,
) -> TrainingReport:
    """Train a new version (from scratch, or fine-tuned from ``parent_name``), or resume job
    ``job_id`` from its last epoch checkpoint, then judge it with the promotion gate against
    every served version on the current validation set. The job stops after its current epoch
    when ``should_stop()`` says so, by default when :func:`request_cancel` was called for it."""
    cfg = workspace.config
    resumed_norm = None
    if job_id is not None:
        parent_name, resumed_norm = _resumable_job(store, job_id)
    # Everything that can be wrong with the inputs is found before a job is recorded.
    with store.session() as session:
        parent = registry.version(session, parent_name) if parent_name else None
        classes = list(parent.classes) if parent else list(class_names(cfg.model.classes))
        data = split_samples(session, workspace, list(parent.channels) if parent else None, class_set(classes))
        channels = data.channels
        parent_model = load_version(workspace, parent)[0] if parent else None
        norm = resumed_norm or (parent.normalization if parent else normalization(data.train, channels))
        arch = parent.config["architecture"] if parent else architecture(cfg.model)
        # Labels up to here are the ones this run could see (retraining counts those after it).
        watermark = session.scalar(select(func.max(Label.id))) or 0
    job_id = _claim_job(store, job_id, parent, trigger, norm)
    should_stop = should_stop or (lambda: _cancel_requested(store, job_id))
    checkpoint = models_dir(workspace) / "jobs" / f"job-{job_id}.pt"
    device = pick_device()
    try:
        result = train(
            data.train, data.val, arch=arch, train_cfg=cfg.training,
            class_names=classes, norm=norm, parent=parent_model, checkpoint=checkpoint,
            should_stop=should_stop, quiet=quiet, device=device,
        )
        overall, per_scene = evaluate_samples(result.model, data.val, norm, classes, device)
        scores = scores_record(overall, per_scene)
        decision, champion_name = _judge(workspace, store, scores["val"], data, channels, classes)
    except (TrainingCancelled, KeyboardInterrupt) as exc:
        _finish_job(store, job_id, "cancelled", error=f"{exc or 'interrupted'}; resume with --resume {job_id}")
        raise
    except Exception as exc:
        _finish_job(store, job_id, "failed", error=str(exc))
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
        job = session.get(TrainingJob, job_id)
        job.status, job.result_model_id, job.finished_at = "done", version.id, utcnow()
        job.progress = {"epochs": result.epochs_run, "best_epoch": result.best_epoch}
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


def _resumable_job(store: Store, job_id: int) -> tuple[str | None, dict | None]:
    """The parent and normalisation of a job that can be resumed (cancelled, failed or
    interrupted): a resumed job normalises exactly as it started."""
    with store.session() as session:
        job = session.get(TrainingJob, job_id)
        if job is None or job.status not in ("cancelled", "cancelling", "failed", "running"):
            raise LookupError(f"no resumable training job {job_id} (a cancelled, failed or interrupted one)")
        return job.progress.get("parent"), job.progress.get("normalization")


def _claim_job(store: Store, job_id: int | None, parent: ModelVersion | None, trigger: str, norm: dict) -> int:
    with store.session() as session:
        if job_id is None:
            queries.lock_job_queue(session)
            running = session.scalar(select(TrainingJob).where(TrainingJob.status.in_(("running", "cancelling"))))
            if running is not None:  # never two trainings at once
                raise LookupError(f"training job {running.id} is running ({running.claimed_by}): wait for it, stop it "
                                  f"with --cancel {running.id}, or, if its process died, --resume {running.id}")
            job = TrainingJob(trigger=trigger, parent_model_id=parent.id if parent else None,
                              progress={"parent": parent.name if parent else None, "normalization": norm})
            session.add(job)
        else:
            job = session.get(TrainingJob, job_id)
        job.status, job.claimed_by, job.claimed_at = "running", f"{socket.gethostname()}:{os.getpid()}", utcnow()
        job.error = None
        session.flush()
        return job.id


def request_cancel(store: Store, job_id: int) -> None:
    """Ask a running job to stop after its current epoch (from any process)."""
    with store.session() as session:
        job = session.get(TrainingJob, job_id)
        if job is None or job.status != "running":
            raise LookupError(f"no running training job {job_id}")
        job.status = "cancelling"


def _cancel_requested(store: Store, job_id: int) -> bool:
    with store.session() as session:
        return session.get(TrainingJob, job_id).status == "cancelling"


def _finish_job(store: Store, job_id: int, status: str, error: str | None = None) -> None:
    with store.session() as session:
        job = session.get(TrainingJob, job_id)
        job.status, job.error, job.finished_at = status, error, utcnow()
