"""The service's own state in SQLite: projects, jobs, model versions, cycles and every
informativeness score it computed. It survives restarts; one short connection per call keeps
it safe across request threads, the job thread and processes sharing the data directory."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from al_core.types import Certainty

# project_id NULL: scores of a /predict call that named no project.
TASK_SCORES = """
CREATE TABLE IF NOT EXISTS task_scores (
    project_id INTEGER,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    scorer TEXT NOT NULL,
    informativeness REAL NOT NULL,
    normalized REAL NOT NULL,
    created_at REAL NOT NULL
)
"""
# One row per key, "no project" included: SQLite NULLs never collide in a key, so NULL is
# keyed as -1 (project ids are 0 and up).
TASK_SCORES_KEY = (
    "CREATE UNIQUE INDEX IF NOT EXISTS task_scores_key "
    "ON task_scores (COALESCE(project_id, -1), task_id, model_version, scorer)"
)
TASK_SCORE_COLUMNS = "project_id, task_id, model_version, scorer, informativeness, normalized, created_at"

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY,
    label_config TEXT,
    view_id INTEGER,
    certainty TEXT,
    new_annotations INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
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
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    active INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cycles (
    project_id INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    version TEXT NOT NULL,
    labeled INTEGER NOT NULL,
    map REAL,
    map50 REAL,
    strategy TEXT NOT NULL,
    csv_path TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (project_id, cycle)
);
"""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES = ("done", "failed", "cancelled")
GoneCheck = Callable[[str | None, float | None], bool]  # (owner, heartbeat_at) -> the owner is dead


@dataclass(frozen=True)
class TaskScore:
    task_id: int
    model_version: str
    scorer: str
    informativeness: float
    normalized: float


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


@dataclass(frozen=True)
class Version:
    name: str
    project_id: int
    path: str
    metrics: dict
    active: bool
    created_at: float


@dataclass(frozen=True)
class Cycle:
    project_id: int
    cycle: int
    version: str
    labeled: int
    map: float | None
    map50: float | None
    strategy: str
    csv_path: str | None
    created_at: float


class QueueFull(RuntimeError):
    """As many jobs are queued as the bound allows; the message says which bound."""


def _migrate_task_scores(db: sqlite3.Connection) -> None:
    """Older builds keyed task_scores by a PRIMARY KEY over the nullable project_id, where NULLs
    never collide: every /predict without a project added rows. Rebuilt keeping the newest row
    per key."""
    key_columns = [row[1] for row in db.execute("PRAGMA table_info(task_scores)") if row[5]]
    if key_columns:
        db.execute("ALTER TABLE task_scores RENAME TO task_scores_old")
        db.execute(TASK_SCORES)
        db.execute(TASK_SCORES_KEY)
        db.execute(
            f"INSERT OR REPLACE INTO task_scores ({TASK_SCORE_COLUMNS}) "
            f"SELECT {TASK_SCORE_COLUMNS} FROM task_scores_old ORDER BY created_at"
        )
        db.execute("DROP TABLE task_scores_old")
    db.execute(TASK_SCORES_KEY)


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


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA + ";" + TASK_SCORES)
            for table, column, kind in (  # state written by older builds
                ("jobs", "owner", "TEXT"),
                ("jobs", "heartbeat_at", "REAL"),
                ("projects", "certainty", "TEXT"),
                ("jobs", "skipped", "TEXT NOT NULL DEFAULT '[]'"),
                ("jobs", "cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
            ):
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        with self._transaction() as db:  # a write lock: two processes opening an old file migrate once
            _migrate_task_scores(db)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write lock on the whole database for the block: atomic across processes."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # projects
    def save_project(self, project_id: int, label_config: str, certainty: Certainty | None = None) -> None:
        """The project's labeling config and, when given, its box thresholds (kept otherwise)."""
        thresholds = json.dumps(asdict(certainty)) if certainty else None
        with self._connect() as db:
            db.execute(
                "INSERT INTO projects (project_id, label_config, certainty, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(project_id) DO UPDATE SET label_config = excluded.label_config, "
                "certainty = COALESCE(excluded.certainty, projects.certainty), updated_at = excluded.updated_at",
                (project_id, label_config, thresholds, time.time()),
            )

    def project(self, project_id: int) -> tuple[str | None, Certainty | None]:
        """(labeling config, box thresholds) as /setup or a cycle stored them; None where not."""
        with self._connect() as db:
            row = db.execute(
                "SELECT label_config, certainty FROM projects WHERE project_id = ?", (project_id,)
            ).fetchone()
        if row is None:
            return None, None
        return row[0], Certainty(**json.loads(row[1])) if row[1] else None

    def count_annotation_event(self, project_id: int) -> int:
        """One more annotation change since the last training run started; returns the count."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO projects (project_id, new_annotations, updated_at) VALUES (?, 1, ?) "
                "ON CONFLICT(project_id) DO UPDATE SET new_annotations = new_annotations + 1",
                (project_id, time.time()),
            )
            return db.execute("SELECT new_annotations FROM projects WHERE project_id = ?", (project_id,)).fetchone()[0]

    def annotation_events(self, project_id: int) -> int:
        with self._connect() as db:
            row = db.execute("SELECT new_annotations FROM projects WHERE project_id = ?", (project_id,)).fetchone()
        return row[0] if row else 0

    def consume_annotation_events(self, project_id: int, count: int) -> None:
        """A training run that read ``count`` events succeeded: those are used up; events
        counted while it ran stay for the next one."""
        with self._connect() as db:
            db.execute(
                "UPDATE projects SET new_annotations = MAX(0, new_annotations - ?) WHERE project_id = ?",
                (count, project_id),
            )

    def save_view(self, project_id: int, view_id: int) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO projects (project_id, view_id, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(project_id) DO UPDATE SET view_id = excluded.view_id",
                (project_id, view_id, time.time()),
            )

    # scores
    def save_scores(self, project_id: int | None, scores: Iterable[TaskScore]) -> None:
        now = time.time()
        rows = [
            (project_id, s.task_id, s.model_version, s.scorer, s.informativeness, s.normalized, now) for s in scores
        ]
        with self._connect() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO task_scores ({TASK_SCORE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )

    def task_scores(self, project_id: int | None, model_version: str | None = None) -> list[TaskScore]:
        query = (
            "SELECT task_id, model_version, scorer, informativeness, normalized FROM task_scores WHERE project_id IS ?"
        )
        args: tuple = (project_id,)
        if model_version is not None:
            query, args = query + " AND model_version = ?", (project_id, model_version)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY normalized DESC, task_id", args).fetchall()
        return [TaskScore(*row) for row in rows]

    # jobs
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

    # versions
    def add_version(self, name: str, project_id: int, path: str, metrics: dict) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO versions (name, project_id, path, metrics, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, project_id, path, json.dumps(metrics), time.time()),
            )

    def activate_version(self, name: str) -> None:
        with self._connect() as db:
            (project_id,) = db.execute("SELECT project_id FROM versions WHERE name = ?", (name,)).fetchone()
            db.execute("UPDATE versions SET active = (name = ?) WHERE project_id = ?", (name, project_id))

    def versions(self, project_id: int | None = None) -> list[Version]:
        where, args = ("WHERE project_id = ?", (project_id,)) if project_id is not None else ("", ())
        with self._connect() as db:
            rows = db.execute(
                f"SELECT name, project_id, path, metrics, active, created_at FROM versions {where} ORDER BY created_at",
                args,
            ).fetchall()
        return [Version(r[0], r[1], r[2], json.loads(r[3]), bool(r[4]), r[5]) for r in rows]

    def delete_version(self, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM versions WHERE name = ? AND active = 0", (name,))

    def version(self, name: str) -> Version | None:
        return next((v for v in self.versions() if v.name == name), None)

    def active_version(self, project_id: int) -> Version | None:
        return next((v for v in self.versions(project_id) if v.active), None)

    # cycles
    def add_cycle(self, cycle: Cycle) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO cycles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(asdict(cycle).values())
            )

    def cycles(self, project_id: int) -> list[Cycle]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM cycles WHERE project_id = ? ORDER BY cycle", (project_id,)).fetchall()
        return [Cycle(*row) for row in rows]
