"""Fixtures for tests against a real Label Studio and the backend as a process."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import label_studio
from scripts.backend_process import BackendProcess, start_backend  # noqa: F401
from scripts.label_studio import free_port  # noqa: F401 (one way to find a free port)

ROOT = Path(__file__).resolve().parent.parent
BACKEND_USER, BACKEND_PASSWORD = "ls-backend", "backend-pass-7d3f"


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("label-studio")
    # Local files are served from the media folder, so one image_root reads every export.
    server = label_studio.start(data_dir, files_root=data_dir / "media")
    yield server
    server.stop()
