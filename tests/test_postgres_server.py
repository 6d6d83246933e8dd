"""Tests for the throwaway PostgreSQL server helper (tests/postgres_server.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.postgres_server import (
    PostgresBinariesNotFound,
    PostgresServer,
    PostgresUnavailable,
    postgres_or_fail,
)

pytestmark = pytest.mark.postgres


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _assert_pid_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_start_create_databases_roundtrip_stop():
    t0 = time.perf_counter()
    server = postgres_or_fail()
    start_s = time.perf_counter() - t0
    print(f"\nPostgresServer.start() took {start_s:.2f}s (port {server.port}, {server.bin_dir})")
    base_dir = server.base_dir
    assert base_dir is not None and base_dir.is_dir()
    try:
        assert server.url == f"postgresql+psycopg://alloop@127.0.0.1:{server.port}/alloop"
        pid = _postmaster_pid(server.data_dir)
        assert pid == server.pid

        t1 = time.perf_counter()
        urls = {name: server.new_database(name) for name in ("alpha", "beta")}
        print(f"two CREATE DATABASE took {time.perf_counter() - t1:.2f}s")
        assert urls["alpha"].endswith("/alpha") and urls["beta"].endswith("/beta")

        for name, url in urls.items():
            engine = create_engine(url)
            try:
                with engine.begin() as conn:
                    conn.execute(text("CREATE TABLE items (id serial PRIMARY KEY, label text)"))
                    conn.execute(
                        text("INSERT INTO items (label) VALUES (:a), (:b)"),
                        {"a": f"{name}-1", "b": f"{name}-2"},
                    )
                with engine.connect() as conn:
                    rows = conn.execute(text("SELECT id, label FROM items ORDER BY id")).all()
                    assert [tuple(r) for r in rows] == [(1, f"{name}-1"), (2, f"{name}-2")]
                    assert conn.execute(text("SELECT current_database()")).scalar() == name
                    assert conn.execute(text("SELECT current_user")).scalar() == "alloop"
            finally:
                engine.dispose()

        # databases are independent; the default one exists and is empty
        engine = create_engine(server.url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
    finally:
        server.stop()

    _assert_pid_gone(pid)
    assert not base_dir.exists()
    server.stop()  # idempotent


def test_context_manager_stops_and_cleans_up():
    try:
        server = PostgresServer()
        with server:
            base_dir = server.base_dir
            pid = server.pid
            with server.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    except PostgresBinariesNotFound:
        postgres_or_fail()  # skips outside CI, fails in CI
        raise
    _assert_pid_gone(pid)
    assert not base_dir.exists()


def test_startup_failure_raises_with_log_tail_and_cleans_up(tmp_path):
    server = PostgresServer(settings={"shared_buffers": "not-a-size"}, start_timeout=30)
    t0 = time.perf_counter()
    try:
        with pytest.raises(PostgresUnavailable) as excinfo:
            server.start()
    except PostgresBinariesNotFound:
        postgres_or_fail()
        raise
    elapsed = time.perf_counter() - t0
    message = str(excinfo.value)
    assert "server log tail" in message
    assert "shared_buffers" in message  # the server's own complaint, from the log
    assert elapsed < 20, f"startup failure took {elapsed:.1f}s to be detected"
    assert server.base_dir is None


def test_missing_binaries(tmp_path):
    with pytest.raises(PostgresBinariesNotFound):
        PostgresServer(bin_dir=tmp_path).start()


def test_postgres_or_fail_decision(monkeypatch, tmp_path):
    # Binaries absent: fail in CI, skip outside.
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI requires PostgreSQL"):
        postgres_or_fail(bin_dir=tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        postgres_or_fail(bin_dir=tmp_path)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        postgres_or_fail(bin_dir=tmp_path)
