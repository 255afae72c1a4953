"""`make demo`: a real Label Studio and the backend, a project of digit canvases, and a few
active-learning cycles in which a simulated annotator labels the top-priority tasks.

Each cycle the annotator labels the first tasks of the "Most informative first" view with the
true boxes, through the API, as a person would in the editor; the last of those annotations
reaches the backend's threshold (TRAIN_MIN_NEW_ANNOTATIONS = the labels per cycle) and starts
a training run, which pushes new predictions and priorities. Each version is then measured on
held-out canvases that are not in Label Studio. Both services keep running afterwards (Ctrl+C
stops them): open the printed URL, label the next tasks by hand, and the next trigger (the
threshold again, or "Start Training") trains on your labels too.

    python scripts/demo.py [--images 300] [--cycles 3] [--per-cycle 30] [--no-wait]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio

from al_core.datasets import DIGIT_CLASSES, DigitCanvasConfig, generate_digit_canvases
from al_core.datasets.label_studio_format import box_to_percent
from al_core.detectors import Detector
from al_core.display import Display, annotator_seconds
from al_core.evaluation import evaluate
from al_core.pool import detect
from al_core.versions import read_version
from backend.connect import connect
from backend.cycle import serving_display
from backend.settings import Settings
from exporters.label_studio_api import PRIORITY_VIEW_TITLE
from scripts import label_studio
from scripts.backend_process import start_backend

ROOT = Path(__file__).resolve().parent.parent

BACKEND_USER, BACKEND_PASSWORD = "demo-backend", "demo-backend-pass"
LABELS = "".join(f'<Label value="{c}"/>' for c in DIGIT_CLASSES)
CONFIG = f"""<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="digits" toName="image">{LABELS}</RectangleLabels>
</View>"""


def regions(sample, size: int) -> list[dict]:
    """The sample's true boxes as the regions a person draws in the editor."""
    return [
        {
            "from_name": "digits",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": size,
            "original_height": size,
            "value": {**box_to_percent(box, size, size), "rotation": 0, "rectanglelabels": [DIGIT_CLASSES[label]]},
        }
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist())
    ]


def wait_for_job(backend: str, project_id: int, known: set[str], timeout: float = 1800) -> dict:
    """The training run that the cycle's last annotation started, once it has finished."""
    auth = (BACKEND_USER, BACKEND_PASSWORD)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = requests.get(f"{backend}/jobs", params={"project": project_id}, auth=auth, timeout=30).json()["jobs"]
        new = [job for job in jobs if job["id"] not in known]
        if new and all(job["state"] in ("done", "failed") for job in new):
            job = new[-1]
            if job["state"] == "failed":
                raise SystemExit(f"training failed: {job['error']}")
            return job
        time.sleep(2)
    raise SystemExit(f"no finished training run within {timeout} s")


def measure(version_dir: Path, test) -> tuple[dict, float, float]:
    """A version on the held-out canvases: its mAP, and an annotator's seconds per image from
    scratch and from the boxes the backend serves with it (its calibrated display, else the
    fixed thresholds), by the default cost model."""
    settings = Settings()
    detector = Detector.load(version_dir / "model.pt")
    metrics = read_version(version_dir).metrics
    if "display" in metrics:
        detector.display = Display.from_dict(metrics["display"])
    display = serving_display(settings, None, detector)
    scratch, shown = annotator_seconds(detect(detector, [t.path for t in test]), test, display, settings.cost)
    return evaluate(detector, test), scratch / len(test), shown / len(test)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="digit canvases in the project")
    parser.add_argument("--test-images", type=int, default=100, help="held-out canvases that measure mAP")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--per-cycle", type=int, default=30, help="tasks the annotator labels per cycle")
    parser.add_argument("--epochs", type=int, default=12, help="most epochs per training run")
    floor = Settings.model_fields["train_min_steps"].default
    parser.add_argument("--min-steps", type=int, default=floor, help="fewest steps per training run (TRAIN_MIN_STEPS)")
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "demo", help="wiped and rebuilt on each run")
    parser.add_argument("--label-studio-port", type=int, default=int(os.environ.get("LABEL_STUDIO_PORT", 8080)))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 9090)), help="the backend's port")
    parser.add_argument("--screenshot", type=Path, help="save the editor with the top task's pre-annotations here")
    parser.add_argument("--no-wait", action="store_true", help="stop both services at the end instead of serving")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("TORCH_HOME", str(ROOT / "data" / "torch_home"))  # as `make run` sets it
    shutil.rmtree(args.dir, ignore_errors=True)
    media = args.dir / "label-studio" / "media"
    print(f"starting Label Studio on port {args.label_studio_port} (the first start takes about a minute)", flush=True)
    ls_server = label_studio.start(args.dir / "label-studio", files_root=media, port=args.label_studio_port)
    backend_process = None
    try:
        config = DigitCanvasConfig(seed=0)
        pool = generate_digit_canvases(media / "digits", args.images, config)
        test = generate_digit_canvases(args.dir / "test", args.test_images, DigitCanvasConfig(seed=1))
        by_name = {Path(s.path).name: s for s in pool}
        ls = LabelStudio(base_url=ls_server.url, api_key=ls_server.token)
        project = ls.projects.create(title="Digits: active learning demo", label_config=CONFIG)
        label_studio.add_local_storage(ls, project.id, media / "digits", title="digit canvases")
        print(f"project {project.id}: {args.images} digit canvases imported from a Local Storage", flush=True)
        (args.dir / "backend").mkdir(parents=True)
        backend_process = start_backend(backend_env(ls_server, args), args.dir / "backend.log")
        backend = backend_process.url
        done = connect(ls_server.url, ls_server.token, project.id, backend, BACKEND_USER, BACKEND_PASSWORD)
        demo = Demo(ls, project.id, done.view_id, backend)
        rows = annotate_cycles(demo, by_name, config.canvas_size, test, args)
        top = report(ls_server, demo, rows, args)
        if args.screenshot:
            screenshot(ls_server, demo.project_id, top, args.screenshot)
        if args.no_wait:
            return 0
        print("\nBoth services keep running: label the next tasks in the browser; Ctrl+C stops them.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        if backend_process is not None:
            backend_process.stop()
        ls_server.stop()


@dataclass(frozen=True)
class Demo:
    ls: LabelStudio
    project_id: int
    view_id: int
    backend: str  # the backend's URL

    def tasks(self) -> list:
        return list(self.ls.tasks.list(project=self.project_id, view=self.view_id, fields="all"))

    def first_task(self):
        """The task the priority view shows first (one page of one task, not the whole list)."""
        pages = self.ls.tasks.list(project=self.project_id, view=self.view_id, fields="all", page_size=1)
        top = next(iter(pages), None)
        if top is None:
            raise RuntimeError(f"project {self.project_id} has no tasks")
        return top


def backend_env(ls_server, args: argparse.Namespace) -> dict:
    return {
        "HOST": args.host,
        "PORT": str(args.port),
        "DATA_DIR": str(args.dir / "backend"),
        "LABEL_STUDIO_URL": ls_server.url,
        "LABEL_STUDIO_API_KEY": ls_server.token,
        "BASIC_AUTH_USER": BACKEND_USER,
        "BASIC_AUTH_PASS": BACKEND_PASSWORD,
        "TRAIN_MIN_NEW_ANNOTATIONS": str(args.per_cycle),
        "TRAIN_EPOCHS": str(args.epochs),
        "TRAIN_MIN_STEPS": str(args.min_steps),
        "AL_BUDGET": str(args.per_cycle),
    }


def annotate_cycles(demo: Demo, by_name: dict, canvas_size, test, args: argparse.Namespace) -> list[tuple]:
    """Each cycle: the annotator labels the top of the priority view, the backend retrains, and
    the new version is measured on the held-out canvases."""
    rows, known = [], set()
    for cycle in range(1, args.cycles + 1):
        chosen = [t for t in demo.tasks() if not t.annotations][: args.per_cycle]
        for task in chosen:
            sample = next(s for name, s in by_name.items() if task.data["image"].endswith(name))
            demo.ls.annotations.create(id=task.id, result=regions(sample, canvas_size))
        job = wait_for_job(demo.backend, demo.project_id, known)
        known.add(job["id"])
        version = job["version"]
        models = args.dir / "backend" / "models" / f"project-{demo.project_id}"
        measured, scratch, shown = measure(models / version, test)
        labeled = cycle * args.per_cycle
        rows.append((cycle, labeled, version, measured["map50"], measured["map"], scratch, shown))
        print(
            f"cycle {cycle}: {labeled} labeled, version {version}, test mAP50 {measured['map50']:.3f}, "
            f"{shown:.1f} s per image pre-annotated against {scratch:.1f} s from scratch",
            flush=True,
        )
    return rows


def report(ls_server, demo: Demo, rows: list[tuple], args: argparse.Namespace):
    """The demo's table and where to look; returns the task now first in the priority view."""
    exports = args.dir / "backend" / "exports" / f"project-{demo.project_id}"
    top = demo.first_task()
    print("\n=== Active-learning demo ===")
    print(f"Label Studio:  {ls_server.url}/projects/{demo.project_id}/data  (tab '{PRIORITY_VIEW_TITLE}')")
    print(f"  login:       {label_studio.USERNAME} / {label_studio.PASSWORD}")
    print(f"Backend:       {demo.backend}  (basic auth {BACKEND_USER} / {BACKEND_PASSWORD})")
    print(f"Held-out test: {args.test_images} canvases not in Label Studio")
    print(f"Annotator's seconds per held-out image (cost model: {Settings().cost.describe()}):")
    print("  from scratch, and from the boxes the backend serves (every shown box reviewed)\n")
    print(f"{'cycle':>5}  {'labeled':>7}  {'version':<10}  {'mAP50':>6}  {'mAP':>6}  {'s scratch':>9}  "
          f"{'s served':>8}  {'ratio':>5}")  # fmt: skip
    for cycle, labeled, version, map50, map_, scratch, shown in rows:
        print(f"{cycle:>5}  {labeled:>7}  {version:<10}  {map50:6.3f}  {map_:6.3f}  {scratch:9.1f}  "
              f"{shown:8.1f}  {shown / scratch:5.2f}")  # fmt: skip
    print(f"\nCSV exports (image, score; most informative first): {exports}")
    for path in sorted(exports.glob("cycle_*.csv")):
        print(f"  {path}")
    score = top.predictions[0].score if top.predictions else None
    print(f"Most informative task now: {top.id} (prediction score {score}: 1 - informativeness)")
    return top


def screenshot(ls_server, project_id: int, top, path: Path) -> None:
    from scripts.browser_check import labeling_page_regions

    shown = labeling_page_regions(ls_server.url, label_studio.USERNAME, label_studio.PASSWORD, project_id, top.id, path)
    boxes = len(top.predictions[0].result) if top.predictions else 0
    print(f"Screenshot of task {top.id}, pre-annotated with {boxes} boxes ({len(shown)} in the editor's view): {path}")


if __name__ == "__main__":
    sys.exit(main())
