"""Reads and writes of the store that more than one caller needs."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session

from al_loop.classes import class_counts
from db.models import Label, ModelVersion, Patch, Round, RoundPatch, Scene, TrainingJob

JOB_QUEUE_LOCK = 7_240_511  # PostgreSQL advisory lock key of the training job queue


def lock_job_queue(session: Session) -> None:
    """Serialise changes to the training job queue until the transaction ends."""
    if session.bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOB_QUEUE_LOCK})
    else:
        # SQLite: take the writer lock now, so that no other process reads the queue between
        # this read and the write that follows (a deferred transaction would let it).
        session.execute(text("UPDATE training_jobs SET id = id WHERE 0"))


def pack_mask(mask: np.ndarray) -> bytes:
    """A uint8 label mask as stored: zlib-compressed bytes. Level 1: label masks still compress
    ~50x, at a quarter of level 6's time (webhooks store them while Label Studio waits)."""
    return zlib.compress(np.ascontiguousarray(mask, dtype=np.uint8).tobytes(), 1)


def unpack_mask(data: bytes, height: int, width: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(height, width)


def labelled_patch_ids() -> Select:
    """Patches with an accepted label (a subquery)."""
    return select(Label.patch_id).where(Label.status == "accepted")


def open_round_patch_ids() -> Select:
    """Patches handed out in a round that is still open (a subquery)."""
    return select(RoundPatch.patch_id).join(Round).where(Round.status == "open")


def scene_by_fingerprint(session: Session, fingerprint: str) -> Scene | None:
    return session.scalar(select(Scene).where(Scene.fingerprint == fingerprint))


def current_label(session: Session, patch_id: int, source: str, origin: str) -> Label | None:
    """The newest revision of a label of one origin, whatever its status."""
    return session.scalar(
        select(Label)
        .where(Label.patch_id == patch_id, Label.source == source, Label.origin == origin)
        .order_by(Label.revision.desc())
        .limit(1)
    )


def save_label(
    session: Session,
    patch: Patch,
    mask: np.ndarray,
    *,
    source: str,
    origin: str,
    author: str | None = None,
    details: dict[str, Any] | None = None,
) -> tuple[Label, str]:
    """Store a label as the accepted revision of its origin.

    Returns the label and what happened: ``created`` (first revision), ``revised`` (a new
    revision; the previous one becomes ``superseded``) or ``unchanged`` (the accepted revision
    already holds this mask: re-delivering or re-ingesting the same label is a no-op).
    """
    if mask.shape != (patch.height, patch.width):
        raise ValueError(
            f"label mask for patch {patch.id} has shape {mask.shape}, "
            f"expected {(patch.height, patch.width)}"
        )
    counts = class_counts(mask)  # also rejects unknown class codes
    previous = current_label(session, patch.id, source, origin)
    if (previous is not None and previous.status == "accepted"
            and np.array_equal(unpack_mask(previous.mask, patch.height, patch.width), mask)):
        return previous, "unchanged"
    if previous is not None and previous.status == "accepted":
        previous.status = "superseded"
    label = Label(
        patch_id=patch.id,
        source=source,
        origin=origin,
        revision=1 if previous is None else previous.revision + 1,
        status="accepted",
        author=author,
        mask=pack_mask(mask),
        n_background=counts["background"],
        n_clean_ice=counts["clean_ice"],
        n_debris=counts["debris"],
        n_glacier=counts["glacier"],
        n_unlabeled=counts["unlabeled"],
        details=details or {},
    )
    session.add(label)
    session.flush()
    return label, "created" if previous is None else "revised"


def status_summary(session: Session) -> dict[str, Any]:
    """What is in the store, for ``al-loop status``."""
    scenes = []
    for scene, n_patches, mean_valid, n_low in session.execute(
        select(
            Scene,
            func.count(Patch.id),
            func.avg(Patch.valid_fraction),
            func.count(Patch.id).filter(Patch.low_valid.is_(True)),
        )
        .outerjoin(Patch, Patch.scene_id == Scene.id)
        .group_by(Scene.id)
        .order_by(Scene.id)
    ):
        scenes.append(
            {
                "id": scene.id,
                "name": scene.name,
                "kind": scene.source_kind,
                "size": f"{scene.width}x{scene.height}",
                "channels": len(scene.available_channels),
                "patches": n_patches,
                "mean_valid": float(mean_valid or 0.0),
                "low_valid": n_low,
            }
        )
    labels = [
        {
            "source": source,
            "labels": n,
            "patches": n_patches,
            "background": int(bg or 0),
            "clean_ice": int(clean or 0),
            "debris": int(debris or 0),
            "glacier": int(glacier or 0),
        }
        for source, n, n_patches, bg, clean, debris, glacier in session.execute(
            select(
                Label.source,
                func.count(Label.id),
                func.count(func.distinct(Label.patch_id)),
                func.sum(Label.n_background),
                func.sum(Label.n_clean_ice),
                func.sum(Label.n_debris),
                func.sum(Label.n_glacier),
            )
            .where(Label.status == "accepted")
            .group_by(Label.source)
            .order_by(Label.source)
        )
    ]
    models = dict(
        session.execute(
            select(ModelVersion.status, func.count(ModelVersion.id)).group_by(ModelVersion.status)
        ).all()
    )
    jobs = dict(
        session.execute(
            select(TrainingJob.status, func.count(TrainingJob.id)).group_by(TrainingJob.status)
        ).all()
    )
    return {
        "scenes": scenes,
        "labels": labels,
        "rounds": session.scalar(select(func.count(Round.id))) or 0,
        "models": models,
        "jobs": jobs,
    }
