"""Two backend processes sharing one state directory: no job runs twice, none is lost, no two
run at once; a job whose process was SIGKILLed is failed with a reason and can run again."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.job_store import JobStore
from backend.jobs import INTERRUPTED, JobRunner

ROOT = Path(__file__).resolve().parents[2]


def start_replica(state: Path, name: str, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.job_replica", str(state), name, str(seconds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(10)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ran(state: Path) -> list[tuple[str, float, float, str]]:
    rows = []
    for path in state.glob("ran-*.txt"):
        for line in path.read_text().splitlines():
            job_id, start, end, name = line.split()
            rows.append((job_id, float(start), float(end), name))
    return sorted(rows, key=lambda row: row[1])


def test_two_replicas_never_double_train_and_lose_nothing(tmp_path):
    replicas = [start_replica(tmp_path, name, 0.4) for name in ("a", "b")]
    try:
        # Triggers for 4 projects arrive through both replicas' stores, interleaved.
        stores = [JobStore(tmp_path / "state.sqlite3"), JobStore(tmp_path / "state.sqlite3")]
        submitted = set()
        for round_ in range(3):
            for project in range(4):
                job, _ = stores[(round_ + project) % 2].submit_job(project, {}, f"trigger {round_}")
                submitted.add(job.id)
            time.sleep(0.3)
        store = stores[0]
        wait_for(lambda: all(store.job(j).state == "done" for j in submitted), 60, "every job done")
    finally:
        for process in replicas:
            stop(process)
    rows = ran(tmp_path)
    assert sorted(row[0] for row in rows) == sorted(submitted)  # each job once, none lost
    for earlier, later in zip(rows, rows[1:]):
        assert later[1] >= earlier[2], f"{earlier} and {later} ran at the same time"
    assert all(store.job(j).version.endswith(j) for j in submitted)


def test_a_killed_replica_fails_its_job_which_runs_again(tmp_path):
    first = start_replica(tmp_path, "killed", 30)
    store = JobStore(tmp_path / "state.sqlite3")
    job, _ = store.submit_job(7, {}, "POST /train")
    wait_for(lambda: store.job(job.id).state == "running", 20, "the job to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert store.job(job.id).state == "running"  # nobody has noticed yet
    second = start_replica(tmp_path, "second", 0.1)
    try:
        failed = store.job(job.id)
        assert failed.state == "failed" and failed.error == INTERRUPTED  # noticed at start-up
        again, joined = store.submit_job(7, {}, "POST /train")
        assert not joined
        wait_for(lambda: store.job(again.id).state == "done", 20, "the re-run")
    finally:
        stop(second)
    assert [row[0] for row in ran(tmp_path)] == [again.id]


@pytest.mark.parametrize("age, expected", [(5.0, "running"), (120.0, "failed")])
def test_a_job_owned_on_another_host_fails_only_past_the_lease(tmp_path, age, expected):
    store = JobStore(tmp_path / "state.sqlite3")
    job, _ = store.submit_job(1, {}, "POST /train")
    store.update_job(job.id, state="running", owner="other-host:42:abcd", heartbeat_at=time.time() - age)
    queued, _ = store.submit_job(2, {}, "POST /train")
    runner = JobRunner(store, lambda job, report: "v", lease_s=60)
    assert store.job(job.id).state == expected
    # While the other host's job lives, this process claims nothing.
    assert (runner.claim() is None) == (expected == "running")
