"""`al-loop demo` as people run it: another program on Label Studio's port, and a demo stopped by
SIGTERM (a closed terminal, a process manager) that must not leave its Label Studio behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from al_loop.workspace import init_workspace, open_store
from backends.demo import LABEL_STUDIO_PORT, DemoState, run_live
from backends.studio_process import HOST, free_port, port_in_use

RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from al_loop.workspace import init_workspace, open_store
    from backends.demo import DemoState, run_live
    ws = init_workspace(Path(sys.argv[1]))
    run_live(DemoState(ws, open_store(ws)), None, lambda message: print(message, flush=True))
    print("demo ended", flush=True)
""")


def test_an_explicit_port_in_use_is_refused_clearly(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"--port {port} is in use by another program"):
            run_live(DemoState(ws, open_store(ws)), port, print)
    assert not (ws.root / "label-studio").exists()  # nothing started


def test_the_demo_moves_off_a_taken_port_and_sigterm_stops_its_label_studio(tmp_path, label_studio_legacy):
    busy = None
    if not port_in_use(LABEL_STUDIO_PORT):  # another program on 8080
        busy = socket.socket()
        busy.bind((HOST, LABEL_STUDIO_PORT))
        busy.listen()
    env = {**os.environ, "AL_LOOP_BACKEND_PORT": str(free_port())}
    demo = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / "ws")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any("press Ctrl-C" in line for line in lines):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
        output = "".join(lines)
        assert "press Ctrl-C" in output, output
        assert f"port {LABEL_STUDIO_PORT} is in use by another program" in output
        port = int(re.search(r"Label Studio: http://127\.0\.0\.1:(\d+)/projects/", output).group(1))
        assert port != LABEL_STUDIO_PORT and port_in_use(port)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0 and "demo ended" in demo.stdout.read()
        deadline = time.monotonic() + 30
        while port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_in_use(port)  # its Label Studio stopped with it
    finally:
        if demo.poll() is None:
            demo.kill()
        if busy is not None:
            busy.close()
