"""The model registry: versions, the champion, promotion and rollback."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ModelVersion, utcnow


class RegistryError(LookupError):
    """A model version is missing or cannot take the requested status."""


def champion(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == "champion"))


def version_or_champion(session: Session, name: str | None = None) -> ModelVersion:
    """Version ``name``, or the champion when no name is given; an error saying what to do when
    there is none."""
    if name:
        return version(session, name)
    found = champion(session)
    if found is None:
        raise RegistryError("no champion model yet: train one with `al-loop train`")
    return found


def version(session: Session, name: str) -> ModelVersion:
    found = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
    if found is None:
        names = session.scalars(select(ModelVersion.name).order_by(ModelVersion.id)).all()
        raise RegistryError(f"no model version {name!r}; versions: {', '.join(names) or 'none'}")
    return found


def next_name(session: Session) -> str:
    return f"v{(session.scalar(select(func.count(ModelVersion.id))) or 0) + 1}"


def versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def promote(session: Session, target: ModelVersion) -> ModelVersion | None:
    """Make ``target`` the champion; the previous champion is retired. Returns that one."""
    previous = champion(session)
    if previous is not None and previous.id != target.id:
        previous.status = "retired"
    session.flush()  # one champion at a time, also for a unique index on status
    target.status = "champion"
    target.promoted_at = utcnow()
    session.flush()
    return previous


def rollback(session: Session, target: ModelVersion) -> ModelVersion | None:
    """Serve an earlier champion again (it must have been promoted once)."""
    if target.promoted_at is None:
        raise RegistryError(f"model version {target.name!r} was never a champion; use promote to serve it")
    return promote(session, target)
