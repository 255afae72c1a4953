"""Shared fixtures: generated images with known objects, a local image server, one shared
detector (untrained) and one CPU-preset checkpoint trained once per session."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCH_HOME", str(ROOT / "data" / "torch_home"))
# No usage telemetry from the test clusters: Ray Data's collector polls a Prometheus that is not
# there from background threads that outlive the Ray tests, logging a traceback each time.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
subprocess.run([sys.executable, str(ROOT / "scripts" / "offline_weights.py")], check=True, capture_output=True)

from al_core import cli  # noqa: E402
from al_core.datasets import SHAPE_CLASSES, generate_shapes  # noqa: E402
from al_core.datasets.coco import write_coco  # noqa: E402
from al_core.detectors import Detector  # noqa: E402
from backend.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402

SHAPES_CONFIG = """<View>
  <Image name="img" value="$picture"/>
  <RectangleLabels name="boxes" toName="img">
    <Label value="Circle" predicted_values="circle"/>
    <Label value="Square" predicted_values="square"/>
    <Label value="triangle"/>
  </RectangleLabels>
</View>"""

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
JWT_KEY = "test-signing-key-of-thirty-two-bytes!"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_refresh_token() -> str:
    return jwt.encode(
        {"token_type": "refresh", "exp": int(time.time()) + 3600, "user_id": 1}, JWT_KEY, algorithm="HS256"
    )


class ImageServer:
    """A loopback HTTP server: files of a directory, plus routes that misbehave on purpose,
    plus a fake Label Studio file endpoint that checks the Authorization header."""

    def __init__(self, root: Path):
        self.root = root
        self.refresh_token = make_refresh_token()
        self.access_token = jwt.encode(
            {"token_type": "access", "exp": int(time.time()) + 300}, JWT_KEY, algorithm="HS256"
        )
        self.seen_auth: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                if self.path == "/api/token/refresh/":
                    length = int(self.headers.get("Content-Length", 0))
                    body = self.rfile.read(length)
                    if server.refresh_token.encode() in body:
                        return self._send(
                            200,
                            json.dumps({"access": server.access_token}).encode(),
                            {"Content-Type": "application/json"},
                        )
                    return self._send(401, b'{"detail": "bad refresh token"}')
                self._send(404)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/redirect-private":
                    return self._send(302, headers={"Location": "http://10.1.2.3/secret.png"})
                if path == "/redirect-loop":
                    return self._send(302, headers={"Location": "/redirect-loop"})
                if path == "/slow":
                    time.sleep(3)
                    return self._send(200, b"late")
                if path == "/trickle":  # headers at once, then a byte every half second, for a minute
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    for _ in range(120):
                        time.sleep(0.5)
                        try:
                            self.wfile.write(b"\x89")
                            self.wfile.flush()
                        except OSError:
                            return None
                    return None
                if path == "/missing":
                    return self._send(404)
                if path.startswith("/data/upload/"):
                    auth = self.headers.get("Authorization", "")
                    server.seen_auth.append(auth)
                    if auth not in (f"Token {LEGACY_TOKEN}", f"Bearer {server.access_token}"):
                        return self._send(401)
                    path = "/" + path.split("/", 4)[4]  # /data/upload/<project>/<rest>
                file = server.root / path.lstrip("/")
                if file.is_file():
                    return self._send(200, file.read_bytes(), {"Content-Type": "image/png"})
                self._send(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """Training and test canvases of circles, squares and triangles with exact boxes."""
    root = tmp_path_factory.mktemp("shapes")
    return {
        "train": generate_shapes(root / "train", 160, seed=1),
        "test": generate_shapes(root / "test", 12, seed=2),
        "root": root,
    }


@pytest.fixture(scope="session")
def image_server(shapes):
    server = ImageServer(shapes["root"])
    yield server
    server.httpd.shutdown()


@pytest.fixture(scope="session")
def untrained_detector():
    return Detector.create("cpu_preset", SHAPE_CLASSES)


@pytest.fixture(scope="session")
def shapes_coco(shapes) -> Path:
    return write_coco(shapes["train"], SHAPE_CLASSES, shapes["root"] / "train.json")


@pytest.fixture(scope="session")
def trained_checkpoint(shapes_coco, tmp_path_factory) -> Path:
    """The CPU preset with a learning-loss head, trained on the generated shapes through the
    command line (about 45 s on 2 CPU cores)."""
    path = tmp_path_factory.mktemp("model") / "shapes.pt"
    command = ["train", "--images", str(shapes_coco), "--out", str(path), "--epochs", "12", "--loss-head"]
    # The same weights run after run on one machine: a fixed thread count (CPU reductions split
    # by thread) and deterministic kernels, besides the seed. Another CPU's kernels give other
    # weights, so tests of this model assert with margins.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert cli.main([*command, "--version", "shapes-v1", "--seed", "0"]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def trained_detector(trained_checkpoint):
    return Detector.load(trained_checkpoint)


def make_settings(tmp_path: Path, **overrides) -> Settings:
    # Tests train tiny sets for a few epochs; the service's TRAIN_MIN_STEPS would make each 300 steps.
    values = {"data_dir": str(tmp_path / "state"), "train_min_steps": 0, **overrides}
    return Settings(**values)


@pytest.fixture
def make_client(tmp_path, untrained_detector, image_server):
    """A Flask test client over a fresh state dir; the image server is on the allow-list."""

    apps = []

    def build(detector=None, **overrides):
        overrides.setdefault("fetch_allow_hosts", f"127.0.0.1:{image_server.port}")
        app = create_app(make_settings(tmp_path, **overrides), detector=detector or untrained_detector)
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:  # each app's threads stop with its test
        app.extensions["services"].close()
