"""Shared fixtures: the real sample data, and a workspace on SQLite or on a throwaway
PostgreSQL server (store tests run against both)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from al_loop.workspace import init_workspace, open_store

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HKH_CLIP = SHARED_DATA / "lila_hkh" / "LE07_134040_20070922_clip.tif"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (it sits beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    from tests.postgres_server import postgres_or_fail

    server = postgres_or_fail()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.new_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def workspace(tmp_path, database_url):
    return init_workspace(tmp_path / "ws", database_url=database_url)


@pytest.fixture
def sqlite_workspace(tmp_path):
    """A workspace on the default embedded store, for tests that are not about the database."""
    return init_workspace(tmp_path / "ws")


@pytest.fixture
def store(workspace):
    store = open_store(workspace)
    yield store
    store.dispose()


def _label_studio(tmp_path_factory, legacy_tokens: bool):
    import os

    from backends.studio_process import LabelStudioNotInstalled, LabelStudioServer

    server = LabelStudioServer(document_root=tmp_path_factory.mktemp("ls-documents"))
    try:
        server.start()
    except LabelStudioNotInstalled as exc:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off"):
            pytest.fail(f"CI requires Label Studio: {exc}", pytrace=False)
        pytest.skip(str(exc))
    if not legacy_tokens:
        server.personal_access_token()
        server.disable_legacy_tokens()
    return server


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio 1.23.2 on loopback (backends/studio_process.py), serving a temp
    document root, as new organisations have it: legacy tokens off, clients use a personal
    access token. A missing install fails in CI (env CI set and truthy) and skips elsewhere."""
    server = _label_studio(tmp_path_factory, legacy_tokens=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def label_studio_legacy(tmp_path_factory):
    """The same, with a legacy token (older organisations and installs)."""
    server = _label_studio(tmp_path_factory, legacy_tokens=True)
    yield server
    server.stop()
