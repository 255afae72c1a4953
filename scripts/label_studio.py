"""A real Label Studio for tests and demos: installed into its own virtualenv (.venv-ls, reused
when present), started headless on a free loopback port with an admin user and a legacy API
token, and stopped by its process id.

    python scripts/label_studio.py install
    python scripts/label_studio.py start --data-dir /tmp/ls   # prints URL, token, pid
    python scripts/label_studio.py stop --pid 1234
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-ls"
USERNAME = "admin@example.com"
PASSWORD = "admin-password-1"
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


@dataclass
class LabelStudioServer:
    url: str
    token: str
    pid: int
    data_dir: Path
    process: subprocess.Popen | None = None

    def stop(self) -> None:
        stop(self.pid)
        if self.process is not None:
            self.process.wait(timeout=30)  # reap it: a zombie would keep its process group alive


def install() -> Path:
    """label-studio into .venv-ls (about 2 minutes the first time); returns its executable."""
    executable = VENV / "bin" / "label-studio"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "label-studio"], check=True)
    return executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    data_dir: str | Path, files_root: str | Path | None = None, port: int | None = None, timeout: float = 240
) -> LabelStudioServer:
    executable = install()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    Path(files_root or data_dir).mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_USERNAME": USERNAME,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root or data_dir),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    command = [str(executable), "start", "--no-browser", "--data-dir", str(data_dir)]
    command += ["--internal-host", "127.0.0.1", "--port", str(port)]
    log = open(data_dir / "label_studio.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}; see {data_dir / 'label_studio.log'}")
        try:
            if requests.get(f"{url}/health", timeout=2).json().get("status") == "UP":
                return LabelStudioServer(url, TOKEN, process.pid, data_dir, process)
        except (requests.RequestException, ValueError):
            pass
        time.sleep(1)
    stop(process.pid)
    raise TimeoutError(f"Label Studio did not answer /health within {timeout} s; see {data_dir / 'label_studio.log'}")


def upload_images(url: str, token: str, project_id: int, paths: list[Path]) -> int:
    """Import image files by upload, as the UI's "Import" does; returns the number of tasks."""
    # One form key per file: Label Studio keeps only the last file of a repeated key.
    files = {f"file{i}": (Path(p).name, Path(p).read_bytes(), "image/png") for i, p in enumerate(paths)}
    answer = requests.post(
        f"{url}/api/projects/{project_id}/import", headers={"Authorization": f"Token {token}"}, files=files, timeout=120
    )
    answer.raise_for_status()
    return answer.json()["task_count"]


def add_local_storage(client, project_id: int, folder: Path, title: str = "images") -> int:
    """A Local Storage connection over ``folder`` (under the served document root), synced:
    one task per image, with ``/data/local-files/?d=...`` URLs. Returns the storage id."""
    storage = client.import_storage.local.create(
        project=project_id, path=str(folder), regex_filter=r".*\.(png|jpe?g)", use_blob_urls=True, title=title
    )
    client.import_storage.local.sync(id=storage.id)
    return storage.id


def personal_access_token(url: str, token: str) -> str:
    """A new personal access token (a JWT refresh token) of the user that ``token`` belongs to."""
    answer = requests.post(f"{url}/api/token/", headers={"Authorization": f"Token {token}"}, timeout=30)
    answer.raise_for_status()
    return answer.json()["token"]


def stop(pid: int, timeout: float = 20) -> None:
    """Stop the server and its children (it runs in a session of its own)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies, exited but not reaped, do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install")
    starting = commands.add_parser("start")
    starting.add_argument("--data-dir", required=True)
    starting.add_argument("--files-root")
    starting.add_argument("--port", type=int)
    stopping = commands.add_parser("stop")
    stopping.add_argument("--pid", type=int, required=True)
    args = parser.parse_args()
    if args.command == "install":
        print(install())
    elif args.command == "start":
        server = start(args.data_dir, args.files_root, args.port)
        print(f"url={server.url} token={server.token} pid={server.pid} user={USERNAME} password={PASSWORD}")
    else:
        stop(args.pid)


if __name__ == "__main__":
    main()
