"""Label Studio annotations as accepted labels in the store.

An annotation is read in two steps so that bad input changes nothing: :func:`read_annotation`
checks everything (the task's patch exists, the result decodes onto the patch grid) and raises
:class:`AnnotationError` naming the problem; :func:`apply` then writes, and only writes.

Decisions:

* A label's ``origin`` is ``label-studio:<project>:<annotation id>``. Re-delivering an annotation
  with the same result is a no-op, an edit is a new revision, a deleted annotation is retired.
* An annotation that was skipped (``was_cancelled``) is not a label; if it was accepted before
  (an expert skipped a task they had labelled), that label is retired.
* Annotations are complete: pixels an expert left unpainted are background.
* An update older than the stored revision (``updated_at``; deliveries can overtake each other)
  is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backends.results import ResultError, results_to_mask
from db.models import Label, Patch
from db.queries import current_label, save_label

SOURCE = "annotation"
PATCH_ID_KEY = "patch_id"  # the task data field naming the al-loop patch


class AnnotationError(ValueError):
    """An annotation that cannot become a label; the message names the field and the problem."""


@dataclass(frozen=True)
class Annotation:
    """A checked annotation, ready to store."""

    project: int
    annotation_id: int
    task_id: int | None
    patch_id: int
    cancelled: bool
    mask: np.ndarray | None  # None when cancelled
    author: str | None
    lead_time: float | None
    updated_at: str | None

    @property
    def origin(self) -> str:
        return origin(self.project, self.annotation_id)


def origin(project: int, annotation_id: int) -> str:
    return f"label-studio:{project}:{annotation_id}"


def _int(value: Any, field: str) -> int:
    if type(value) is not int:
        raise AnnotationError(f"{field} must be an integer id, found {value!r}")
    return value


def _author(completed_by: Any) -> str | None:
    if isinstance(completed_by, dict):
        return completed_by.get("email") or (str(completed_by["id"]) if "id" in completed_by else None)
    return None if completed_by is None else str(completed_by)


def project_id(payload: dict) -> int:
    """The project id of a webhook payload (``project`` is the project dict)."""
    project = payload.get("project")
    return _int(project.get("id") if isinstance(project, dict) else project, "project.id")


def read_annotation(
    session: Session, project: int, annotation: Any, task: Any
) -> Annotation:
    """Check one annotation (a Label Studio annotation dict) of ``task`` (a task dict with
    ``data``); raise :class:`AnnotationError` on anything that cannot be stored."""
    if not isinstance(annotation, dict):
        raise AnnotationError(f"annotation must be an object, found {type(annotation).__name__}")
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise AnnotationError("task.data is missing: the annotation cannot be tied to a patch")
    annotation_id = _int(annotation.get("id"), "annotation.id")
    patch_id = _int(task["data"].get(PATCH_ID_KEY), f"task.data.{PATCH_ID_KEY}")
    patch = session.get(Patch, patch_id)
    if patch is None:
        raise AnnotationError(f"task {task.get('id')}: no patch {patch_id} in the store")
    cancelled = bool(annotation.get("was_cancelled"))
    mask = None
    if not cancelled:
        result = annotation.get("result")
        if not isinstance(result, list):
            raise AnnotationError(f"annotation {annotation_id}: result must be a list, found {type(result).__name__}")
        try:
            mask = results_to_mask(result, patch.height, patch.width, complete=True)
        except ResultError as exc:
            raise AnnotationError(f"annotation {annotation_id} of task {task.get('id')}: {exc}") from None
    lead_time = annotation.get("lead_time")
    return Annotation(
        project=project,
        annotation_id=annotation_id,
        task_id=task.get("id") if type(task.get("id")) is int else None,
        patch_id=patch_id,
        cancelled=cancelled,
        mask=mask,
        author=_author(annotation.get("completed_by")),
        lead_time=float(lead_time) if isinstance(lead_time, int | float) else None,
        updated_at=str(annotation["updated_at"]) if annotation.get("updated_at") else None,
    )


def apply(session: Session, annotation: Annotation) -> str:
    """Store a checked annotation; returns created / revised / unchanged / retired / stale /
    skipped (a cancelled annotation that was never a label)."""
    previous = current_label(session, annotation.patch_id, SOURCE, annotation.origin)
    seen = previous.details.get("updated_at") if previous is not None else None
    if seen and annotation.updated_at and annotation.updated_at < seen:
        return "stale"
    if annotation.cancelled:
        if previous is not None and previous.status == "accepted":
            previous.status = "retired"
            return "retired"
        return "skipped"
    details = {
        "label_studio_project": annotation.project,
        "label_studio_annotation": annotation.annotation_id,
        "label_studio_task": annotation.task_id,
        "lead_time": annotation.lead_time,
        "updated_at": annotation.updated_at,
    }
    label, outcome = save_label(
        session, session.get(Patch, annotation.patch_id), annotation.mask,
        source=SOURCE, origin=annotation.origin, author=annotation.author, details=details,
    )
    if outcome == "unchanged" and annotation.updated_at and label.details.get("updated_at") != annotation.updated_at:
        label.details = {**label.details, "updated_at": annotation.updated_at}
    return outcome


def retire(session: Session, project: int, annotation_ids: list[int]) -> int:
    """Retire the accepted labels of deleted annotations; returns how many."""
    origins = [origin(project, i) for i in annotation_ids]
    labels = session.scalars(
        select(Label).where(Label.source == SOURCE, Label.status == "accepted", Label.origin.in_(origins))
    ).all()
    for label in labels:
        label.status = "retired"
    return len(labels)


def accepted_annotation_ids(session: Session, project: int) -> dict[int, int]:
    """Annotation id -> label id of the accepted labels of one project."""
    prefix = origin(project, 0)[:-1]
    rows = session.execute(
        select(Label.origin, Label.id).where(
            Label.source == SOURCE, Label.status == "accepted", Label.origin.startswith(prefix)
        )
    )
    return {int(o.rsplit(":", 1)[1]): label_id for o, label_id in rows}
