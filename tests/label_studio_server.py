"""Fixtures for tests against a real Label Studio and the backend as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import label_studio  # noqa: E402
from label_studio import free_port  # noqa: E402, F401  (one way to find a free port)

BACKEND_USER, BACKEND_PASSWORD = "ls-backend", "backend-pass-7d3f"


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("label-studio")
    # Local files are served from the media folder, so one image_root reads every export.
    server = label_studio.start(data_dir, files_root=data_dir / "media")
    yield server
    server.stop()


@dataclass
class BackendProcess:
    url: str
    env: dict
    log: Path
    process: subprocess.Popen

    @property
    def auth(self) -> tuple[str, str]:
        return BACKEND_USER, BACKEND_PASSWORD

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


def start_backend(env: dict, log: Path, timeout: float = 120) -> BackendProcess:
    """The backend as `make run` starts it (`python -m backend`), on env["PORT"]."""
    handle = open(log, "a")
    process = subprocess.Popen(
        [sys.executable, "-m", "backend"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("backend exited:\n" + log.read_text()[-3000:])
        try:
            if requests.get(f"{url}/health", timeout=1).json()["status"] == "UP":
                return BackendProcess(url, env, log, process)
        except requests.RequestException:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("backend did not come up:\n" + log.read_text()[-3000:])
