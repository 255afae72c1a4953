"""The service's own state in SQLite: projects, model versions, cycles and every
informativeness score it computed (jobs have their own table module, backend/job_store.py).
It survives restarts; see backend/sqlite_db.py for how threads and processes share it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from al_core.types import Certainty, ModelVersion

from .sqlite_db import Database, add_missing_columns

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


@dataclass(frozen=True)
class TaskScore:
    task_id: int
    model_version: str
    scorer: str
    informativeness: float
    normalized: float


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


def _version(name, project_id, path, metrics, active, created_at, detector, class_names) -> ModelVersion:
    """A versions row as the one version record (rows written by older builds lack the
    architecture and the classes)."""
    return ModelVersion(
        name,
        detector or "",
        tuple(json.loads(class_names or "[]")),
        str(Path(path) / "model.pt"),
        trained=True,
        metrics=json.loads(metrics),
        project_id=project_id,
        active=bool(active),
        created_at=created_at,
    )


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


class Store(Database):
    """Projects, informativeness scores, model versions and cycles (jobs: backend/job_store.py)."""

    def __init__(self, path: Path):
        super().__init__(path)
        with self._connect() as db:
            db.executescript(SCHEMA + ";" + TASK_SCORES)
            # state written by older builds
            add_missing_columns(db, "projects", {"certainty": "TEXT"})
            add_missing_columns(db, "versions", {"detector": "TEXT", "class_names": "TEXT"})
        with self._transaction() as db:  # a write lock: two processes opening an old file migrate once
            _migrate_task_scores(db)

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

    # versions
    def add_version(self, version: ModelVersion, project_id: int) -> None:
        """A saved version (al_core.versions) as one of the project's, not yet active."""
        row = (version.name, project_id, str(version.path), json.dumps(version.metrics), time.time())
        with self._connect() as db:
            db.execute(
                "INSERT INTO versions (name, project_id, path, metrics, created_at, detector, class_names) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*row, version.detector, json.dumps(list(version.class_names))),
            )

    def activate_version(self, name: str) -> None:
        with self._connect() as db:
            (project_id,) = db.execute("SELECT project_id FROM versions WHERE name = ?", (name,)).fetchone()
            db.execute("UPDATE versions SET active = (name = ?) WHERE project_id = ?", (name, project_id))

    def versions(self, project_id: int | None = None) -> list[ModelVersion]:
        where, args = ("WHERE project_id = ?", (project_id,)) if project_id is not None else ("", ())
        columns = "name, project_id, path, metrics, active, created_at, detector, class_names"
        with self._connect() as db:
            rows = db.execute(f"SELECT {columns} FROM versions {where} ORDER BY created_at", args).fetchall()
        return [_version(*row) for row in rows]

    def delete_version(self, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM versions WHERE name = ? AND active = 0", (name,))

    def version(self, name: str) -> ModelVersion | None:
        return next((v for v in self.versions() if v.name == name), None)

    def active_version(self, project_id: int) -> ModelVersion | None:
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
