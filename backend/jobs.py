"""Background jobs: one worker thread, jobs in SQLite, triggers for a busy project coalesced.

A trigger for a project with a queued job joins that job (its parameters updated). A trigger
while the project's job is running queues exactly one follow-up run. Jobs never run in
parallel: one training at a time is what a shared CPU or GPU can take.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from .store import Job, Store

log = logging.getLogger(__name__)

Report = Callable[[float, str], None]
Work = Callable[[Job, Report], str | None]  # returns the new model version, if any

INTERRUPTED = "the backend process stopped while this job ran; trigger training again to re-run it"


class JobRunner:
    def __init__(self, store: Store, work: Work):
        self.store = store
        self.work = work
        self._lock = threading.Lock()
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        for job_id in store.fail_interrupted_jobs(INTERRUPTED):
            log.warning("job %s was interrupted by a restart and is marked failed", job_id)
        for job in store.jobs(state="queued"):  # queued before a restart: still wanted
            self._queue.put(job.id)

    def submit(self, project_id: int, params: dict, trigger: str) -> tuple[Job, bool]:
        """(the job that will do the work, whether the trigger joined an existing one)."""
        with self._lock:
            waiting = self.store.jobs(project_id, state="queued")
            if waiting:
                job = waiting[0]
                if params:
                    self.store.update_job(job.id, params={**job.params, **params})
                return self.store.job(job.id), True
            job = self.store.create_job(project_id, params, trigger)
            self._queue.put(job.id)
            self._ensure_worker()
            return job, False

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run_forever, name="jobs", daemon=True)
            self._thread.start()

    def start(self) -> None:
        with self._lock:
            if not self._queue.empty():
                self._ensure_worker()

    def _run_forever(self) -> None:
        while True:
            job_id = self._queue.get()
            with self._lock:
                job = self.store.job(job_id)
                if job is None or job.state != "queued":
                    continue
                self.store.update_job(job_id, state="running", stage="starting", started_at=time.time())
            self._run(job)

    def _run(self, job: Job) -> None:
        def report(progress: float, stage: str) -> None:
            self.store.update_job(job.id, progress=round(min(max(progress, 0.0), 1.0), 4), stage=stage)

        try:
            version = self.work(job, report)
        except Exception as error:  # the job fails, the service keeps serving
            log.exception("job %s for project %s failed", job.id, job.project_id)
            self.store.update_job(
                job.id, state="failed", error=f"{type(error).__name__}: {error}", finished_at=time.time()
            )
            return
        self.store.update_job(
            job.id, state="done", stage="done", progress=1.0, version=version, finished_at=time.time()
        )

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job has finished (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.store.job(job_id)
            if job.state in ("done", "failed"):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {self.store.job(job_id).state} after {timeout} s")
