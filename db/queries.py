"""Reads and writes of the store that more than one caller needs."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Select, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from al_loop.classes import class_counts
from db.models import (
    AnnotationTombstone,
    Label,
    ModelEvaluation,
    ModelVersion,
    Patch,
    PatchScore,
    Round,
    RoundPatch,
    Scene,
    StoreSetting,
    TrainingJob,
)

JOB_QUEUE_LOCK = 7_240_511  # PostgreSQL advisory lock key of the training job queue


def lock_job_queue(session: Session) -> None:
    """Serialise changes to the training job queue until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
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


def labelled_training_patch_count(session: Session) -> int:
    """How many patches outside the validation set have an accepted label."""
    return session.scalar(
        select(func.count(func.distinct(Label.patch_id))).join(Patch, Patch.id == Label.patch_id)
        .where(Label.status == "accepted", Patch.split.is_distinct_from("val"))
    ) or 0


def open_round_patch_ids() -> Select:
    """Patches handed out in a round that is still open (a subquery)."""
    return select(RoundPatch.patch_id).join(Round).where(Round.status == "open")


def fully_labelled_open_rounds(session: Session) -> list[Round]:
    """Open rounds whose every patch has an accepted label."""
    unlabeled = select(RoundPatch.round_id).where(RoundPatch.patch_id.not_in(labelled_patch_ids())).distinct()
    return list(session.scalars(select(Round).where(Round.status == "open", Round.id.not_in(unlabeled))))


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


def patch_size(session: Session, patch_id: int) -> tuple[int, int] | None:
    """(height, width) of a patch; None if there is none."""
    row = session.execute(select(Patch.height, Patch.width).where(Patch.id == patch_id)).first()
    return None if row is None else (row.height, row.width)


def newest_revisions(session: Session, source: str, keys: set[tuple[int, str]]) -> dict[tuple[int, str], Label]:
    """:func:`current_label` of many (patch id, origin) pairs in one query; pairs without a label are left out."""
    if not keys:
        return {}
    revisions = session.scalars(select(Label).where(
        Label.patch_id.in_({p for p, _ in keys}), Label.source == source, Label.origin.in_({o for _, o in keys}),
    ).order_by(Label.revision))  # an annotation has a few revisions: reading them all is cheaper than grouping
    newest = {(label.patch_id, label.origin): label for label in revisions}  # the last one read wins
    return {key: label for key, label in newest.items() if key in keys}


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
    previous = current_label(session, patch.id, source, origin)
    return save_revision(session, patch, mask, previous, source=source, origin=origin, author=author, details=details)


def save_revision(
    session: Session,
    patch: Patch,
    mask: np.ndarray,
    previous: Label | None,
    *,
    source: str,
    origin: str,
    author: str | None = None,
    details: dict[str, Any] | None = None,
    packed: bytes | None = None,
) -> tuple[Label, str]:
    """:func:`save_label` after the caller has looked up ``previous`` (its
    :func:`current_label`), with the mask already packed if ``packed`` is given."""
    if mask.shape != (patch.height, patch.width):
        raise ValueError(
            f"label mask for patch {patch.id} has shape {mask.shape}, "
            f"expected {(patch.height, patch.width)}"
        )
    counts = class_counts(mask)  # also rejects unknown class codes
    if previous is not None and previous.status == "accepted":
        # Equal packed bytes are equal masks; different ones may still be (another zlib level).
        if previous.mask == packed or np.array_equal(unpack_mask(previous.mask, patch.height, patch.width), mask):
            return previous, "unchanged"
        previous.status = "superseded"
    label = Label(
        patch_id=patch.id,
        source=source,
        origin=origin,
        revision=1 if previous is None else previous.revision + 1,
        status="accepted",
        author=author,
        mask=pack_mask(mask) if packed is None else packed,
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


def tombstone(session: Session, project: int, annotation_id: int) -> AnnotationTombstone | None:
    return session.scalar(select(AnnotationTombstone).where(
        AnnotationTombstone.project == project, AnnotationTombstone.annotation_id == annotation_id))


def tombstoned(session: Session, keys: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which of these (project, annotation id) pairs were deleted, in one query."""
    if not keys:
        return set()
    rows = session.execute(select(AnnotationTombstone.project, AnnotationTombstone.annotation_id).where(
        AnnotationTombstone.annotation_id.in_({a for _, a in keys})))
    return {(project, annotation) for project, annotation in rows if (project, annotation) in keys}


def add_tombstone(session: Session, project: int, annotation_id: int) -> None:
    """Mark an annotation deleted (once)."""
    if tombstone(session, project, annotation_id) is None:
        session.add(AnnotationTombstone(project=project, annotation_id=annotation_id))
        session.flush()


def patch_tasks(session: Session, patch_ids: list[int], prefix: str) -> dict[int, int]:
    """Patch id -> the external task id (``<prefix><task>``) an earlier round gave it."""
    rows = session.execute(select(RoundPatch.patch_id, RoundPatch.external_id).where(
        RoundPatch.patch_id.in_(patch_ids), RoundPatch.external_id.startswith(prefix)))
    return {patch_id: int(external[len(prefix):]) for patch_id, external in rows if external is not None}


def annotation_authors_without_email(session: Session) -> set[str]:
    """Label Studio user ids of annotation labels stored without the user's email."""
    authors = session.scalars(select(Label.author).where(Label.source == "annotation").distinct())
    return {a for a in authors if a and a.isdigit()}


def get_setting(session: Session, key: str) -> dict[str, Any] | None:
    row = session.get(StoreSetting, key)
    return None if row is None else dict(row.value)


def set_setting(session: Session, key: str, value: dict[str, Any]) -> None:
    row = session.get(StoreSetting, key)
    if row is None:
        session.add(StoreSetting(key=key, value=value))
    else:
        row.value = value
    session.flush()


def model_version_names(session: Session) -> list[str]:
    return list(session.scalars(select(ModelVersion.name).order_by(ModelVersion.id)))


def clear_splits(session: Session) -> None:
    session.execute(update(Patch).values(split=None))


LABEL_CLASS_COUNTS = {"background": Label.n_background, "clean_ice": Label.n_clean_ice,
                      "debris": Label.n_debris, "glacier": Label.n_glacier}


def labelled_patch_pixels(session: Session) -> dict[int, dict[str, int]]:
    """Every patch with an accepted label, and its labelled pixels per class (summed over its
    labels: their counts, not their combination)."""
    out: dict[int, dict[str, int]] = {}
    for row in session.execute(select(Label.patch_id, *LABEL_CLASS_COUNTS.values()).where(Label.status == "accepted")):
        pixels = out.setdefault(row[0], dict.fromkeys(LABEL_CLASS_COUNTS, 0))
        for name, n in zip(LABEL_CLASS_COUNTS, row[1:], strict=True):
            pixels[name] += int(n or 0)
    return out


def patches_by_id(session: Session, ids: list[int], with_scenes: bool = False) -> list[Patch]:
    query = select(Patch).where(Patch.id.in_(ids)).order_by(Patch.id)
    return list(session.scalars(query.options(selectinload(Patch.scene)) if with_scenes else query))


def patches_without_split(session: Session, ids: list[int]) -> list[Patch]:
    return list(session.scalars(select(Patch).where(Patch.id.in_(ids), Patch.split.is_(None)).order_by(Patch.id)))


def block_splits(session: Session, block: int, key: Callable[[Patch, int], tuple]) -> dict[tuple, str]:
    """The split of every block some patch of which has one (``key(patch, block)`` names the
    block); a block whose patches disagree (single patches held out) is left out."""
    found: dict[tuple, set[str]] = {}
    for patch in session.scalars(select(Patch).where(Patch.split.is_not(None))):
        if patch.split is not None:
            found.setdefault(key(patch, block), set()).add(patch.split)
    return {k: v.pop() for k, v in found.items() if len(v) == 1}


def split_counts(session: Session, ids: list[int] | None = None) -> dict[str, int]:
    """Patches per split, among ``ids`` (default: every patch with a split)."""
    query = select(Patch.split, func.count()).where(Patch.split.is_not(None)).group_by(Patch.split)
    if ids is not None:
        query = query.where(Patch.id.in_(ids))
    return {"train": 0, "val": 0, **{split: n for split, n in session.execute(query) if split is not None}}


def split_classes(session: Session, pixels: dict[int, dict[str, int]]) -> tuple[set[str], set[str]]:
    """The classes the labelled patches of validation and of training show."""
    val, train = set(), set()
    for patch_id, split in session.execute(select(Patch.id, Patch.split).where(Patch.id.in_(list(pixels)))):
        shown = {name for name, n in pixels[patch_id].items() if n}
        if split == "val":
            val |= shown
        elif split == "train":
            train |= shown
    return val, train


def evaluation(session: Session, version_id: int, validation_set: str) -> ModelEvaluation | None:
    return session.scalar(select(ModelEvaluation).where(ModelEvaluation.model_version_id == version_id,
                                                        ModelEvaluation.validation_set == validation_set))


def save_evaluation(session: Session, version_id: int, validation_set: str, patches: int,
                    metrics: dict[str, Any]) -> None:
    """Record a version's scores on a validation set (once: a second writer's row is kept, except
    that a row recorded before per-patch counts were kept takes the new figures)."""
    found = evaluation(session, version_id, validation_set)
    if found is not None:
        if "val_units" not in found.metrics and "val_units" in metrics:
            found.metrics = metrics
        return
    try:
        with session.begin_nested():
            session.add(ModelEvaluation(model_version_id=version_id, validation_set=validation_set,
                                        patches=patches, metrics=metrics))
    except IntegrityError:  # another process recorded the same evaluation meanwhile
        pass


def served_versions(session: Session) -> list[ModelVersion]:
    """Versions that have been the champion at some time (the gate's references)."""
    return list(session.scalars(select(ModelVersion).where(ModelVersion.promoted_at.is_not(None))
                                .order_by(ModelVersion.id)))


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
    splits = [
        {"split": split or "not yet", "source": source, "patches": n_patches, "background": int(bg or 0),
         "clean_ice": int(clean or 0), "debris": int(debris or 0), "glacier": int(glacier or 0)}
        for split, source, n_patches, bg, clean, debris, glacier in session.execute(
            select(
                Patch.split, Label.source, func.count(func.distinct(Label.patch_id)),
                func.sum(Label.n_background), func.sum(Label.n_clean_ice),
                func.sum(Label.n_debris), func.sum(Label.n_glacier),
            )
            .join(Patch, Patch.id == Label.patch_id)
            .where(Label.status == "accepted")
            .group_by(Patch.split, Label.source)
            .order_by(Patch.split, Label.source)
        )
    ]
    reserved = session.scalar(
        select(func.count(Patch.id)).where(Patch.split == "val", Patch.id.in_(open_round_patch_ids()),
                                           Patch.id.not_in(labelled_patch_ids()))
    ) or 0
    models = dict(
        session.execute(
            select(ModelVersion.status, func.count(ModelVersion.id)).group_by(ModelVersion.status)
        ).all()
    )
    newest = session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))
    champion = session.scalar(select(ModelVersion).where(ModelVersion.status == "champion"))
    jobs = dict(
        session.execute(
            select(TrainingJob.status, func.count(TrainingJob.id)).group_by(TrainingJob.status)
        ).all()
    )
    ignored: dict[str, int] = {}
    for details in session.scalars(
        select(Label.details).where(Label.status == "accepted", Label.source == "annotation")
    ):
        for key, n in ((details or {}).get("ignored") or {}).items():
            ignored[key] = ignored.get(key, 0) + int(n)
    open_rounds = [
        {"number": number, "patches": total, "labelled": int(done or 0)}
        for number, total, done in session.execute(
            select(Round.number, func.count(RoundPatch.id),
                   func.count(RoundPatch.id).filter(RoundPatch.patch_id.in_(labelled_patch_ids())))
            .join(RoundPatch, RoundPatch.round_id == Round.id)
            .where(Round.status == "open").group_by(Round.number).order_by(Round.number))
    ]
    return {
        "scenes": scenes,
        "labels": labels,
        "ignored": ignored,
        "open_rounds": open_rounds,
        "rounds": session.scalar(select(func.count(Round.id))) or 0,
        "splits": splits,
        "validation_reserved": reserved,
        "models": models,
        "champion": champion.name if champion else None,
        "champion_metrics": champion.metrics if champion else {},
        "newest": None if newest is None else {
            "name": newest.name, "status": newest.status,
            "gate": gate_summary(newest.metrics), "metrics": newest.metrics,
        },
        "jobs": jobs,
    }


def gate_summary(metrics: dict[str, Any]) -> str:
    """The gate's decision on a version in words (also for versions from before the gate
    recorded its figures)."""
    gate = metrics.get("gate")
    if isinstance(gate, dict):
        return str(gate.get("summary", ""))
    return str(gate or "")


def newest_round_regions(session: Session, patch_ids: list[int]) -> dict[int, list[int]]:
    """Patch id -> the region to label of the newest round holding the patch, where it has one."""
    rows = session.execute(
        select(RoundPatch.patch_id, RoundPatch.region)
        .where(RoundPatch.patch_id.in_(list(patch_ids)))
        .order_by(RoundPatch.round_id)
    ).all()
    newest = {patch_id: region for patch_id, region in rows}  # later rounds overwrite earlier ones
    return {patch_id: region for patch_id, region in newest.items() if region}


def timed_labels(session: Session) -> list[tuple[np.ndarray, float]]:
    """(mask, lead time in seconds) of every accepted label that has a lead time (Label Studio's)."""
    rows = session.execute(
        select(Label.mask, Patch.height, Patch.width, Label.details).join(Patch, Patch.id == Label.patch_id)
        .where(Label.status == "accepted").order_by(Label.id)
    ).all()
    return [(unpack_mask(mask, h, w), float(details["lead_time"])) for mask, h, w, details in rows
            if (details or {}).get("lead_time") is not None]


def raster_scene_ids(session: Session) -> list[int]:
    """The ids of the scenes stored as one raster (not slices), in order."""
    return list(session.scalars(select(Scene.id).where(Scene.data_path.is_not(None)).order_by(Scene.id)))


def accepted_labels_of_origins(session: Session, source: str, origins: list[str]) -> list[Label]:
    return list(session.scalars(
        select(Label).where(Label.source == source, Label.status == "accepted", Label.origin.in_(origins))))


def labels_by_authors(session: Session, source: str, authors: list[str]) -> list[Label]:
    return list(session.scalars(select(Label).where(Label.source == source, Label.author.in_(authors))))


def accepted_origins(session: Session, source: str, prefix: str) -> dict[str, int]:
    """Origin -> label id of the accepted labels of ``source`` whose origin starts with ``prefix``."""
    rows = session.execute(select(Label.origin, Label.id).where(
        Label.source == source, Label.status == "accepted", Label.origin.startswith(prefix)))
    return {origin: label_id for origin, label_id in rows}


def open_round_numbers(session: Session) -> list[int]:
    return list(session.scalars(select(Round.number).where(Round.status == "open").order_by(Round.number)))


def round_patches(session: Session, number: int) -> list[RoundPatch]:
    """The patches of round ``number`` in rank order."""
    return list(session.scalars(select(RoundPatch).join(Round).where(Round.number == number).order_by(RoundPatch.rank)))


def open_round_patches(session: Session, patch_ids: list[int]) -> list[RoundPatch]:
    """The entries of these patches in rounds still open."""
    return list(session.scalars(
        select(RoundPatch).join(Round).where(RoundPatch.patch_id.in_(patch_ids), Round.status == "open")))


def unlabelled_open_tasks(session: Session, prefix: str) -> list[tuple[int, str]]:
    """(patch id, external id) of the unlabelled patches in open rounds whose external id starts
    with ``prefix``, in round and rank order."""
    rows = session.execute(
        select(RoundPatch.patch_id, RoundPatch.external_id).join(Round)
        .where(Round.status == "open", RoundPatch.external_id.startswith(prefix))
        .where(RoundPatch.patch_id.not_in(labelled_patch_ids()))
        .order_by(Round.number, RoundPatch.rank))
    return [(patch_id, external) for patch_id, external in rows if external is not None]


def labels_by_id(session: Session, ids: list[int]) -> list[Label]:
    return list(session.scalars(select(Label).where(Label.id.in_(ids)).order_by(Label.id)))


def newest_label_id(session: Session) -> int:
    """The id of the newest label, 0 without any (labels after it arrived later)."""
    return session.scalar(select(func.max(Label.id))) or 0


def raster_scenes(session: Session, scene_ids: list[int] | None = None) -> list[Scene]:
    """Scenes with pixels (not label-only), all or those of ``scene_ids``, by id."""
    query = select(Scene).where(Scene.data_path.is_not(None)).order_by(Scene.id)
    if scene_ids:
        query = query.where(Scene.id.in_(scene_ids))
    return list(session.scalars(query))


def scenes_by_id(session: Session, scene_ids: set[int]) -> list[Scene]:
    return list(session.scalars(select(Scene).where(Scene.id.in_(scene_ids)).order_by(Scene.id)))


def accepted_labels_with_patches(session: Session, patch_ids: list[int] | None = None) -> list[Label]:
    """Accepted labels (of ``patch_ids``, or all), their patches and scenes loaded along."""
    query = select(Label).where(Label.status == "accepted")
    if patch_ids is not None:
        query = query.where(Label.patch_id.in_(patch_ids))
    return list(session.scalars(query.options(selectinload(Label.patch).selectinload(Patch.scene))))


def first_job_in(session: Session, statuses: Iterable[str]) -> TrainingJob | None:
    """The oldest training job in one of ``statuses``."""
    return session.scalar(select(TrainingJob).where(TrainingJob.status.in_(list(statuses)))
                          .order_by(TrainingJob.id).limit(1))


def newest_version(session: Session) -> ModelVersion | None:
    """The version trained last, whatever its status."""
    return session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))


def accepted_labels_after(session: Session, label_id: int) -> tuple[int, int]:
    """(count, debris pixels) of the accepted labels with an id above ``label_id``."""
    count, debris = session.execute(
        select(func.count(Label.id), func.coalesce(func.sum(Label.n_debris), 0))
        .where(Label.status == "accepted", Label.id > label_id)
    ).one()
    return int(count), int(debris)


def pool_patches(session: Session, leave_out_scenes: list[int]) -> list[Patch]:
    """Patches with no accepted label, in no open round, not mostly nodata, in none of
    ``leave_out_scenes``, by id."""
    return list(session.scalars(
        select(Patch)
        .where(Patch.id.not_in(labelled_patch_ids()))
        .where(Patch.id.not_in(open_round_patch_ids()))
        .where(Patch.low_valid.is_(False))
        .where(Patch.scene_id.not_in(leave_out_scenes))
        .order_by(Patch.id)
    ))


def all_scenes(session: Session) -> list[Scene]:
    return list(session.scalars(select(Scene).order_by(Scene.id)))


def _scored_by(version_id: int | None) -> ColumnElement[bool]:
    """Scores of one model version (``None``: the cold-start priors)."""
    if version_id is None:
        return PatchScore.model_version_id.is_(None)
    return PatchScore.model_version_id == version_id


def scored_patch_ids(session: Session, version_id: int | None) -> set[int]:
    """Patches whose acquisition scores under ``version_id`` (None: the priors) are cached."""
    return set(session.scalars(select(PatchScore.patch_id).where(_scored_by(version_id))))


def cached_components(session: Session, version_id: int | None, patch_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Patch id -> its cached acquisition components under ``version_id``."""
    return dict(session.execute(
        select(PatchScore.patch_id, PatchScore.components)
        .where(_scored_by(version_id), PatchScore.patch_id.in_(patch_ids))
    ).all())


def last_round_number(session: Session) -> int:
    """The number of the newest round, 0 before the first."""
    return session.scalar(select(Round.number).order_by(Round.number.desc()).limit(1)) or 0


def all_patches(session: Session) -> list[Patch]:
    return list(session.scalars(select(Patch).order_by(Patch.id)))

