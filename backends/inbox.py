"""Webhook deliveries made durable before they are answered.

A checked delivery is written to ``<workspace>/inbox/`` as one small JSON file (the annotation
with its mask packed, or the ids of deleted annotations), flushed to disk, and only then handed
to the label writer; the file is removed once the store has committed what it says. A delivery
answered 2xx therefore survives a crash (kill -9, power loss) even while the store is locked by
another process and nothing could be committed: :meth:`Inbox.pending` gives back what is left,
oldest first, and the backend replays it when it starts. Replaying is safe: storing the same
annotation twice changes nothing, and deletions leave tombstones.

A file that cannot be replayed (the patch is gone, the file is damaged) moves to ``failed/``
with the reason beside it, never silently dropped.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from backends.accepted_labels import Annotation
from db.queries import unpack_mask

log = logging.getLogger(__name__)
STALE_PART_S = 300.0  # a half-written file this old was never answered: its request died


class Retire:
    """Deleted annotations of one project (an ``ANNOTATIONS_DELETED`` delivery)."""

    __slots__ = ("project", "annotation_ids")

    def __init__(self, project: int, annotation_ids: tuple[int, ...]) -> None:
        self.project, self.annotation_ids = project, tuple(annotation_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Retire):
            return False
        return (self.project, self.annotation_ids) == (other.project, other.annotation_ids)

    def __repr__(self) -> str:
        return f"Retire({self.project}, {self.annotation_ids})"


Item = Annotation | Retire


def describe(item: Item) -> str:
    if isinstance(item, Retire):
        return f"deletion of annotation(s) {list(item.annotation_ids)} of project {item.project}"
    return f"annotation {item.annotation_id} of project {item.project} (patch {item.patch_id})"


def to_record(item: Item) -> dict[str, Any]:
    if isinstance(item, Retire):
        return {"kind": "retire", "project": item.project, "annotation_ids": list(item.annotation_ids)}
    record = {
        "kind": "annotation", "project": item.project, "annotation_id": item.annotation_id, "task_id": item.task_id,
        "patch_id": item.patch_id, "cancelled": item.cancelled, "author": item.author, "email": item.email,
        "lead_time": item.lead_time, "updated_at": item.updated_at.isoformat() if item.updated_at else None,
        "mask": None,
    }
    if item.mask is not None and item.packed_mask is not None:
        record["mask"] = base64.b64encode(item.packed_mask).decode()
        record["shape"] = list(item.mask.shape)
    return record


def from_record(record: dict[str, Any]) -> Item:
    if record["kind"] == "retire":
        return Retire(int(record["project"]), tuple(int(i) for i in record["annotation_ids"]))
    mask = None
    if record["mask"] is not None:
        mask = np.array(unpack_mask(base64.b64decode(record["mask"]), *record["shape"]))
    return Annotation(
        project=record["project"], annotation_id=record["annotation_id"], task_id=record["task_id"],
        patch_id=record["patch_id"], cancelled=record["cancelled"], mask=mask, author=record["author"],
        email=record["email"], lead_time=record["lead_time"],
        updated_at=dt.datetime.fromisoformat(record["updated_at"]) if record["updated_at"] else None,
    )


class Inbox:
    """The folder of deliveries answered but not yet committed (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.failed = self.folder / "failed"
        self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, item: Item) -> Path:
        """Write ``item`` durably; returns its file."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"
        tmp = self.folder / f".{name}.part"
        with open(tmp, "w") as handle:
            json.dump(to_record(item), handle)
            handle.flush()
            os.fsync(handle.fileno())
        path = self.folder / name
        os.replace(tmp, path)
        _fsync_dir(self.folder)
        return path

    def done(self, path: Path) -> None:
        """The store holds the delivery: forget its file."""
        path.unlink(missing_ok=True)

    def pending(self, older_than_s: float = 0.0) -> list[tuple[Path, Item | None]]:
        """Deliveries left from before, oldest first; None for a file that cannot be read.
        ``older_than_s``: only files at least this old (younger ones may be in the hands of
        another server process)."""
        out: list[tuple[Path, Item | None]] = []
        now_ns = time.time_ns()
        for path in sorted(self.folder.glob("*.json")):
            if older_than_s and now_ns - _written_ns(path) < older_than_s * 1e9:
                continue
            try:
                out.append((path, from_record(json.loads(path.read_text()))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("inbox file %s cannot be read: %s", path.name, exc)
                out.append((path, None))
        for stale in self.folder.glob(".*.part"):  # a write that never finished was never answered
            try:
                if time.time() - stale.stat().st_mtime > STALE_PART_S:  # not one being written now
                    stale.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        return out

    def set_aside(self, path: Path, reason: str) -> Path:
        """Move a delivery that cannot be stored to ``failed/``, its reason beside it."""
        self.failed.mkdir(exist_ok=True)
        target = self.failed / path.name
        os.replace(path, target)
        target.with_suffix(".reason.txt").write_text(reason + "\n")
        log.error("delivery %s set aside in %s: %s", path.name, self.failed, reason)
        return target


def _written_ns(path: Path) -> int:
    """When a delivery was made durable: its name starts with the time in nanoseconds."""
    try:
        return int(path.name.split("-", 1)[0])
    except ValueError:
        return 0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
