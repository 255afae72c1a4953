"""The backend as a process, started as `make run` starts it (`python -m backend`) in a session
of its own, and stopped by its process group: for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BackendProcess:
    url: str
    env: dict
    log: Path
    process: subprocess.Popen
    auth: tuple[str, str] | None = None

    def get(self, path: str, **kwargs):
        return requests.get(self.url + path, auth=self.auth, timeout=30, **kwargs)

    def post(self, path: str, **kwargs):
        return requests.post(self.url + path, auth=self.auth, timeout=30, **kwargs)

    def kill(self) -> None:
        """SIGKILL to the server and its worker, as when a machine loses the process."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to the server and its worker (gunicorn shuts down gracefully)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def start_backend(env: dict, log: Path, timeout: float = 180) -> BackendProcess:
    """`python -m backend` with ``env`` on top of this process's environment, on
    ``env["PORT"]`` (and ``env["HOST"]``, default 127.0.0.1); returns once /health answers."""
    handle = open(log, "a")
    process = subprocess.Popen(
        [sys.executable, "-m", "backend"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{env.get('HOST', '127.0.0.1')}:{env['PORT']}"
    user, password = env.get("BASIC_AUTH_USER"), env.get("BASIC_AUTH_PASS")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the backend exited:\n{Path(log).read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=1).json()["status"] == "UP":
                return BackendProcess(url, env, Path(log), process, (user, password) if user else None)
        except (requests.RequestException, ValueError):
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"the backend did not answer /health within {timeout} s:\n{Path(log).read_text()[-3000:]}")
