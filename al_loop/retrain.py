"""A training run as a job: labels from the store, train or fine-tune, register the version,
apply the promotion gate. The model file is written (atomically) before the version row is
committed, and the champion changes only in the same transaction, so the served model is
always complete."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from al_loop.config import Workspace
from al_loop.model.checkpoints import load_model, save_model
from al_loop.model.data import class_names, label_set_hash, normalization, split_samples
from al_loop.model.inference import pick_device
from al_loop.model.training import TrainingCancelled, architecture, evaluate_samples, glacier_score, train
from db import queries, registry
from db.models import Label, ModelVersion, TrainingJob, utcnow
from db.session import Store


@dataclass
class TrainingReport:
    job_id: int
    version: str
    status: str  # champion / rejected
    metrics: dict[str, Any]
    gate: str


def models_dir(workspace: Workspace) -> Path:
    return workspace.root / "models"


def passes_gate(candidate: dict[str, dict], champion: dict[str, dict], margin: float) -> tuple[bool, str]:
    """A candidate passes unless a glacier class's IoU falls more than ``margin`` below the
    champion's, both measured on the same validation set."""
    reasons = []
    for name, values in champion.items():
        if name == "background":
            continue
        before = values["iou"]
        after = candidate.get(name, {}).get("iou", math.nan)
        if math.isnan(before):
            continue
        if math.isnan(after) or after < before - margin:
            reasons.append(f"{name} IoU {after:.3f} < champion {before:.3f} - {margin}")
    return (not reasons, "; ".join(reasons) or "not worse than the champion")


def load_version(workspace: Workspace, version: ModelVersion):
    return load_model(workspace.resolve(version.checkpoint_path), version.channels, version.classes)


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
    ``job_id`` from its last epoch checkpoint. The job stops after its current epoch when
    ``should_stop()`` says so, by default when :func:`request_cancel` was called for it."""
    cfg = workspace.config
    resumed_norm = None
    if job_id is not None:
        parent_name, resumed_norm = _resumable_job(store, job_id)
    # Everything that can be wrong with the inputs is found before a job is recorded.
    with store.session() as session:
        parent = registry.version(session, parent_name) if parent_name else None
        channels = parent.channels if parent else list(cfg.model.channels)
        classes = list(parent.classes) if parent else list(class_names(cfg.model.classes))
        train_samples, val_samples = split_samples(
            session, workspace, channels, "binary" if len(classes) == 2 else "multiclass"
        )
        parent_model = load_version(workspace, parent)[0] if parent else None
        norm = resumed_norm or (parent.normalization if parent else normalization(train_samples, channels))
        arch = parent.config["architecture"] if parent else architecture(cfg.model)
        champion = registry.champion(session)
        # Labels up to here are the ones this run could see (retraining counts those after it).
        watermark = session.scalar(select(func.max(Label.id))) or 0
        champion_model = load_version(workspace, champion)[0] if champion else None
        champion_norm = champion.normalization if champion else None
    job_id = _claim_job(store, job_id, parent, trigger, norm)
    should_stop = should_stop or (lambda: _cancel_requested(store, job_id))
    checkpoint = models_dir(workspace) / "jobs" / f"job-{job_id}.pt"
    device = pick_device()
    try:
        result = train(
            train_samples, val_samples, arch=arch, train_cfg=cfg.training,
            n_classes=len(classes), norm=norm, parent=parent_model, checkpoint=checkpoint,
            should_stop=should_stop, quiet=quiet, device=device,
        )
    except (TrainingCancelled, KeyboardInterrupt) as exc:
        _finish_job(store, job_id, "cancelled", error=f"{exc or 'interrupted'}; resume with --resume {job_id}")
        raise
    except Exception as exc:
        _finish_job(store, job_id, "failed", error=str(exc))
        raise

    matrix, per_scene = evaluate_samples(result.model, val_samples, norm, len(classes), device)
    metrics = {
        "val": matrix.as_dict(classes),
        "val_per_scene": {str(scene): m.as_dict(classes) for scene, m in per_scene.items()},
        "val_glacier_score": glacier_score(matrix),
        "val_patches": len(val_samples),
        "train_patches": len(train_samples),
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "history": result.history,
    }
    gate_ok, gate_text = True, "first model: no champion to compare with"
    if champion_model is not None and list(champion.classes) == classes and champion.channels == channels:
        before, _ = evaluate_samples(champion_model, val_samples, champion_norm, len(classes), device)
        gate_ok, gate_text = passes_gate(metrics["val"], before.as_dict(classes), cfg.training.promotion_margin)
        metrics["champion_val"] = before.as_dict(classes)
    label_ids = [s.label_id for s in train_samples]
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
            metrics={**metrics, "gate": gate_text},
            checkpoint_path=workspace.relative(path),
            labels=[session.get(Label, i) for i in label_ids],
        )
        session.add(version)
        session.flush()
        if gate_ok:
            registry.promote(session, version)
        else:
            version.status = "rejected"
        job = session.get(TrainingJob, job_id)
        job.status, job.result_model_id, job.finished_at = "done", version.id, utcnow()
        job.progress = {"epochs": result.epochs_run, "best_epoch": result.best_epoch}
        report = TrainingReport(job_id, name, version.status, metrics, gate_text)
    checkpoint.unlink(missing_ok=True)
    return report


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
