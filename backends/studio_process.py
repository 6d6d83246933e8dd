"""A real Label Studio 1.23.2 server on loopback, for the test suite and the demo.

Usage::

    with LabelStudioServer(document_root=images_dir) as ls:
        client = LabelStudio(base_url=ls.url, api_key=ls.api_key)

Label Studio is installed apart from the project, in ``.ls-venv/`` by
``scripts/install-label-studio.sh`` (it pins packages that clash with ours); the executable can
be overridden with ``AL_LOOP_LABEL_STUDIO_BIN``.

Data dir: without ``data_dir`` each server gets a fresh copy of a migrated template in its own
temp dir, removed by ``stop()``. Migrating an empty data dir takes about a minute, a copy starts
in about 5 s. The template is built once, with ``label-studio version`` (it migrates and exits),
and cached in ``.cache/label-studio-1.23.2-template/``; it holds no user, organization or token:
Label Studio creates the user from LABEL_STUDIO_USERNAME / PASSWORD / USER_TOKEN on the first
start of each copy, so every server can have its own credentials.

With ``data_dir`` (the demo) the dir is kept (a new one starts as a copy of the template). Label
Studio applies the credentials only when it creates the user, on the first start; on later starts
an existing user keeps its password and token whatever the environment says. So the credentials used on the first start
are saved in ``<data_dir>/al-loop-credentials.json`` and reused; asking for other ones is an error.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

LABEL_STUDIO_VERSION = "1.23.2"
HOST = "127.0.0.1"
DEFAULT_USERNAME = "admin@al-loop.local"
REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-label-studio.sh"
CACHE_DIR = REPO_ROOT / ".cache"
TEMPLATE_DIR = CACHE_DIR / f"label-studio-{LABEL_STUDIO_VERSION}-template"
CREDENTIALS_FILE = "al-loop-credentials.json"
PID_FILE = "al-loop-label-studio.pid"  # in a persistent data dir: the server last started on it

_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.25
_PORT_ATTEMPTS = 3
_STOP_GRACE_S = 10.0
_TEMPLATE_TIMEOUT_S = 600.0
# Label Studio's get_env(NAME) also reads the bare NAME (and HEARTEX_NAME): drop those from the
# inherited environment so that e.g. a USERNAME or PORT of the caller's shell cannot leak in.
_UNPREFIXED = {
    "USERNAME", "PASSWORD", "USER_TOKEN", "HOST", "PORT",
    "BASE_DATA_DIR", "DATABASE_NAME", "DJANGO_DB",
}


class LabelStudioUnavailable(RuntimeError):
    """Label Studio could not be started (the message includes the log tail)."""


class LabelStudioNotInstalled(LabelStudioUnavailable):
    """The label-studio executable is missing."""


def find_label_studio() -> Path:
    """``AL_LOOP_LABEL_STUDIO_BIN`` if set, else ``.ls-venv/bin/label-studio``."""
    override = os.environ.get("AL_LOOP_LABEL_STUDIO_BIN")
    exe = Path(override) if override else REPO_ROOT / ".ls-venv" / "bin" / "label-studio"
    if not os.access(exe, os.X_OK):
        source = "AL_LOOP_LABEL_STUDIO_BIN" if override else "the default location"
        raise LabelStudioNotInstalled(
            f"Label Studio executable not found at {exe} ({source}); "
            f"install Label Studio {LABEL_STUDIO_VERSION} with: bash {INSTALL_SCRIPT}"
        )
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _base_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "HEARTEX_")) and k not in _UNPREFIXED
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        # ML backends and webhooks on loopback are refused ("reserved network address") otherwise
        USE_DEFAULT_BANNED_SUBNETS="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LATEST_VERSION_CHECK="false",
    )
    return env


def _tail(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:])


def ensure_template(exe: Path) -> Path:
    """The migrated template data dir, built once (about a minute) and cached.

    Built in a temp dir beside it and renamed into place, so a half-built template is never
    used; an flock serialises concurrent builders (e.g. pytest-xdist workers), and whoever
    holds it removes what a killed builder left behind.
    """
    if TEMPLATE_DIR.is_dir():
        return TEMPLATE_DIR
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{TEMPLATE_DIR.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if TEMPLATE_DIR.is_dir():
            return TEMPLATE_DIR
        for stale in glob.glob(f"{TEMPLATE_DIR}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f"{TEMPLATE_DIR.name}.building-", dir=CACHE_DIR))
        try:
            data_dir, log_path = building / "data", building / "build.log"
            data_dir.mkdir()
            # `label-studio version` applies the migrations, prints the version and exits; with
            # no LABEL_STUDIO_USERNAME/PASSWORD it creates no user.
            with open(log_path, "wb") as log:
                proc = subprocess.run(
                    [str(exe), "version"],
                    env=_base_env(data_dir, building),
                    cwd=building,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=_TEMPLATE_TIMEOUT_S,
                )
            log_text = log_path.read_text(errors="replace")
            if proc.returncode != 0 or f"Label Studio version: {LABEL_STUDIO_VERSION}" not in log_text:
                raise LabelStudioUnavailable(
                    f"building the Label Studio template failed (exit {proc.returncode}, "
                    f"expected version {LABEL_STUDIO_VERSION}; run bash {INSTALL_SCRIPT}): "
                    f"{exe} version\n--- log tail ({log_path}) ---\n{_tail(log_path)}"
                )
            os.rename(data_dir, TEMPLATE_DIR)
        except subprocess.TimeoutExpired:
            raise LabelStudioUnavailable(
                f"building the Label Studio template took over {_TEMPLATE_TIMEOUT_S}s\n"
                f"--- log tail ---\n{_tail(building / 'build.log')}"
            ) from None
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return TEMPLATE_DIR


class LabelStudioServer:
    """A Label Studio process on ``127.0.0.1``; a context manager."""

    def __init__(
        self,
        document_root: Path,
        *,
        data_dir: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        port: int | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        """``document_root``: the folder served through Local Files storage.
        ``data_dir``: a persistent data dir (default: a fresh temp copy of the template).
        ``username`` (an email), ``password``, ``api_key`` (the legacy token, sent as
        ``Authorization: Token <key>``): default ``admin@al-loop.local`` and random ones, or,
        for a ``data_dir`` used before, the ones saved there.
        ``port``: default a free loopback port."""
        self.document_root = Path(document_root).resolve()
        self.persistent_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.start_timeout = start_timeout
        self._asked_port = port
        self._credentials = {"username": username, "password": password, "api_key": api_key}
        self._pat: str | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self._temp_dir: Path | None = None  # owned: removed by stop()
        self._process: subprocess.Popen | None = None

    # -- what clients need ---------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("LabelStudioServer is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def username(self) -> str:
        return self._require_credential("username")

    @property
    def password(self) -> str:
        return self._require_credential("password")

    @property
    def api_key(self) -> str:
        return self._require_credential("api_key")

    def _require_credential(self, name: str) -> str:
        value = self._credentials[name]
        if value is None:
            raise RuntimeError(f"LabelStudioServer is not started: {name} not settled yet")
        return value

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> LabelStudioServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LabelStudioServer:
        if self._process is not None:
            raise RuntimeError("LabelStudioServer already started")
        exe = find_label_studio()
        atexit.register(self.stop)
        try:
            if self.persistent_data_dir is None:
                template = ensure_template(exe)
                self._temp_dir = Path(tempfile.mkdtemp(prefix="alloop-ls-"))
                data_dir = self.data_dir = self._temp_dir / "data"
                shutil.copytree(template, data_dir, symlinks=True)
                log_path = self.log_path = self._temp_dir / "label-studio.log"
                self._settle_credentials(saved=None)
            else:
                data_dir = self.data_dir = self.persistent_data_dir
                if not data_dir.exists():  # a first start: begin migrated, like the copies
                    shutil.copytree(ensure_template(exe), data_dir, symlinks=True)
                log_path = self.log_path = data_dir / "label-studio.log"
                self._settle_persistent_credentials(data_dir)
            attempts = 1 if self._asked_port is not None else _PORT_ATTEMPTS
            for attempt in range(1, attempts + 1):
                port = self.port = self._asked_port or free_port()
                try:
                    self._launch(exe, data_dir, log_path, port)
                    break
                except _PortTaken:
                    if attempt == attempts:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after a grace period) and remove
        the temp dir when this server owns it. Idempotent."""
        atexit.unregister(self.stop)
        try:
            self._terminate()
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None
            self.port = None

    # -- internals -----------------------------------------------------------------------
    def _settle_credentials(self, saved: dict[str, str] | None) -> None:
        defaults = saved or {
            "username": DEFAULT_USERNAME,
            "password": secrets.token_urlsafe(16),
            "api_key": secrets.token_hex(20),
        }
        for name, value in self._credentials.items():
            if value is None:
                self._credentials[name] = defaults[name]
            elif saved is not None and value != saved[name]:
                raise ValueError(
                    f"{name} differs from the one Label Studio's user was created with in "
                    f"{self.data_dir} (see {CREDENTIALS_FILE} there): Label Studio applies "
                    "credentials only on the first start of a data dir"
                )

    def _settle_persistent_credentials(self, data_dir: Path) -> None:
        path = data_dir / CREDENTIALS_FILE
        saved = json.loads(path.read_text()) if path.exists() else None
        self._settle_credentials(saved)
        if saved is None:
            # written before the first start, so a start that fails half-way is retried with the
            # same credentials
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self._credentials, f, indent=2)

    def _launch(self, exe: Path, data_dir: Path, log_path: Path, port: int) -> None:
        if self.persistent_data_dir is not None:
            self._stop_orphan(data_dir)
        if port_in_use(port):
            raise _PortTaken(f"port {port} is in use by another program (another Label Studio?)")
        env = _base_env(data_dir, self.document_root)
        env.update(
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.api_key,
        )
        # --debug: in 1.23.2 its only effect is that a busy port is an error ("That port is
        # already in use.") instead of a silent move to the next free port.
        args = [
            str(exe), "start", "--no-browser", "--debug",
            "--internal-host", HOST, "-p", str(port),
        ]
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = self._process = subprocess.Popen(
                args,
                env=env,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals all of it
            )
        self.pid = process.pid
        if self.persistent_data_dir is not None:
            (data_dir / PID_FILE).write_text(str(self.pid))
        self._wait_ready(process, log_path, log_offset)

    def _wait_ready(self, process: subprocess.Popen, log_path: Path, log_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        health = f"{self.url}/health"
        while True:
            code = process.poll()
            if code is not None:
                log = _tail(log_path, log_offset)
                self._terminate()
                if "That port is already in use" in log:
                    raise _PortTaken(self._failure(f"port {self.port} was taken", log))
                raise self._failure(f"label-studio exited with code {code} during startup", log)
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        if self._answers_as_ours():
                            return
                        log = _tail(log_path, log_offset)
                        self._terminate()
                        raise _PortTaken(self._failure(f"another server answers on port {self.port}", log))
            except (urllib.error.URLError, http.client.HTTPException, OSError):
                pass
            if time.monotonic() >= deadline:
                log = _tail(log_path, log_offset)
                self._terminate()
                raise self._failure(f"no 200 from {health} after {self.start_timeout}s", log)
            time.sleep(_POLL_INTERVAL_S)

    def _answers_as_ours(self) -> bool:
        """Whether the server on our port knows our user (a foreign one, started earlier on the
        same port, does not), and our process still runs."""
        if self._process is None or self._process.poll() is not None:
            return False
        request = urllib.request.Request(f"{self.url}/api/current-user/whoami",
                                         headers={"Authorization": f"Token {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read()).get("email") == self.username
        except urllib.error.HTTPError as exc:
            # Legacy tokens switched off for this organisation: our user still answers the login page.
            return exc.code == 401 and b"legacy token authentication has been disabled" in exc.read()
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            return False

    def _stop_orphan(self, data_dir: Path) -> None:
        """Stop a Label Studio an earlier run left on this data dir (its process was killed
        before it could stop it), so that it does not keep the port."""
        path = data_dir / PID_FILE
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            command = b""
        if b"label-studio" in command:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                deadline = time.monotonic() + _STOP_GRACE_S
                while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                    time.sleep(_POLL_INTERVAL_S)
        path.unlink(missing_ok=True)

    # -- personal access tokens ------------------------------------------------------------
    def personal_access_token(self) -> str:
        """A personal access token of our user (created once, then the same), as a new
        organisation's users make them: log in, then ``POST /api/token/``."""
        if self._pat:
            return self._pat
        import httpx

        with httpx.Client(base_url=self.url, timeout=30, follow_redirects=False) as session:
            session.get("/user/login/")
            form = {"csrfmiddlewaretoken": session.cookies.get("csrftoken", ""), "email": self.username,
                    "password": self.password}
            login = session.post("/user/login/", data=form, headers={"Referer": f"{self.url}/user/login/"})
            if login.status_code != 302:
                raise LabelStudioUnavailable(f"cannot log in to {self.url} as {self.username}: {login.status_code}")
            created = session.post("/api/token/", headers={"X-CSRFToken": session.cookies.get("csrftoken") or "",
                                                           "Referer": f"{self.url}/"})
            if created.status_code != 201:
                raise LabelStudioUnavailable(f"no personal access token from {self.url}: {created.status_code} "
                                             f"{created.text[:200]}")
        self._pat = created.json()["token"]
        return self._pat

    def access_token(self) -> str:
        """A short-lived access token (5 min) from the personal access token, for ``Bearer``."""
        import httpx

        answer = httpx.post(f"{self.url}/api/token/refresh/", json={"refresh": self.personal_access_token()},
                            timeout=30)
        answer.raise_for_status()
        return answer.json()["access"]

    def disable_legacy_tokens(self) -> None:
        """Turn legacy tokens off for the organisation, as new Label Studio organisations have them."""
        import httpx

        answer = httpx.post(f"{self.url}/api/jwt/settings", json={"legacy_api_tokens_enabled": False},
                            headers={"Authorization": f"Bearer {self.access_token()}"}, timeout=30)
        if answer.status_code != 200 or answer.json().get("legacy_api_tokens_enabled") is not False:
            raise LabelStudioUnavailable(f"legacy tokens could not be disabled: {answer.status_code} "
                                         f"{answer.text[:200]}")

    def _terminate(self) -> None:
        process, self._process, self.pid = self._process, None, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=_STOP_GRACE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise RuntimeError(f"label-studio pid {process.pid} survived SIGKILL")

    def _failure(self, what: str, log: str) -> LabelStudioUnavailable:
        return LabelStudioUnavailable(
            f"Label Studio failed to start: {what}\n"
            f"data dir: {self.data_dir}, port: {self.port}\n"
            f"--- log tail ({self.log_path}) ---\n{log or '(empty)'}"
        )


class _PortTaken(LabelStudioUnavailable):
    pass


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0
