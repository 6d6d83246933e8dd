"""Creating a workspace and opening its store."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy.engine import make_url

from al_loop.config import CONFIG_FILE, Config, Workspace, apply_profile, detect_profile, open_workspace, write_config
from db.session import Store, check_schema, upgrade


def init_workspace(root: Path | str | None = None, database_url: str | None = None,
                   profile: str | None = None) -> Workspace:
    """Create the folder and its configuration (kept if present), then bring the database
    schema to head. Safe to run again. A new configuration is sized for ``profile`` (``cpu``
    or ``cuda``; default: ``cuda`` when torch sees a GPU)."""
    workspace = open_workspace(root)
    workspace.root.mkdir(parents=True, exist_ok=True)
    if not (workspace.root / CONFIG_FILE).exists():
        profile = profile or detect_profile()
        config = apply_profile(Config(), profile)
        if database_url:
            config.database.url = database_url
        # Secrets the backend checks; generated here so that no two workspaces share them.
        config.backend.password = secrets.token_urlsafe(18)
        config.backend.webhook_secret = secrets.token_urlsafe(24)
        write_config(workspace.root, config, profile)
        workspace = open_workspace(workspace.root)
    store = Store(workspace.database_url)
    try:
        upgrade(store.engine)
    finally:
        store.dispose()
    return workspace


def open_store(workspace: Workspace) -> Store:
    """The workspace's store, refusing a database that is not at this al-loop's schema."""
    if not (workspace.root / CONFIG_FILE).exists() and not workspace.config.database.url:
        raise FileNotFoundError(
            f"{workspace.root} is not an al-loop workspace (no {CONFIG_FILE}): run `al-loop init` first"
        )
    url = make_url(workspace.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        # Connecting would create an empty database: a reading command must change nothing.
        raise FileNotFoundError(f"no al-loop database at {url.database}: run `al-loop init {workspace.root}` first")
    store = Store(workspace.database_url)
    try:
        check_schema(store.engine)
    except Exception:
        store.dispose()
        raise
    return store
