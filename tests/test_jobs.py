"""Training triggers and jobs through Flask's test client, with the cycle's work replaced by a
controllable stand-in: coalescing, the annotation threshold, states, failures, restarts."""

import threading
import time

import pytest

from backend.jobs import INTERRUPTED, JobRunner
from backend.store import Store


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
        ({"project": 1, "params": []}, "'params' must be an object"),
        ({"project": 1, "params": {"learning_rate": 1}}, "unknown training parameter"),
        ({"project": 1, "params": {"epochs": "many"}}, "must be a int"),
        ({"project": 1, "params": {"epochs": 0}}, "at least 1"),
        ({"project": 1, "params": {"strategy": "oracle"}}, "unknown strategy"),
        ({"project": 1, "params": {"aggregation": "median"}}, "unknown aggregation"),
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
    store = Store(tmp_path / "state.sqlite3")
    running, _ = store.submit_job(1, {}, "POST /train")
    store.update_job(running.id, state="running")  # no owner: a build before heartbeats
    queued, _ = store.submit_job(2, {}, "POST /train")
    ran = []
    runner = JobRunner(store, lambda job, report: ran.append(job.id) or "v")
    assert store.job(running.id).state == "failed" and store.job(running.id).error == INTERRUPTED
    runner.start()
    assert runner.wait(queued.id, 10).state == "done" and ran == [queued.id]
