"""The service's own state in SQLite: projects' labeling configs and every informativeness
score it computed (the raw value is kept here; Label Studio only gets 1 - normalized)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY,
    label_config TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS task_scores (
    project_id INTEGER,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    scorer TEXT NOT NULL,
    informativeness REAL NOT NULL,
    normalized REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (project_id, task_id, model_version, scorer)
);
"""


@dataclass(frozen=True)
class TaskScore:
    task_id: int
    model_version: str
    scorer: str
    informativeness: float
    normalized: float


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # One short connection per call: safe across request threads and processes.
        return sqlite3.connect(self.path, timeout=30)

    def save_project(self, project_id: int, label_config: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO projects VALUES (?, ?, ?) ON CONFLICT(project_id) DO UPDATE SET "
                "label_config = excluded.label_config, updated_at = excluded.updated_at",
                (project_id, label_config, time.time()),
            )

    def project_label_config(self, project_id: int) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT label_config FROM projects WHERE project_id = ?", (project_id,)).fetchone()
        return row[0] if row else None

    def save_scores(self, project_id: int | None, scores: Iterable[TaskScore]) -> None:
        now = time.time()
        rows = [
            (project_id, s.task_id, s.model_version, s.scorer, s.informativeness, s.normalized, now) for s in scores
        ]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO task_scores VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def task_scores(self, project_id: int | None) -> list[TaskScore]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT task_id, model_version, scorer, informativeness, normalized FROM task_scores "
                "WHERE project_id IS ? ORDER BY informativeness DESC",
                (project_id,),
            ).fetchall()
        return [TaskScore(*row) for row in rows]
