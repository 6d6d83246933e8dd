"""Label Studio annotations as accepted labels in the store.

An annotation is read in two steps so that bad input changes nothing: :func:`read_annotation`
checks everything (the task's patch exists, the result decodes onto the patch grid) and raises
:class:`AnnotationError` naming the problem; :func:`apply` then writes, and only writes.

Decisions:

* A label's ``origin`` is ``label-studio:<project>:<annotation id>``. Re-delivering an annotation
  with the same result is a no-op, an edit is a new revision, a deleted annotation is retired.
* An annotation that was skipped (``was_cancelled``) is not a label; if it was accepted before
  (an expert skipped a task they had labelled), that label is retired.
* Annotations are complete: pixels an expert left unpainted are background. Pixels painted
  "unsure" or "cloud / no data" are unlabeled, and counted in the label's details (``ignored``).
* An annotation that paints nothing and does not choose "no glacier in this patch" says nothing:
  it is not a label (like a skipped task), and a label it replaces is retired.
* An update older than the stored revision (``updated_at``, parsed as a time; deliveries can
  overtake each other) is ignored.
* A deleted annotation leaves a tombstone: Label Studio never brings an annotation back, so a late
  delivery of it (a duplicate of its creation, an update saved before the deletion) changes
  nothing, even when the deletion arrived first.
* Ids must fit the store (positive, 64-bit; patch ids 32-bit); the author is kept as Label
  Studio's user id (webhooks carry no more) and as an email once known (see :func:`set_author_emails`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from backends.results import EmptyAnnotation, ResultError, read_results
from db import queries
from db.models import Label, Patch
from db.queries import pack_mask, save_revision
from db.session import Store

SOURCE = "annotation"
PATCH_ID_KEY = "patch_id"  # the task data field naming the al-loop patch
MAX_ID = 2**63 - 1  # ids Label Studio hands out fit a signed 64-bit integer
MAX_PATCH_ID = 2**31 - 1  # patch ids are 32-bit integers in the store


class AnnotationError(ValueError):
    """An annotation that cannot become a label; the message names the field and the problem."""


@dataclass(frozen=True)
class Annotation:
    """A checked annotation, ready to store."""

    project: int
    annotation_id: int
    task_id: int | None
    patch_id: int
    cancelled: bool  # skipped, or submitted empty: no label
    mask: np.ndarray | None  # None when cancelled
    author: str | None  # Label Studio's user id, or an email when the payload holds one
    email: str | None
    lead_time: float | None
    updated_at: dt.datetime | None
    empty: bool = False  # submitted with nothing painted and no "no glacier" choice
    ignored: dict[str, int] | None = None  # unsure / cloud pixels (see backends.results.read_results)
    no_glacier: bool = False  # the expert chose "no glacier in this patch"

    @property
    def origin(self) -> str:
        return origin(self.project, self.annotation_id)

    @cached_property
    def packed_mask(self) -> bytes | None:
        """The mask as the store keeps it, packed once for the inbox and the store."""
        return None if self.mask is None else pack_mask(self.mask)


def origin(project: int, annotation_id: int) -> str:
    return f"label-studio:{project}:{annotation_id}"


def _int(value: Any, field: str, maximum: int = MAX_ID) -> int:
    if type(value) is not int:
        raise AnnotationError(f"{field} must be an integer id, found {_short(value)}")
    if not 0 < value <= maximum:
        raise AnnotationError(f"{field} must be an id between 1 and {maximum}, found {value}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _author(completed_by: Any) -> tuple[str | None, str | None]:
    """(user id, email) of ``completed_by``: Label Studio's user id, or a user object."""
    if completed_by is None:
        return None, None
    if type(completed_by) is int:
        return str(_int(completed_by, "annotation.completed_by")), None
    if not isinstance(completed_by, dict):
        raise AnnotationError(f"annotation.completed_by must be a user id or object, found {_short(completed_by)}")
    email = completed_by.get("email")
    if email is not None and (not isinstance(email, str) or len(email) > 200):
        raise AnnotationError(f"annotation.completed_by.email must be a text of at most 200 characters, "
                              f"found {_short(email)}")
    user = completed_by.get("id")
    user = None if user is None else str(_int(user, "annotation.completed_by.id"))
    return user or email, email or None


def parse_time(value: Any, field: str) -> dt.datetime | None:
    """An ISO 8601 time (any UTC offset, fractions of a second) as an aware UTC datetime; a time
    without offset is taken as UTC (Label Studio's own)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise AnnotationError(f"{field} must be an ISO 8601 time, found {_short(value)}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise AnnotationError(f"{field} must be an ISO 8601 time, found {_short(value)}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def annotation_id(value: Any, field: str = "annotation.id") -> int:
    return _int(value, field)


def patch_id(value: Any, field: str) -> int:
    return _int(value, field, MAX_PATCH_ID)


def project_id(payload: dict) -> int:
    """The project id of a webhook payload (``project`` is the project dict)."""
    project = payload.get("project")
    return _int(project.get("id") if isinstance(project, dict) else project, "project.id")


class PatchSizes:
    """Patch id -> (height, width), read from the store once per patch: patches never change
    size, and a webhook should not wait for a query to learn it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sizes: dict[int, tuple[int, int]] = {}

    def __call__(self, patch_id: int) -> tuple[int, int] | None:
        size = self._sizes.get(patch_id)
        if size is None:
            with self.store.session() as session:
                size = queries.patch_size(session, patch_id)
            if size is not None:
                self._sizes[patch_id] = size
        return size


def read_annotation(
    patch_size: Callable[[int], tuple[int, int] | None], project: int, annotation: Any, task: Any
) -> Annotation:
    """Check one annotation (a Label Studio annotation dict) of ``task`` (a task dict with
    ``data``); raise :class:`AnnotationError` on anything that cannot be stored. ``patch_size``
    gives a patch's (height, width), None for no such patch (a :class:`PatchSizes`)."""
    if not isinstance(annotation, dict):
        raise AnnotationError(f"annotation must be an object, found {type(annotation).__name__}")
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise AnnotationError("task.data is missing: the annotation cannot be tied to a patch")
    annotation_id = _int(annotation.get("id"), "annotation.id")
    patch_id = _int(task["data"].get(PATCH_ID_KEY), f"task.data.{PATCH_ID_KEY}", MAX_PATCH_ID)
    size = patch_size(patch_id)
    if size is None:
        raise AnnotationError(f"task {task.get('id')}: no patch {patch_id} in the store")
    height, width = size
    cancelled = bool(annotation.get("was_cancelled"))
    mask, ignored, empty, no_glacier = None, {}, False, False
    if not cancelled:
        result = annotation.get("result")
        if not isinstance(result, list):
            raise AnnotationError(f"annotation {annotation_id}: result must be a list, found {type(result).__name__}")
        try:
            read = read_results(result, height, width, complete=True)
            mask, ignored, no_glacier = read.mask, read.ignored, read.no_glacier
        except EmptyAnnotation:
            cancelled = empty = True
        except ResultError as exc:
            raise AnnotationError(f"annotation {annotation_id} of task {task.get('id')}: {exc}") from None
    lead_time = annotation.get("lead_time")
    if lead_time is not None and (type(lead_time) not in (int, float) or not 0 <= lead_time < 1e9):
        raise AnnotationError(f"annotation {annotation_id}: lead_time must be seconds, found {_short(lead_time)}")
    task_id = task.get("id")
    author, email = _author(annotation.get("completed_by"))
    return Annotation(
        project=project,
        annotation_id=annotation_id,
        task_id=None if task_id is None else _int(task_id, "task.id"),
        patch_id=patch_id,
        cancelled=cancelled,
        empty=empty,
        mask=mask,
        ignored=ignored,
        no_glacier=no_glacier,
        author=author,
        email=email,
        lead_time=None if lead_time is None else float(lead_time),
        updated_at=parse_time(annotation.get("updated_at"), f"annotation {annotation_id}: updated_at"),
    )


@dataclass
class Known:
    """What storing a group of annotations needs from the store, read for all of them at once
    (three queries instead of three per annotation) and kept up to date while they are stored."""

    tombstones: set[tuple[int, int]]  # (project, annotation id) deleted
    labels: dict[tuple[int, str], Label]  # (patch id, origin) -> its newest revision
    patches: dict[int, Patch]

    @classmethod
    def read(cls, session: Session, group: list[Annotation]) -> Known:
        return cls(queries.tombstoned(session, {(a.project, a.annotation_id) for a in group}),
                   queries.newest_revisions(session, SOURCE, {(a.patch_id, a.origin) for a in group}),
                   {p.id: p for p in queries.patches_by_id(session, list({a.patch_id for a in group}))})


def apply(session: Session, annotation: Annotation, known: Known | None = None) -> str:
    """Store a checked annotation; returns created / revised / unchanged / retired / stale /
    deleted (its annotation was deleted: a late delivery) / skipped (a cancelled annotation
    that was never a label). ``known``: the lookups read for a group it belongs to."""
    known = known or Known.read(session, [annotation])
    if (annotation.project, annotation.annotation_id) in known.tombstones:
        return "deleted"
    previous = known.labels.get((annotation.patch_id, annotation.origin))
    seen = parse_time(previous.details.get("updated_at"), "stored updated_at") if previous is not None else None
    if seen and annotation.updated_at and annotation.updated_at < seen:
        return "stale"
    if annotation.cancelled:
        if previous is not None and previous.status == "accepted":
            previous.status = "retired"
            return "retired"
        return "empty" if annotation.empty else "skipped"
    updated_at = annotation.updated_at.isoformat() if annotation.updated_at else None
    details: dict[str, Any] = {
        "label_studio_project": annotation.project,
        "label_studio_annotation": annotation.annotation_id,
        "label_studio_task": annotation.task_id,
        "label_studio_user": annotation.author,
        "lead_time": annotation.lead_time,
        "updated_at": updated_at,
    }
    if annotation.ignored:
        details["ignored"] = annotation.ignored
    if annotation.no_glacier:
        details["no_glacier"] = True
    if annotation.email:
        details["email"] = annotation.email
    patch = known.patches.get(annotation.patch_id)
    if patch is None or annotation.mask is None:  # read_annotation found the patch; only a skip has no mask
        raise AnnotationError(f"patch {annotation.patch_id} is not in the store, or the annotation has no mask")
    label, outcome = save_revision(
        session, patch, annotation.mask, previous,
        source=SOURCE, origin=annotation.origin, author=annotation.email or annotation.author, details=details,
        packed=annotation.packed_mask,
    )
    if outcome == "unchanged" and updated_at and label.details.get("updated_at") != updated_at:
        label.details = {**label.details, "updated_at": updated_at}
    known.labels[(annotation.patch_id, annotation.origin)] = label
    return outcome


def retire(session: Session, project: int, annotation_ids: list[int], known: Known | None = None) -> int:
    """Retire the accepted labels of deleted annotations and leave their tombstones (also for
    annotations never seen: a deletion may overtake the creation); returns how many labels.
    ``known``: the lookups of the group it belongs to, told of the tombstones."""
    if known is not None:
        known.tombstones.update((project, annotation_id) for annotation_id in annotation_ids)
    for annotation_id in annotation_ids:
        queries.add_tombstone(session, project, annotation_id)
    origins = [origin(project, i) for i in annotation_ids]
    labels = queries.accepted_labels_of_origins(session, SOURCE, origins)
    for label in labels:
        label.status = "retired"
    return len(labels)


def set_author_emails(session: Session, emails: dict[str, str]) -> int:
    """Record the email of the annotation labels whose author is a Label Studio user id in
    ``emails`` (user id -> email); returns how many labels changed."""
    changed = 0
    for label in queries.labels_by_authors(session, SOURCE, list(emails)):
        email = emails[label.author or ""]  # the query found it among the keys
        label.details, label.author = {**label.details, "email": email}, email
        changed += 1
    return changed


def accepted_annotation_ids(session: Session, project: int) -> dict[int, int]:
    """Annotation id -> label id of the accepted labels of one project."""
    prefix = origin(project, 0)[:-1]
    labels = queries.accepted_origins(session, SOURCE, prefix)
    return {int(o.rsplit(":", 1)[1]): label_id for o, label_id in labels.items()}
