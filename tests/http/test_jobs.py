"""Training triggers and jobs through Flask's test client, with the cycle's work replaced by a
controllable stand-in: coalescing, the annotation threshold, states, failures, restarts."""

import threading
import time

import pytest

from backend.job_store import JobStore
from backend.jobs import INTERRUPTED, JobRunner


class Gate:
    """Work that blocks until released, recording what ran."""

    def __init__(self, fail: bool = False):
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran: list[str] = []
        self.fail = fail

    def __call__(self, job, report):
        report(0.5, "training: epoch 1/2")
        self.started.set()
        self.release.wait(10)
        self.ran.append(job.id)
        if self.fail:
            raise RuntimeError("no annotated tasks yet")
        return f"p{job.project_id}-v{len(self.ran)}"


@pytest.fixture
def client_and_gate(make_client):
    client = make_client(train_min_new_annotations=3)
    gate = Gate()
    client.application.extensions["jobs"].work = gate
    return client, gate


def wait_state(client, job_id, states=("done", "failed"), timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").get_json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {job['state']}")


def test_triggers_while_running_coalesce_into_one_follow_up(client_and_gate):
    client, gate = client_and_gate
    first = client.post("/train", json={"project": 4}).get_json()
    assert first["status"] == "queued"
    assert gate.started.wait(5)
    running = client.get(f"/jobs/{first['job_id']}").get_json()
    assert running["state"] == "running" and running["progress"] == 0.5 and running["stage"].startswith("training")
    second = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}})
    third = client.post("/train", json={"project": "4.99", "params": {"epochs": 3}})
    assert second.status_code == third.status_code == 201
    assert second.get_json()["job_id"] == third.get_json()["job_id"] != first["job_id"]
    assert third.get_json()["status"].startswith("coalesced")
    other_project = client.post("/train", json={"project": 5}).get_json()
    assert other_project["job_id"] not in (first["job_id"], second.get_json()["job_id"])
    gate.release.set()
    for job_id in (first["job_id"], second.get_json()["job_id"], other_project["job_id"]):
        assert wait_state(client, job_id)["state"] == "done"
    follow_up = client.get(f"/jobs/{second.get_json()['job_id']}").get_json()
    assert follow_up["params"] == {"epochs": 3} and follow_up["version"] == "p4-v2"
    assert len(gate.ran) == 3
    listed = client.get("/jobs?project=4").get_json()["jobs"]
    assert [j["id"] for j in listed] == [first["job_id"], second.get_json()["job_id"]]


def test_annotation_events_start_a_run_at_the_threshold(client_and_gate):
    client, gate = client_and_gate
    gate.release.set()
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": {"id": 1}}
    answers = [client.post("/webhook", json=event) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200] and answers[1].get_json()["new_annotations"] == 2
    third = client.post("/webhook", json={**event, "action": "ANNOTATIONS_DELETED"})
    assert third.status_code == 201 and third.get_json()["job"]["trigger"] == "3 annotation events"
    assert wait_state(client, third.get_json()["job_id"])["state"] == "done"


def test_failed_jobs_say_why_and_the_service_keeps_serving(make_client):
    client = make_client()
    gate = Gate(fail=True)
    gate.release.set()
    client.application.extensions["jobs"].work = gate
    job_id = client.post("/train", json={"project": 1}).get_json()["job_id"]
    failed = wait_state(client, job_id)
    assert failed["state"] == "failed" and failed["error"] == "RuntimeError: no annotated tasks yet"
    assert client.get(f"/job_status?job={job_id}").get_json()["job_status"] == "failed"
    assert client.get("/health").status_code == 200


def test_the_real_cycle_explains_a_missing_label_studio(make_client):
    client = make_client()
    job_id = client.post("/train", json={"project": 1}).get_json()["job_id"]
    failed = wait_state(client, job_id, timeout=30)
    assert failed["state"] == "failed" and "LABEL_STUDIO_URL" in failed["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "'project'"),
        ({"project": "x"}, "'project' must look like"),
        ({"project": 1, "params": []}, "'params': Input should be a valid dictionary"),
        ({"project": 1, "params": {"learning_rate": 1}}, "unknown field 'params.learning_rate'"),
        ({"project": 1, "params": {"epochs": "many"}}, "'params.epochs': Input should be a valid integer"),
        ({"project": 1, "params": {"epochs": 0}}, "greater than or equal to 1"),
        ({"project": 1, "params": {"strategy": "oracle"}}, "'params.strategy': Input should be"),
        ({"project": 1, "params": {"aggregation": "median"}}, "'params.aggregation': Input should be"),
    ],
)
def test_bad_training_requests(make_client, body, message):
    answer = make_client().post("/train", json=body)
    assert answer.status_code == 400 and message in answer.get_json()["error"]


def test_unknown_jobs_and_probes(make_client):
    client = make_client()
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/job_status", json={"job": "nope"}).status_code == 404
    assert client.post("/job_status", json={}).status_code == 400
    assert client.get("/export/3.csv").status_code == 404


def test_a_restart_fails_running_jobs_and_keeps_queued_ones(tmp_path):
    store = JobStore(tmp_path / "state.sqlite3")
    running, _ = store.submit_job(1, {}, "POST /train")
    store.update_job(running.id, state="running")  # no owner: a build before heartbeats
    queued, _ = store.submit_job(2, {}, "POST /train")
    ran = []
    runner = JobRunner(store, lambda job, report: ran.append(job.id) or "v")
    assert store.job(running.id).state == "failed" and store.job(running.id).error == INTERRUPTED
    runner.start()
    assert runner.wait(queued.id, 10).state == "done" and ran == [queued.id]


def test_each_job_runs_on_its_own_thread_that_ends_with_it(tmp_path):
    """A training job's OpenMP team must not outlive it (al_core.device.in_passing_thread)."""
    store = JobStore(tmp_path / "state.sqlite3")
    threads = []
    runner = JobRunner(store, lambda job, report: threads.append(threading.current_thread()) or "v")
    jobs = [runner.submit(project, {}, "POST /train")[0] for project in (1, 2)]
    assert all(runner.wait(job.id, 10).state == "done" for job in jobs)
    assert len({id(thread) for thread in threads}) == 2 and threading.current_thread() not in threads
    for thread in threads:
        thread.join(timeout=10)  # it ends right after recording its job's outcome
        assert not thread.is_alive()


class Reporting:
    """Work that reports progress every 20 ms until released (or cancelled through report)."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran: list[str] = []

    def __call__(self, job, report):
        self.ran.append(job.id)
        self.started.set()
        step = 0
        while not self.release.wait(0.02):
            step += 1
            report(min(step / 1000, 0.9), f"training: step {step}")
        return f"p{job.project_id}-v{len(self.ran)}"


@pytest.fixture
def reporting_client(make_client):
    client = make_client()
    work = Reporting()
    client.application.extensions["jobs"].work = work
    return client, work


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_report(reporting_client):
    client, work = reporting_client
    running = client.post("/train", json={"project": 1}).get_json()["job_id"]
    assert work.started.wait(5)
    queued = client.post("/train", json={"project": 2}).get_json()["job_id"]
    answer = client.post(f"/jobs/{queued}/cancel")
    assert answer.status_code == 200 and answer.get_json()["state"] == "cancelled"
    assert "before it started" in answer.get_json()["error"]
    while client.get(f"/jobs/{running}").get_json()["progress"] == 0:  # it has reported once
        time.sleep(0.01)
    answer = client.post(f"/jobs/{running}/cancel")
    assert answer.status_code == 200 and answer.get_json()["cancel_requested"] is True
    stopped = wait_state(client, running, states=("cancelled", "done", "failed"))
    assert stopped["state"] == "cancelled" and "cancelled on request" in stopped["error"]
    assert stopped["stage"].startswith("training: step") and stopped["finished_at"]
    assert client.get(f"/job_status?job={running}").get_json()["job_status"] == "cancelled"
    # The worker lives on: the next job runs, and the cancelled queued one never ran.
    work.release.set()
    after = client.post("/train", json={"project": 3}).get_json()["job_id"]
    assert wait_state(client, after, states=("done", "failed", "cancelled"))["state"] == "done"
    assert queued not in work.ran and client.application.extensions["jobs"].wait(running, 1).state == "cancelled"


def test_cancel_a_finished_or_unknown_job(reporting_client):
    client, work = reporting_client
    work.release.set()
    job_id = client.post("/train", json={"project": 1}).get_json()["job_id"]
    assert wait_state(client, job_id)["state"] == "done"
    answer = client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 409 and "has finished (done)" in answer.get_json()["error"]
    assert client.get(f"/jobs/{job_id}").get_json()["state"] == "done"
    answer = client.post("/jobs/nope/cancel")
    assert answer.status_code == 404 and "no job" in answer.get_json()["error"]


def test_jobs_come_in_pages_oldest_first_with_the_total(make_client):
    client = make_client()
    store = client.application.extensions["job_store"]
    ids = [store.submit_job(project, {}, "test")[0].id for project in range(7)]
    for job_id in ids:  # finished, so the worker leaves them alone
        store.update_job(job_id, state="done")
    first = client.get("/jobs?limit=3").get_json()
    assert [j["id"] for j in first["jobs"]] == ids[:3] and first["total"] == 7
    assert (first["limit"], first["offset"]) == (3, 0)
    last = client.get("/jobs?limit=3&offset=6").get_json()
    assert [j["id"] for j in last["jobs"]] == ids[6:] and last["total"] == 7
    assert client.get("/jobs?offset=99").get_json() == {"jobs": [], "total": 7, "limit": 50, "offset": 99}
    one_project = client.get("/jobs?project=4").get_json()
    assert [j["id"] for j in one_project["jobs"]] == [ids[4]] and one_project["total"] == 1


def test_jobs_page_default_and_most(make_client):
    client = make_client()
    store = client.application.extensions["job_store"]
    for project in range(501):
        store.update_job(store.submit_job(project, {}, "test")[0].id, state="failed")
    assert len(client.get("/jobs").get_json()["jobs"]) == 50
    most = client.get("/jobs?limit=500").get_json()
    assert len(most["jobs"]) == 500 and most["total"] == 501


@pytest.mark.parametrize(
    "query, message",
    [
        ("limit=0", "'limit': Input should be greater than or equal to 1"),
        ("limit=501", "'limit': Input should be less than or equal to 500"),
        ("limit=ten", "'limit': must be a whole number"),
        ("limit=", "'limit': must be a whole number"),
        ("limit=-1", "'limit': must be a whole number"),
        ("limit=%C2%B2", "'limit': must be a whole number"),
        ("offset=-1", "'offset': must be a whole number"),
        ("offset=" + "9" * 30, "'offset': must be a whole number"),
    ],
)
def test_bad_job_pages(make_client, query, message):
    answer = make_client().get(f"/jobs?{query}")
    assert answer.status_code == 400 and message in answer.get_json()["error"]


def test_the_queue_is_bounded_across_projects_and_joining_still_works(make_client):
    client = make_client(max_queued_jobs=2)
    gate = Gate()
    client.application.extensions["jobs"].work = gate
    running = client.post("/train", json={"project": 1}).get_json()["job_id"]
    assert gate.started.wait(5)
    queued = [client.post("/train", json={"project": p}) for p in (2, 3)]
    assert [a.status_code for a in queued] == [201, 201]
    refused = client.post("/train", json={"project": 4})
    assert refused.status_code == 429 and "MAX_QUEUED_JOBS (2)" in refused.get_json()["error"]
    webhook = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
    assert webhook.status_code == 429
    joined = client.post("/train", json={"project": 2, "params": {"epochs": 2}})
    assert joined.status_code == 201 and joined.get_json()["status"].startswith("coalesced")
    gate.release.set()
    for job_id in [running] + [a.get_json()["job_id"] for a in queued]:
        assert wait_state(client, job_id)["state"] == "done"
    assert client.post("/train", json={"project": 4}).status_code == 201
    assert {j["project_id"] for j in client.get("/jobs").get_json()["jobs"]} == {1, 2, 3, 4}


def test_finished_job_rows_beyond_the_history_bound_are_deleted(make_client):
    client = make_client(job_history_max=2)
    gate = Gate()
    gate.release.set()
    client.application.extensions["jobs"].work = gate
    ids = []
    for project in range(4):
        ids.append(client.post("/train", json={"project": project}).get_json()["job_id"])
        wait_state(client, ids[-1])
    listed = client.get("/jobs").get_json()
    assert [j["id"] for j in listed["jobs"]] == ids[2:] and listed["total"] == 2
    assert client.get(f"/jobs/{ids[0]}").status_code == 404


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"epochs": 100}, 201, ""),
        ({"epochs": 101}, 400, "at most 100 (TRAIN_MAX_EPOCHS)"),
        ({"epochs": 10**12}, 400, "at most 100"),
        ({"strategy": "x" * 10_000}, 400, "'params.strategy': Input should be"),
        ({"aggregation": "max", "strategy": "entropy", "from_scratch": True}, 201, ""),
    ],
)
def test_training_params_are_bounded(make_client, params, status, message):
    client = make_client()
    client.application.extensions["jobs"].work = lambda job, report: "v"
    answer = client.post("/train", json={"project": 1, "params": params})
    assert answer.status_code == status and message in answer.get_data(as_text=True)
    assert len(answer.get_data()) < 2000  # a huge bad value is not echoed back


def test_the_epochs_bound_is_a_setting(make_client):
    client = make_client(train_max_epochs=5)
    client.application.extensions["jobs"].work = lambda job, report: "v"
    assert client.post("/train", json={"project": 1, "params": {"epochs": 5}}).status_code == 201
    answer = client.post("/train", json={"project": 1, "params": {"epochs": 6}})
    assert answer.status_code == 400 and "at most 5 (TRAIN_MAX_EPOCHS)" in answer.get_json()["error"]
