"""Pushing a cycle's results for N tasks into a real Label Studio, as the cycle does it:
predictions in bulk (they carry the priority), the sorted view and the model version, then the
older version's predictions removed; and, apart, the WRITE_TASK_DATA option's per-task
PATCH of data.priority on a sample of the tasks.

    python bench/push_priorities.py [--tasks 5000] [--boxes 3]

Starts its own Label Studio (scripts/label_studio.py) in a temporary folder, prints a table
and writes bench/results/push_priorities.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from exporters.label_studio_api import LabelStudioProject, TaskPrediction
from scripts import label_studio

ROOT = Path(__file__).resolve().parent.parent

PATCHES = "WRITE_TASK_DATA: data.priority (a PATCH per task)"
CONFIG = """<View><Image name="image" value="$image"/><RectangleLabels name="boxes" toName="image">
<Label value="car"/><Label value="person"/></RectangleLabels></View>"""


def regions(rng: random.Random, count: int) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "from_name": "boxes",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": 640,
            "original_height": 480,
            "value": {"x": 10.0 + i, "y": 20.0, "width": 15.5, "height": 12.25, "rotation": 0,
                      "rectanglelabels": [rng.choice(["car", "person"])]},
            "score": rng.random(),
        }
        for i in range(count)
    ]  # fmt: skip


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=3, help="regions per prediction")
    parser.add_argument("--chunk", type=int, default=5000, help="predictions per import call")
    parser.add_argument("--patched", type=int, default=500, help="tasks whose data.priority is PATCHed (the option)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "push_priorities.json"))
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        server = label_studio.start(Path(tmp) / "ls")
        try:
            project = LabelStudioProject(server.url, server.token, 0)
            created = project.client.projects.create(title="Push benchmark", label_config=CONFIG)
            project.project_id = created.id
            data = [{"image": f"https://example.com/images/{i:06d}.jpg"} for i in range(args.tasks)]
            for start in range(0, args.tasks, 1000):
                project.client.projects.import_tasks(id=created.id, request=data[start : start + 1000])
            tasks = {t["id"]: t["data"] for t in project.tasks()}
            items = [TaskPrediction(task_id, regions(rng, args.boxes), rng.random()) for task_id in tasks]
            project.push_predictions(items, "bench-v1")  # the previous cycle's, removed below
            project.set_model_version("bench-v1", True)
            seconds = {
                f"predictions (bulk import, {args.chunk} per call)": timed(
                    lambda: project.push_predictions(items, "bench-v2", args.chunk)
                ),
                "view and model version": timed(
                    lambda: (project.ensure_priority_view(), project.set_model_version("bench-v2", True))
                ),
                "older version's predictions removed": timed(lambda: project.delete_predictions(["bench-v1"])),
            }
            default = sum(seconds.values())
            effective = default - seconds["older version's predictions removed"]
            seconds[PATCHES] = timed(lambda: project.write_task_data(items[: args.patched]))
            first = next(iter(project.client.tasks.list(project=created.id, fields="all", page_size=1)))
            assert [p.model_version for p in first.predictions] == ["bench-v2"], "the push did not land"
        finally:
            server.stop()
    print(f"{args.tasks} tasks, {args.boxes} regions per prediction, Label Studio on SQLite, this machine")
    print(f"{'step':52} {'seconds':>8} {'tasks/s':>9}")
    rows = []
    for step, value in seconds.items():
        count = args.patched if step == PATCHES else args.tasks
        rows.append({"step": step, "tasks": count, "seconds": value, "tasks_per_second": count / value})
        print(f"{step:52} {value:8.2f} {count / value:9.1f}")
    print(
        f"{'priorities in effect (predictions, tab, version)':52} {effective:8.2f} {args.tasks / effective:9.1f}",
        end="",
    )
    print("   (target >= 200)")
    print(f"{'whole push with the clean-up (the default)':52} {default:8.2f} {args.tasks / default:9.1f}")
    result = {"tasks": args.tasks, "boxes": args.boxes, "rows": rows, "total_seconds": default,
              "tasks_per_second": args.tasks / default, "priorities_in_effect_seconds": effective,
              "priorities_in_effect_tasks_per_second": args.tasks / effective}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
