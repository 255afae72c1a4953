"""Background jobs: jobs in SQLite, run one at a time, triggers for a busy project coalesced.

A trigger for a project with a queued job joins that job (its parameters updated). A trigger
while the project's job is running queues exactly one follow-up run. Jobs never run in
parallel, not even across processes sharing the state directory (replicas): a worker claims a
job in one SQLite transaction and only when no job runs. The running job's owner beats a
heartbeat; a job whose owner died (SIGKILL, a lost machine) is failed with a reason and can be
triggered again.

Limits: at most ``max_queued`` jobs wait across projects (a trigger beyond it gets QueueFull),
and the ``history_max`` newest finished jobs are kept (older rows are deleted as a job ends).
A queued job can be cancelled at once; a running one stops at its next progress report.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

from al_core.device import in_passing_thread

from .job_store import FINISHED_STATES, Job, JobStore

log = logging.getLogger(__name__)

Report = Callable[[float, str], None]
Work = Callable[[Job, Report], str | None]  # returns the new model version, if any

INTERRUPTED = "the backend process stopped while this job ran; trigger training again to re-run it"
HEARTBEAT_S = 5.0
LEASE_S = 60.0  # a running job without a heartbeat for this long lost its owner
POLL_S = 2.0  # how often an idle worker looks for jobs queued by another process
CANCELLED = "cancelled on request (POST /jobs/<id>/cancel)"
CANCELLED_QUEUED = "cancelled on request (POST /jobs/<id>/cancel) before it started"


class JobCancelled(BaseException):
    """Raised by a job's progress report once the job was asked to stop. A BaseException (like
    asyncio.CancelledError), so the work's ``except Exception`` blocks do not swallow it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        work: Work,
        lease_s: float = LEASE_S,
        max_queued: int | None = None,
        history_max: int | None = None,
    ):
        self.store = store
        self.work = work
        self.lease_s = lease_s
        self.max_queued = max_queued  # None: no bound
        self.history_max = history_max  # None: every finished job kept
        self.host = socket.gethostname()
        # host:pid:token; the token tells this process from an earlier one with the same pid
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        for job_id in store.fail_gone_jobs(self.owner_gone, INTERRUPTED):
            log.warning("job %s was left running by a process that is gone; marked failed", job_id)

    def owner_gone(self, owner: str | None, heartbeat_at: float | None) -> bool:
        """Whether a running job's owner is dead: on this host, its pid is gone or is a
        different process now; elsewhere, its heartbeat is older than the lease."""
        if owner == self.owner:
            return False
        host, pid, *_ = (owner or "").split(":") + ["", ""]  # host:pid:token
        if host == self.host and pid.isdigit():
            return int(pid) == os.getpid() or not _pid_alive(int(pid))
        return heartbeat_at is None or time.time() - heartbeat_at > self.lease_s

    def claim(self) -> Job | None:
        return self.store.claim_next_job(self.owner, self.owner_gone, INTERRUPTED)

    def submit(self, project_id: int, params: dict, trigger: str) -> tuple[Job, bool]:
        """(the job that will do the work, whether the trigger joined an existing one)."""
        job, joined = self.store.submit_job(project_id, params, trigger, self.max_queued)
        self.start()
        self._wake.set()
        return job, joined

    def cancel(self, job_id: str) -> tuple[Job | None, bool]:
        """(the job, whether it was queued or running): see JobStore.cancel_job."""
        job, changed = self.store.cancel_job(job_id, CANCELLED_QUEUED)
        if changed and job.state == "cancelled":
            self._prune()
        return job, changed

    def _prune(self) -> None:
        if self.history_max is None:
            return
        try:
            self.store.prune_jobs(self.history_max)
        except Exception:  # old rows stay until the next job ends; the worker goes on
            log.exception("cannot prune finished jobs")

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run_forever, name="jobs", daemon=True)
                self._thread.start()

    def _run_forever(self) -> None:
        while True:
            try:
                job = self.claim()
            except Exception:  # a locked or broken database: keep the worker alive
                log.exception("cannot claim a job")
                job = None
            if job is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            # Each job's torch work on its own thread: a persistent one would keep an OpenMP
            # team that slows /predict's model down for good (al_core.device.in_passing_thread).
            in_passing_thread(partial(self._run, job))

    def _run(self, job: Job) -> None:
        def report(progress: float, stage: str) -> None:
            if self.store.cancel_requested(job.id):
                raise JobCancelled(CANCELLED)
            self.store.update_job(job.id, progress=round(min(max(progress, 0.0), 1.0), 4), stage=stage)

        done = threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT_S):
                self.store.update_job(job.id, heartbeat_at=time.time())

        threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True).start()
        try:
            outcome = {"state": "done", "stage": "done", "progress": 1.0, "version": self.work(job, report)}
        except JobCancelled as stop:  # the stage it reached stays, to say where it stopped
            log.info("job %s for project %s cancelled", job.id, job.project_id)
            outcome = {"state": "cancelled", "error": str(stop)}
        except Exception as error:  # the job fails, the service keeps serving
            log.exception("job %s for project %s failed", job.id, job.project_id)
            outcome = {"state": "failed", "error": f"{type(error).__name__}: {error}"}
        finally:
            done.set()
        self.store.update_job(job.id, finished_at=time.time(), **outcome)
        self._prune()

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job has finished (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.store.job(job_id)
            if job.state in FINISHED_STATES:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {self.store.job(job_id).state} after {timeout} s")
