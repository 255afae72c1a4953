"""Everything the backend asks of Label Studio, through label-studio-sdk: reading a project's
tasks and annotations, and pushing a cycle's results (predictions, task priorities, a sorted
Data Manager view, the project's model version and sampling)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from label_studio_sdk import LabelStudio

from .label_studio_auth import LabelStudioAuth

log = logging.getLogger(__name__)

RETRIED_STATUSES = {408, 409, 429}  # and every 5xx, as the SDK retries its own calls


def _retried(response: httpx.Response) -> bool:
    return response.status_code >= 500 or response.status_code in RETRIED_STATUSES


PRIORITY_VIEW_TITLE = "Most informative first"
QUICK_ACCEPTANCE_VIEW_TITLE = "Quick acceptance: self-labeled"
PRIORITY_KEY = "priority"
# written by write_task_data
TASK_DATA_NUMBERS = (PRIORITY_KEY, "al_ratio", "uncertain_boxes", "self_labeled", "seconds_saved")


@dataclass(frozen=True)
class TaskPrediction:
    """One task's share of a cycle: its regions, informativeness in [0, 1], the share of its
    shown boxes a person must check and how many boxes that is (ASM's AL ratio), and whether
    the version trained on it with its own labels (CEAL), and the seconds its shown boxes are
    expected to save an annotator (al_core.display)."""

    task_id: int
    regions: list[dict]
    informativeness: float
    al_ratio: float = 1.0
    uncertain_boxes: int = 0
    self_labeled: bool = False
    seconds_saved: float = 0.0


def prediction_payload(item: TaskPrediction, model_version: str) -> dict:
    # Label Studio's Uncertainty sampling serves the LOWEST prediction score first.
    return {
        "task": item.task_id,
        "result": item.regions,
        "score": round(1.0 - item.informativeness, 6),
        "model_version": model_version,
    }


class LabelStudioProject:
    """One project, through label-studio-sdk. Every call is retried on connection errors and on
    5xx, 408, 409 and 429 answers, ``retries`` times with exponential backoff (1 s, 2 s, 4 s,
    ...): the SDK's calls by the SDK, the two it has no method for by ``_raw``."""

    def __init__(self, url: str, api_key: str, project_id: int, workers: int = 8, retries: int = 4, httpx_client=None):
        self.http = httpx_client or httpx.Client(timeout=60, follow_redirects=True)
        self.client = LabelStudio(base_url=url, api_key=api_key, httpx_client=self.http, max_retries=retries)
        self.auth = LabelStudioAuth(url, api_key)
        self.api = url.rstrip("/") + f"/api/projects/{int(project_id)}/"
        self.project_id = project_id
        self.workers = workers
        self.retries = retries

    def _raw(self, method: str, path: str, **kwargs) -> httpx.Response:
        """A call under this project's API path that the SDK has no method for, on the same
        HTTP client with the same credentials; the last try's error is raised."""
        for attempt in range(self.retries):
            try:
                response = self._send(method, path, **kwargs)
            except httpx.TransportError:
                response = None
            if response is not None and not _retried(response):
                response.raise_for_status()
                return response
            time.sleep(2**attempt)
        response = self._send(method, path, **kwargs)
        response.raise_for_status()
        return response

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self.http.request(method, self.api + path, headers=self.auth(), **kwargs)

    def label_config(self) -> str:
        return self.client.projects.get(id=self.project_id).label_config

    def tasks(self) -> Iterator[dict]:
        """Every task with its annotations, page after page."""
        for task in self.client.tasks.list(project=self.project_id, fields="all", page_size=500):
            yield task.dict() if hasattr(task, "dict") else dict(task)

    def push_predictions(self, items: Sequence[TaskPrediction], model_version: str, chunk: int = 5000) -> None:
        """Predictions in bulk, one request per ``chunk`` tasks. Each call has a large fixed cost
        on Label Studio's side: 5,000 tasks took 17.1 s in calls of 500 and 4.3 s in one call."""
        payloads = [prediction_payload(item, model_version) for item in items]
        for start in range(0, len(payloads), chunk):
            self.client.projects.import_predictions(id=self.project_id, request=payloads[start : start + chunk])

    def write_task_data(self, items: Sequence[TaskPrediction]) -> None:
        """Each task's ``data.priority`` (informativeness), ``data.al_ratio`` (the share of its boxes
        a person must check), ``data.uncertain_boxes``, ``data.self_labeled`` (1 when the
        version trained on the task with its own boxes) and ``data.seconds_saved`` (what the shown
        boxes are expected to save against drawing from scratch), so Data Manager views can sort and
        filter by them. Label Studio's PATCH replaces the whole ``data``, so each task is read
        fresh just before and only these fields change: edits made in Label Studio while the
        model trained are kept. No bulk update of task data exists: a GET and a PATCH per task,
        in parallel; about 12 tasks/s on its own SQLite server (BENCHMARKS.md), so this is an
        option, not the default."""

        def patch(item: TaskPrediction) -> None:
            fields = {
                PRIORITY_KEY: round(item.informativeness, 6),
                "al_ratio": round(item.al_ratio, 6),
                "uncertain_boxes": item.uncertain_boxes,
                "self_labeled": int(item.self_labeled),
                "seconds_saved": round(item.seconds_saved, 2),
            }
            fresh = self.client.tasks.get(id=str(item.task_id)).data or {}
            self.client.tasks.update(id=str(item.task_id), data={**fresh, **fields})

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(patch, items))

    def ensure_priority_view(self, by_task_data: bool = False) -> int:
        """A Data Manager tab of the tasks nobody has labeled yet, most informative first:
        by the prediction score, lowest first (the predictions carry it, pushed in bulk), or by
        ``data.priority``, highest first, when priorities are written into the tasks. Created
        once; its ordering follows ``by_task_data`` after that."""
        ordering = [f"-tasks:data.{PRIORITY_KEY}"] if by_task_data else ["tasks:predictions_score"]
        return self._ensure_view(PRIORITY_VIEW_TITLE, ordering)

    def ensure_quick_acceptance_view(self) -> int:
        """A tab of the unlabeled tasks the model labeled itself (CEAL), needing ``data.self_labeled``
        from write_task_data: an annotator checks the all-certain boxes and submits them as they
        are. Only that submission makes them human labels."""
        flag = {"filter": "filter:tasks:data.self_labeled", "operator": "greater", "type": "Number", "value": 0}
        return self._ensure_view(QUICK_ACCEPTANCE_VIEW_TITLE, [f"-tasks:data.{PRIORITY_KEY}"], [flag])

    def _ensure_view(self, title: str, ordering: list[str], filters: Sequence[dict] = ()) -> int:
        data = {
            "title": title,
            "ordering": ordering,
            # PostgreSQL sorts JSON fields as text unless the column is declared a number.
            "columnsDisplayType": {f"tasks:data.{key}": "Number" for key in TASK_DATA_NUMBERS},
            # Labeled tasks keep the score they had when chosen; the to-do list leaves them out.
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
                    *filters,
                ],
            },
        }
        for view in self.client.views.list(project=self.project_id):
            if (view.data or {}).get("title") == title:
                if view.data.get("ordering") != ordering:
                    self.client.views.update(id=view.id, project=self.project_id, data=data)
                return view.id
        return self.client.views.create(project=self.project_id, data=data).id

    def prediction_versions(self) -> dict[str, int]:
        """How many predictions the project holds of each model version."""
        response = self._raw("GET", "model-versions/")
        return {str(version): int(count) for version, count in response.json().items()}

    def delete_predictions(self, model_versions: Sequence[str]) -> int:
        """Remove every prediction of these model versions (the backend's older ones), so the
        annotator sees one pre-annotation per task: the newest. Call it after the project's
        model version moved on: deleting the project's current version also clears that field.
        Returns how many predictions went."""
        deleted = 0
        for version in model_versions:
            response = self._raw("DELETE", "model-versions/", json={"model_version": version})
            deleted += response.json().get("deleted_predictions", 0)
        return deleted

    def set_model_version(self, model_version: str, uncertainty_sampling: bool) -> None:
        """Make the pushed version the one Label Studio counts; predictions of any other
        version stop counting for ordering (the model-version trap)."""
        fields = {"model_version": model_version}
        if uncertainty_sampling:
            fields["sampling"] = "Uncertainty sampling"
        self.client.projects.update(id=self.project_id, **fields)
