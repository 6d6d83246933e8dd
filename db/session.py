"""Engines, sessions and schema migrations (Alembic, applied programmatically)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaError(RuntimeError):
    """The database's schema is missing, behind, or newer than this al-loop."""


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets foreign keys enforced and a busy timeout for concurrent writers."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: object) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(engine: Engine | None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
    if head is None:
        raise SchemaError(f"{MIGRATIONS} holds no migration: this al-loop installation is incomplete")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Apply every migration up to head; refuse a database from a newer al-loop."""
    current = current_revision(engine)
    _refuse_newer(current)
    command.upgrade(_alembic_config(engine), "head")
    return head_revision()


def _refuse_newer(current: str | None) -> None:
    if current is None:
        return
    scripts = ScriptDirectory.from_config(_alembic_config(None))
    if current not in {script.revision for script in scripts.walk_revisions()}:
        raise SchemaError(
            f"the database is at schema revision {current!r}, which this al-loop does not know "
            f"(its newest is {scripts.get_current_head()!r}): it was written by a newer al-loop; "
            "upgrade al-loop to use this workspace"
        )


def check_schema(engine: Engine) -> None:
    """Fail clearly unless the database is exactly at this al-loop's schema head."""
    current = current_revision(engine)
    if current is None:
        raise SchemaError(
            f"no al-loop schema in {engine.url.render_as_string(hide_password=True)}: "
            "run `al-loop init` or `al-loop db upgrade` first"
        )
    _refuse_newer(current)
    head = head_revision()
    if current != head:
        raise SchemaError(
            f"the database is at schema revision {current!r}, older than {head!r}: "
            "run `al-loop db upgrade`"
        )


class Store:
    """The store of one workspace: an engine and a session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
