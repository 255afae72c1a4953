"""The jobs table: the SQL of background jobs (backend/jobs.py runs them). Every state change
that two processes could race on is one transaction."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .sqlite_db import Database, add_missing_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
    trigger TEXT NOT NULL DEFAULT '',
    error TEXT,
    version TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    heartbeat_at REAL,
    skipped TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0
)
"""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES = ("done", "failed", "cancelled")
GoneCheck = Callable[[str | None, float | None], bool]  # (owner, heartbeat_at) -> the owner is dead


@dataclass
class Job:
    id: str
    project_id: int
    state: str
    stage: str = ""
    progress: float = 0.0
    params: dict = field(default_factory=dict)
    trigger: str = ""
    error: str | None = None
    version: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    skipped: list = field(default_factory=list)  # {"task": id, "reason": why} per task left out
    cancel_requested: bool = False  # POST /jobs/<id>/cancel asked the running job to stop

    def to_dict(self) -> dict:
        return asdict(self)


class QueueFull(RuntimeError):
    """As many jobs are queued as the bound allows; the message says which bound."""


def _check_queue(db: sqlite3.Connection, max_queued: int | None) -> None:
    if max_queued is None:
        return
    queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
    if queued >= max_queued:
        raise QueueFull(
            f"{queued} training jobs are queued, the most MAX_QUEUED_JOBS ({max_queued}) allows; "
            "try again once some have run"
        )


def _job_filter(project_id: int | None, state: str | None) -> tuple[str, tuple]:
    clauses, args = [], []
    if project_id is not None:
        clauses.append("project_id = ?")
        args.append(project_id)
    if state is not None:
        clauses.append("state = ?")
        args.append(state)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args)


def _job(row: dict) -> Job:
    """A Job from its row, by column name; JSON and flag columns decoded."""
    row.update(
        params=json.loads(row["params"]),
        skipped=json.loads(row["skipped"]),
        cancel_requested=bool(row["cancel_requested"]),
    )
    return Job(**row)


class JobStore(Database):
    def __init__(self, path: Path):
        super().__init__(path)
        with self._connect() as db:
            db.execute(SCHEMA)
            add_missing_columns(  # state written by older builds
                db,
                "jobs",
                {
                    "owner": "TEXT",
                    "heartbeat_at": "REAL",
                    "skipped": "TEXT NOT NULL DEFAULT '[]'",
                    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
                },
            )

    def submit_job(
        self, project_id: int, params: dict, trigger: str, max_queued: int | None = None
    ) -> tuple[Job, bool]:
        """(the job that will do the work, whether the trigger joined the project's queued job).
        One transaction, so two processes sharing the state never queue two runs, nor more than
        ``max_queued`` jobs across projects (QueueFull then; joining a queued job always works)."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, params FROM jobs WHERE project_id = ? AND state = 'queued' ORDER BY created_at LIMIT 1",
                (project_id,),
            ).fetchone()
            if row:
                if params:
                    db.execute(
                        "UPDATE jobs SET params = ? WHERE id = ?",
                        (json.dumps({**json.loads(row[1]), **params}), row[0]),
                    )
                job_id, joined = row[0], True
            else:
                _check_queue(db, max_queued)
                job_id, joined = uuid.uuid4().hex[:12], False
                db.execute(
                    "INSERT INTO jobs (id, project_id, state, stage, params, trigger, created_at) "
                    "VALUES (?, ?, 'queued', 'queued', ?, ?, ?)",
                    (job_id, project_id, json.dumps(params), trigger, time.time()),
                )
        return self.job(job_id), joined

    def fail_gone_jobs(self, is_gone: GoneCheck, reason: str) -> list[str]:
        """Running jobs whose owner is gone (``is_gone(owner, heartbeat_at)``): failed with
        ``reason``, so they can be triggered again. Returns their ids."""
        with self._transaction() as db:
            return self._fail_gone(db, is_gone, reason)[0]

    @staticmethod
    def _fail_gone(db: sqlite3.Connection, is_gone: GoneCheck, reason: str) -> tuple[list[str], bool]:
        """(ids failed, whether a job with a live owner is still running)."""
        failed, alive = [], False
        for job_id, owner, heartbeat_at in db.execute(
            "SELECT id, owner, heartbeat_at FROM jobs WHERE state = 'running'"
        ):
            if is_gone(owner, heartbeat_at):
                failed.append(job_id)
            else:
                alive = True
        for job_id in failed:
            db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                (reason, time.time(), job_id),
            )
        return failed, alive

    def claim_next_job(self, owner: str, is_gone: GoneCheck, reason: str) -> Job | None:
        """The oldest queued job, now running and owned by ``owner``; None while any job runs
        (one training at a time, across every process sharing the state). Running jobs whose
        owner is gone are failed first, with ``reason``."""
        now = time.time()
        with self._transaction() as db:
            if self._fail_gone(db, is_gone, reason)[1]:
                return None
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', stage = 'starting', owner = ?, heartbeat_at = ?, started_at = ? "
                "WHERE id = ?",
                (owner, now, now, row[0]),
            )
        return self.job(row[0])

    def cancel_job(self, job_id: str, reason: str) -> tuple[Job | None, bool]:
        """(the job, whether it was queued or running): a queued job is cancelled at once, with
        ``reason``; a running one gets its cancel flag, which its worker reads at its next
        progress report. A finished job is left as it is."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None, False
            if row[0] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', stage = 'cancelled', error = ?, finished_at = ? WHERE id = ?",
                    (reason, time.time(), job_id),
                )
            elif row[0] == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.job(job_id), row[0] in ("queued", "running")

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def prune_jobs(self, keep: int) -> int:
        """Deletes finished (done, failed, cancelled) job rows but the ``keep`` newest; returns
        how many went. Queued and running jobs are never touched."""
        finished = ", ".join(f"'{state}'" for state in FINISHED_STATES)
        with self._connect() as db:
            return db.execute(
                f"DELETE FROM jobs WHERE state IN ({finished}) AND id NOT IN ("
                f"SELECT id FROM jobs WHERE state IN ({finished}) "
                "ORDER BY finished_at DESC, created_at DESC LIMIT ?)",
                (max(keep, 0),),
            ).rowcount

    def update_job(self, job_id: str, **fields) -> None:
        for key in ("params", "skipped"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))

    def job(self, job_id: str) -> Job | None:
        jobs = self._jobs("WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def jobs(
        self, project_id: int | None = None, state: str | None = None, limit: int = -1, offset: int = 0
    ) -> list[Job]:
        """Jobs oldest first (by created_at); ``limit`` -1: all from ``offset`` on."""
        where, args = _job_filter(project_id, state)
        return self._jobs(where + " ORDER BY created_at, rowid LIMIT ? OFFSET ?", (*args, limit, offset))

    def count_jobs(self, project_id: int | None = None, state: str | None = None) -> int:
        where, args = _job_filter(project_id, state)
        with self._connect() as db:
            return db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]

    def _jobs(self, where: str, args: tuple) -> list[Job]:
        names = [f.name for f in fields(Job)]
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(names)} FROM jobs {where}", args).fetchall()
        return [_job(dict(zip(names, row))) for row in rows]
