"""The SQLite store on its own: one task_scores row per key (no project included) and the
migration of databases written by older builds; job cancellation, the queue bound and the
finished-job retention at the store level."""

import sqlite3

import pytest

from backend.job_store import JobStore, QueueFull
from backend.store import Store, TaskScore

OLD_TASK_SCORES = """
CREATE TABLE task_scores (
    project_id INTEGER,
    task_id INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    scorer TEXT NOT NULL,
    informativeness REAL NOT NULL,
    normalized REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (project_id, task_id, model_version, scorer)
);
CREATE TABLE jobs (
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
    finished_at REAL
);
"""


def _rows(path):
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT project_id, task_id, scorer, informativeness FROM task_scores ORDER BY 1, 2"
        ).fetchall()


@pytest.mark.parametrize("project", [None, 0, 7])
def test_saving_the_same_score_twice_keeps_one_row(tmp_path, project):
    store = Store(tmp_path / "state.sqlite3")
    store.save_scores(project, [TaskScore(1, "v1", "entropy", 0.5, 0.2)])
    store.save_scores(project, [TaskScore(1, "v1", "entropy", 0.9, 0.4), TaskScore(2, "v1", "entropy", 0.1, 0.0)])
    assert _rows(tmp_path / "state.sqlite3") == [(project, 1, "entropy", 0.9), (project, 2, "entropy", 0.1)]
    assert [s.informativeness for s in store.task_scores(project)] == [0.9, 0.1]


def test_no_project_and_project_zero_are_different_keys(tmp_path):
    store = Store(tmp_path / "state.sqlite3")
    store.save_scores(None, [TaskScore(1, "v1", "entropy", 0.5, 0.2)])
    store.save_scores(0, [TaskScore(1, "v1", "entropy", 0.7, 0.3)])
    assert [s.informativeness for s in store.task_scores(None)] == [0.5]
    assert [s.informativeness for s in store.task_scores(0)] == [0.7]


def test_an_old_database_is_migrated_on_open(tmp_path):
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_TASK_SCORES)
        rows = [
            (None, 1, "v1", "entropy", 0.1, 0.1, 1.0),
            (None, 1, "v1", "entropy", 0.3, 0.3, 3.0),  # the newest of the duplicates: kept
            (None, 1, "v1", "entropy", 0.2, 0.2, 2.0),
            (None, 2, "v1", "entropy", 0.4, 0.4, 1.0),
            (5, 1, "v1", "entropy", 0.5, 0.5, 1.0),
        ]
        db.executemany("INSERT INTO task_scores VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("INSERT INTO jobs (id, project_id, state, created_at) VALUES ('old', 1, 'done', 1.0)")
    store = Store(path)
    assert _rows(path) == [(None, 1, "entropy", 0.3), (None, 2, "entropy", 0.4), (5, 1, "entropy", 0.5)]
    with sqlite3.connect(path) as db:
        assert not any(row[5] for row in db.execute("PRAGMA table_info(task_scores)"))  # the old key is gone
        assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'task_scores_old'").fetchone() == (0,)
    store.save_scores(None, [TaskScore(1, "v1", "entropy", 0.9, 0.9)])
    assert _rows(path)[0] == (None, 1, "entropy", 0.9) and len(_rows(path)) == 3
    assert JobStore(path).job("old").cancel_requested is False  # the jobs table got its new column too
    Store(path)  # opening a migrated file again changes nothing
    assert len(_rows(path)) == 3


def test_the_queue_bound_counts_queued_jobs_across_projects(tmp_path):
    store = JobStore(tmp_path / "state.sqlite3")
    first, _ = store.submit_job(1, {}, "t", max_queued=2)
    store.submit_job(2, {}, "t", max_queued=2)
    with pytest.raises(QueueFull, match=r"2 training jobs are queued.*MAX_QUEUED_JOBS \(2\)"):
        store.submit_job(3, {}, "t", max_queued=2)
    joined, coalesced = store.submit_job(1, {"epochs": 2}, "t", max_queued=2)
    assert coalesced and joined.id == first.id and joined.params == {"epochs": 2}
    store.update_job(first.id, state="running")  # running jobs do not count
    assert store.submit_job(3, {}, "t", max_queued=2)[1] is False
    assert store.count_jobs(state="queued") == 2


def test_cancel_at_the_job_store(tmp_path):
    store = JobStore(tmp_path / "state.sqlite3")
    queued, _ = store.submit_job(1, {}, "t")
    job, changed = store.cancel_job(queued.id, "why")
    assert changed and (job.state, job.error, job.stage) == ("cancelled", "why", "cancelled") and job.finished_at
    running, _ = store.submit_job(2, {}, "t")
    store.update_job(running.id, state="running")
    assert not store.cancel_requested(running.id)
    job, changed = store.cancel_job(running.id, "why")
    assert changed and job.state == "running" and job.cancel_requested and store.cancel_requested(running.id)
    assert store.cancel_job(queued.id, "again") == (store.job(queued.id), False)
    assert store.cancel_job("nope", "why") == (None, False)


def test_prune_keeps_the_newest_finished_jobs_and_every_unfinished_one(tmp_path):
    store = JobStore(tmp_path / "state.sqlite3")
    ids = {}
    for index, state in enumerate(["done", "failed", "cancelled", "done", "queued", "running"]):
        job, _ = store.submit_job(index, {}, "t")
        store.update_job(job.id, state=state, finished_at=None if state in ("queued", "running") else float(index))
        ids[index] = job.id
    assert store.prune_jobs(2) == 2
    assert [j.id for j in store.jobs()] == [ids[2], ids[3], ids[4], ids[5]]
    assert store.prune_jobs(2) == 0
    assert store.prune_jobs(0) == 2 and [j.state for j in store.jobs()] == ["queued", "running"]


OLD_VERSIONS = """
CREATE TABLE versions (
    name TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    active INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
"""


def test_a_version_reads_back_as_the_one_record_and_old_rows_still_read(tmp_path):
    from al_core.types import ModelVersion

    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_VERSIONS)
        db.execute("INSERT INTO versions VALUES ('p1-v1', 1, '/models/p1-v1', '{\"map50\": 0.5}', 1, 1.0)")
    store = Store(path)
    saved = ModelVersion("p1-v2", "cpu_preset", ("a", "b"), "/models/p1-v2/model.pt", True, metrics={"map": 0.4})
    store.add_version(saved, 1)
    old, new = store.versions(1)
    # written by an older build: no architecture or classes, the rest as it was
    assert (old.name, old.detector, old.class_names, old.checkpoint) == ("p1-v1", "", (), "/models/p1-v1/model.pt")
    assert old.metrics == {"map50": 0.5} and old.active and old.project_id == 1
    assert (new.detector, new.class_names, str(new.path), new.metrics) == (
        "cpu_preset",
        ("a", "b"),
        "/models/p1-v2",
        {"map": 0.4},
    )
    assert not new.active and store.active_version(1).name == "p1-v1"
