"""The Label Studio harness against a real Label Studio 1.23.2 server (no mocks).

Server starts are kept few: the session fixture ``label_studio`` (conftest.py), one persistent
data dir started twice, and one start that finds its port busy."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import urllib.error
import urllib.request

import pytest
from label_studio_sdk.client import LabelStudio

from backends.studio_process import (
    CREDENTIALS_FILE,
    HOST,
    TEMPLATE_DIR,
    LabelStudioServer,
    LabelStudioUnavailable,
    free_port,
)


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((HOST, port)) == 0


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_health_on_loopback(label_studio):
    assert label_studio.url == f"http://{HOST}:{label_studio.port}"
    assert _status(f"{label_studio.url}/health") == 200


def test_api_with_a_legacy_token(label_studio_legacy):
    client = LabelStudio(base_url=label_studio_legacy.url, api_key=label_studio_legacy.api_key)
    project = client.projects.create(title="harness check", label_config="<View></View>")
    assert project.id in [p.id for p in client.projects.list()]


def test_wrong_token_is_refused(label_studio_legacy):
    assert _status(f"{label_studio_legacy.url}/api/projects", label_studio_legacy.api_key) == 200
    assert _status(f"{label_studio_legacy.url}/api/projects", "0" * 40) == 401
    assert _status(f"{label_studio_legacy.url}/api/projects") == 401


def test_a_new_organisation_takes_personal_access_tokens_only(label_studio):
    """As new Label Studio organisations are: the legacy token is refused, the personal access
    token works through the SDK (which exchanges it for access tokens itself)."""
    assert _status(f"{label_studio.url}/api/projects", label_studio.api_key) == 401
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.personal_access_token())
    assert client.users.whoami().email == label_studio.username
    assert label_studio.personal_access_token() == label_studio.personal_access_token()  # one token


def test_persistent_data_dir_keeps_credentials_and_stop_cleans_up(label_studio, tmp_path):
    data_dir = tmp_path / "ls-data"
    shutil.copytree(TEMPLATE_DIR, data_dir)  # skips the minute of migrations
    port = free_port()

    first = LabelStudioServer(document_root=tmp_path, data_dir=data_dir, port=port)
    with first:
        assert first.port == port
        assert _status(f"http://{HOST}:{port}/health") == 200
        assert _status(f"{first.url}/api/projects", first.api_key) == 200
        pid = first.pid
    assert not _port_open(port)
    assert _pid_gone(pid)
    first.stop()  # idempotent
    assert json.loads((data_dir / CREDENTIALS_FILE).read_text())["api_key"] == first.api_key

    with pytest.raises(ValueError, match="api_key differs"):
        LabelStudioServer(document_root=tmp_path, data_dir=data_dir, api_key="f" * 40).start()

    # A run killed before it could stop its Label Studio (kill -9 of the demo) leaves it running
    # on the port: the next start on the same data dir stops that orphan first.
    orphan = LabelStudioServer(document_root=tmp_path, data_dir=data_dir, port=port).start()
    orphan_pid = orphan.pid
    atexit.unregister(orphan.stop)
    orphan._process = None  # forgotten, as by a dead parent
    assert _port_open(port)

    # Label Studio ignores new credentials for an existing user: the saved ones must be reused.
    with LabelStudioServer(document_root=tmp_path, data_dir=data_dir, port=port) as second:
        assert _pid_gone(orphan_pid)
        assert (second.username, second.password, second.api_key) == (
            first.username, first.password, first.api_key,
        )
        assert _status(f"{second.url}/api/projects", second.api_key) == 200
    assert data_dir.is_dir()


def test_busy_port_is_an_error_and_cleans_up(label_studio, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LabelStudioServer(document_root=tmp_path, port=port)
        with pytest.raises(LabelStudioUnavailable, match=f"port {port} is in use by another program"):
            server.start()
    assert server.pid is None
    assert not server.data_dir.exists()  # its temp copy of the template is gone
