"""A throwaway PostgreSQL server for the test suite.

Usage (e.g. in ``tests/conftest.py``)::

    import pytest
    from postgres_server import postgres_or_fail

    @pytest.fixture(scope="session")
    def postgres_server():
        server = postgres_or_fail()      # started; fails in CI, may skip locally
        yield server
        server.stop()

    @pytest.fixture
    def postgres_url(postgres_server, request):
        return postgres_server.new_database(unique_name_for(request))

or directly::

    with PostgresServer() as server:
        url = server.new_database("case_1")   # postgresql+psycopg://alloop@127.0.0.1:PORT/case_1

Each server gets its own fresh temp dir (data dir, unix socket dir, log file),
listens on a free loopback port with ``trust`` auth and superuser ``alloop``,
and runs with durability switched off (fsync/full_page_writes/synchronous_commit).
When the current process is root, initdb/pg_ctl/postgres run as the unprivileged
``postgres`` system user (PostgreSQL refuses to run as root) and the temp dir is
chowned to it.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "alloop"
DEFAULT_DATABASE = "alloop"
HOST = "127.0.0.1"

# Settings written into postgresql.conf after initdb; ``settings=`` overrides/extends them.
DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": HOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "50",
    "max_wal_senders": "0",
    "wal_level": "minimal",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "lc_messages": "C",
    "timezone": "UTC",
}

_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.02
_PORT_ATTEMPTS = 3
_ZOMBIE_GRACE_S = 5.0
_REQUIRED = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    """The throwaway server could not be started (message includes the log tail)."""


class PostgresBinariesNotFound(PostgresUnavailable):
    """No PostgreSQL server binaries (initdb, pg_ctl, postgres) were found."""


def _is_ci() -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def find_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres.

    ``pg_config --bindir`` when pg_config is on PATH (and that dir really has the
    server binaries: Debian's /usr/bin/pg_config belongs to libpq-dev and may
    point at a version whose server is not installed), else the highest
    ``/usr/lib/postgresql/<version>/bin``.
    """
    def complete(d: Path) -> bool:
        return all(os.access(d / exe, os.X_OK) for exe in _REQUIRED)

    tried: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{pg_config} --bindir failed: {exc}")
        else:
            if out and complete(Path(out)):
                return Path(out)
            tried.append(f"{pg_config} --bindir -> {out!r} (no server binaries there)")

    def version_key(d: str) -> tuple[int, ...]:
        name = Path(d).parent.name
        return tuple(int(p) for p in re.findall(r"\d+", name)) or (-1,)

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    for d in candidates:
        if complete(Path(d)):
            return Path(d)
    tried.append(f"/usr/lib/postgresql/*/bin -> {candidates or 'nothing'}")
    raise PostgresBinariesNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
        + "; ".join(tried)
        + ". Install them with .ci/install-postgres.sh (Debian: apt-get install postgresql)."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _set_child_subreaper(on: bool) -> bool | None:
    """Linux PR_SET_CHILD_SUBREAPER on this process; returns the previous value, or None
    when unsupported. Used while pg_ctl runs so that the postmaster it forks (and then
    orphans) is re-parented to us rather than to PID 1, letting stop() reap it at once:
    some container inits reap orphans only every second or so, and when pytest itself is
    PID 1 (docker without --init) nothing else would ever reap it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prev = ctypes.c_int(0)
        if libc.prctl(37, ctypes.byref(prev), 0, 0, 0) != 0:  # PR_GET_CHILD_SUBREAPER
            return None
        if libc.prctl(36, int(on), 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return None
        return bool(prev.value)
    except (OSError, AttributeError):
        return None


def _reap(pid: int) -> None:
    """waitpid(pid, WNOHANG) if it is our child (see _set_child_subreaper)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    children = []
    for stat_file in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(Path(stat_file).parent.name))
    return children


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _traversable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Can (uid, gids) search every directory from / down to ``path``?"""
    path = path.resolve()
    for d in [*reversed(path.parents), path]:
        st = d.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class PostgresServer:
    """A throwaway PostgreSQL cluster in a fresh temp dir; a context manager."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        settings: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        os_user: str = "postgres",
    ) -> None:
        """``base_dir``: parent of the temp dir (default: the system temp dir).
        ``bin_dir``: PostgreSQL bin dir (default: :func:`find_bindir`).
        ``settings``: extra/overriding postgresql.conf settings.
        ``os_user``: system user that runs the server when we are root."""
        self._base_parent = Path(base_dir) if base_dir is not None else None
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.os_user = os_user
        self.user = SUPERUSER
        self.host = HOST
        self.port: int | None = None
        self.database = DEFAULT_DATABASE
        self.base_dir: Path | None = None  # the temp dir; removed by stop()
        self.pid: int | None = None  # postmaster pid once started
        self._run_as: pwd.struct_passwd | None = None
        self._log_offset = 0

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self._require_base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._require_base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._require_base() / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bindir()
        missing = [exe for exe in _REQUIRED if not os.access(self._bin_dir / exe, os.X_OK)]
        if missing:
            raise PostgresBinariesNotFound(
                f"PostgreSQL bin dir {self._bin_dir} lacks {', '.join(missing)}"
            )
        return self._bin_dir

    def _require_base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PostgresServer is not started")
        return self.base_dir

    # -- URLs ----------------------------------------------------------------------------
    def url_for(self, database: str) -> str:
        if self.port is None:
            raise RuntimeError("PostgresServer is not started")
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of the database created by start()."""
        return self.url_for(self.database)

    def connect(self, database: str = "postgres", **kwargs) -> psycopg.Connection:
        """A raw psycopg connection (no password: trust auth)."""
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database, **kwargs
        )

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        if self.pid is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        if self.base_dir is not None:
            raise RuntimeError("PostgresServer already started")
        bin_dir = self.bin_dir  # raises PostgresBinariesNotFound
        try:
            self._make_base_dir()
            self._initdb(bin_dir)
            last_error: PostgresUnavailable | None = None
            for _ in range(_PORT_ATTEMPTS):
                self.port = _free_port()
                try:
                    self._start_server(bin_dir)
                    break
                except _PortTaken as exc:  # lost the race for the port: pick another
                    last_error = exc
            else:
                assert last_error is not None
                raise PostgresUnavailable(str(last_error))
            self.new_database(self.database)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def new_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its SQLAlchemy URL."""
        with self.connect("postgres", autocommit=True) as conn:
            stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if conn.info.server_version >= 150000:
                # PG 15's default WAL_LOG strategy pushes template1 through the WAL
                # (~0.2s); FILE_COPY is ~5x faster and its checkpoint is cheap with fsync=off.
                stmt = sql.SQL("{} STRATEGY FILE_COPY").format(stmt)
            conn.execute(stmt)
        return self.url_for(name)

    def stop(self) -> None:
        """pg_ctl stop -m immediate; make sure the postmaster is gone; remove the temp dir.
        Idempotent."""
        atexit.unregister(self.stop)
        base = self.base_dir
        if base is None:
            return
        pid = self._read_pid() or self.pid
        try:
            pg_ctl_ok = False
            if pid is not None or (self.data_dir / "postmaster.pid").exists():
                try:
                    proc = self._run(
                        [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir),
                         "-m", "immediate", "-w", "-t", "10"],
                        timeout=20,
                    )
                    pg_ctl_ok = proc.returncode == 0
                except (OSError, subprocess.SubprocessError):
                    pass  # fall through to signalling by pid
            if pid is not None:
                if not pg_ctl_ok and _pid_alive(pid):
                    _signal(pid, signal.SIGQUIT)  # what pg_ctl -m immediate sends
                if not self._wait_gone(pid, 10.0):
                    # backends setsid() themselves, so killpg would miss them: kill each one
                    for child in _children_of(pid):
                        _signal(child, signal.SIGKILL)
                    _signal(pid, signal.SIGKILL)
                    if not self._wait_gone(pid, 10.0):
                        raise RuntimeError(f"postmaster pid {pid} survived SIGKILL")
        finally:
            shutil.rmtree(base, ignore_errors=True)
            self.base_dir = None
            self.pid = None
            self.port = None

    # -- internals -----------------------------------------------------------------------
    def _make_base_dir(self) -> None:
        parent = self._base_parent or Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, but there is no {self.os_user!r} system user to run "
                    "PostgreSQL as (it refuses to run as root); install the postgresql package "
                    "or run the tests as a non-root user"
                ) from None
            gids = {self._run_as.pw_gid} | {
                g for g in os.getgrouplist(self.os_user, self._run_as.pw_gid)
            }
            if not _traversable_by(parent, self._run_as.pw_uid, gids):
                raise PostgresUnavailable(
                    f"{parent} is not traversable by the {self.os_user!r} user that runs the "
                    "server; use a base_dir under /tmp (or chmod o+x its ancestors)"
                )
        self.base_dir = Path(tempfile.mkdtemp(prefix="alloop-pg-", dir=parent))
        self.socket_dir.mkdir()
        if self._run_as is not None:
            os.chmod(self.base_dir, 0o755)
            for p in (self.base_dir, self.socket_dir):
                os.chown(p, self._run_as.pw_uid, self._run_as.pw_gid)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._run_as is not None:
            env.update(HOME=str(self.base_dir), USER=self.os_user, LOGNAME=self.os_user)
        return env

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        kwargs = {}
        if self._run_as is not None:
            kwargs = dict(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        return subprocess.run(
            args,
            cwd=self.base_dir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def _initdb(self, bin_dir: Path) -> None:
        args = [
            str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
        ]
        try:
            proc = self._run(args, timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise PostgresUnavailable(f"initdb timed out after {exc.timeout}s: {args}") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise PostgresUnavailable(
                f"initdb failed (exit {proc.returncode}): {' '.join(args)}\n--- output ---\n{tail}"
            )
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\n# --- throwaway test server (tests/postgres_server.py) ---\n")
            for key, value in self.settings.items():
                f.write(f"{key} = '{value}'\n")
            f.write(f"unix_socket_directories = '{self.socket_dir}'\n")

    def _start_server(self, bin_dir: Path) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            str(bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path),
            "-W",  # don't let pg_ctl wait: we poll a real connection below
            "-o", f"-p {self.port}",
        ]
        prev_subreaper = _set_child_subreaper(True)
        try:
            proc = self._run(args, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise self._failure(f"pg_ctl start timed out after {exc.timeout}s") from None
        finally:
            if prev_subreaper is False:
                _set_child_subreaper(False)
        if proc.returncode != 0:
            raise self._failure(
                f"pg_ctl start failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}"
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_exc: Exception | None = None
        seen_pid: int | None = None
        while True:
            try:
                with psycopg.connect(
                    host=self.host, port=self.port, user=self.user, dbname="postgres",
                    connect_timeout=2,
                ) as conn:
                    conn.execute("SELECT 1")
                self.pid = self._read_pid()
                return
            except psycopg.OperationalError as exc:
                last_exc = exc
            pid = self._read_pid()
            if pid is not None:
                seen_pid = pid
            dead = (seen_pid is not None and not _pid_alive(seen_pid)) or (
                pid is None and re.search(r"\b(FATAL|PANIC):", self._log_tail())
            )
            if dead:
                log = self._log_tail()
                if "could not create any TCP/IP sockets" in log or "Address already in use" in log:
                    raise _PortTaken(self._failure(f"port {self.port} was taken"))
                raise self._failure("the server exited during startup")
            if time.monotonic() >= deadline:
                raise self._failure(
                    f"not accepting connections after {self.start_timeout}s "
                    f"(last error: {last_exc})"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _read_pid(self) -> int | None:
        if self.base_dir is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        """Wait until ``pid`` is dead; True if so. Once dead, give whoever is its parent a
        bounded grace period to reap the zombie, so that the pid is really gone."""
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL_S)
        reap_deadline = time.monotonic() + _ZOMBIE_GRACE_S
        while time.monotonic() < reap_deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(_POLL_INTERVAL_S)
            _reap(pid)
        return True

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])

    def _failure(self, what: str) -> PostgresUnavailable:
        return PostgresUnavailable(
            f"PostgreSQL test server failed to start: {what}\n"
            f"bin dir: {self._bin_dir}, data dir: {self.data_dir}, port: {self.port}\n"
            f"--- server log tail ({self.log_path}) ---\n{self._log_tail() or '(empty)'}"
        )


class _PortTaken(PostgresUnavailable):
    pass


def postgres_or_fail(**kwargs) -> PostgresServer:
    """Start a :class:`PostgresServer` for pytest, or fail/skip the requesting test.

    In CI (env ``CI`` set and truthy) any failure is ``pytest.fail``. Outside CI,
    missing server binaries are ``pytest.skip``; any other failure still fails.
    """
    import pytest

    try:
        return PostgresServer(**kwargs).start()
    except PostgresBinariesNotFound as exc:
        if _is_ci():
            pytest.fail(f"CI requires PostgreSQL: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL not available (set CI=true to make this a failure): {exc}")
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
