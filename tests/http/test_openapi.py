"""The OpenAPI document (generated from backend/api_models.py) kept true to the Flask app: every route documented
with its methods and nothing else, a valid OpenAPI 3.1 document, real answers matching their
documented schemas, and a schemathesis fuzz of every endpoint in process (WSGI, no network).

The fuzz's size is FUZZ_EXAMPLES generated requests per operation and generation mode (positive
and negative data); `make stress` sets it for >= 5,000 requests. With FUZZ_REPORT set, the counts
go to bench/results/fuzz.json.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import Path

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from al_core.datasets import SHAPE_CLASSES
from al_core.detectors import Detector
from al_core.types import ModelVersion
from al_core.versions import write_version

from ..conftest import SHAPES_CONFIG

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ls", "fuzz-pass-123"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Fuzzed: everything but the parameterless GETs (/health, /, /metrics, /openapi.json).
FUZZED = {
    ("POST", "/predict"),
    ("POST", "/setup"),
    ("POST", "/webhook"),
    ("POST", "/train"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("GET", "/job_status"),
    ("POST", "/job_status"),
    ("GET", "/versions"),
    ("POST", "/versions/{name}/activate"),
    ("GET", "/export/{project_id}.csv"),
}


def flask_routes(app) -> dict[str, set[str]]:
    """{OpenAPI path: methods} of the app's URL rules, e.g. /export/<int:project_id>.csv ->
    /export/{project_id}.csv; HEAD and OPTIONS (added by Flask) left out."""
    routes: dict[str, set[str]] = defaultdict(set)
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes[path] |= set(rule.methods) - {"HEAD", "OPTIONS"}
    return dict(routes)


def resolve(node, doc):
    """``node`` with every local $ref replaced by its target (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, doc)
        return {key: resolve(value, doc) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, doc) for value in node]
    return node


def check_answer(doc: dict, method: str, path: str, answer) -> None:
    """The answer's status is documented for the operation, and its body fits the schema."""
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(answer.status_code) in responses, (method, path, answer.status_code, answer.get_data()[:300])
    documented = resolve(responses[str(answer.status_code)], doc)
    assert answer.mimetype in documented["content"], (method, path, answer.content_type)
    schema = documented["content"][answer.mimetype]["schema"]
    if answer.mimetype == "application/json":
        OAS31Validator(schema).validate(answer.get_json())
    else:
        OAS31Validator(schema).validate(answer.get_data(as_text=True))


@pytest.fixture
def client(make_client):
    return make_client(basic_auth_user=USER, basic_auth_pass=PASSWORD, fetch_timeout=1.0)


def test_every_route_is_documented_and_every_documented_operation_is_a_route(client):
    doc = client.get("/openapi.json", headers=AUTH).get_json()
    documented = {path: {method.upper() for method in item} for path, item in doc["paths"].items()}
    assert documented == flask_routes(client.application)


def test_the_document_is_valid_openapi_3(client):
    served = client.get("/openapi.json", headers=AUTH)
    assert served.status_code == 200 and served.mimetype == "application/json"
    validate_spec(served.get_json())
    assert client.get("/openapi.json").status_code == 401
    doc = served.get_json()
    assert doc["openapi"].startswith("3.1.")
    assert doc["components"]["securitySchemes"]["basicAuth"] == {"type": "http", "scheme": "basic"}
    assert "security" not in doc and "security" not in doc["paths"]["/health"]["get"]  # open
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert path == "/health" or operation["security"] == [{"basicAuth": []}], (method, path)
            codes = set(operation["responses"])
            assert "500" not in codes and (path == "/health" or "401" in codes), (method, path)
            for code in codes - {"200", "201"}:
                assert resolve(operation["responses"][code], doc)["content"]["application/json"]["schema"] == (
                    resolve({"$ref": "#/components/schemas/Error"}, doc)
                ), (method, path, code)


def test_real_answers_match_the_documented_schemas(client, image_server, shapes):
    doc = client.get("/openapi.json", headers=AUTH).get_json()
    picture = f"{image_server.url}/test/{Path(shapes['test'][0].path).name}"

    def call(method: str, path: str, url: str | None = None, status: int | None = None, auth=True, **kwargs):
        answer = client.open(url or path, method=method, headers=AUTH if auth else {}, **kwargs)
        check_answer(doc, method, path, answer)
        assert status is None or answer.status_code == status, (method, url or path, answer.get_data()[:300])
        return answer

    call("GET", "/health", status=200, auth=False)
    call("GET", "/", status=200)
    call("GET", "/", status=401, auth=False)
    call("POST", "/setup", status=200, json={"project": "5.1700000000", "schema": SHAPES_CONFIG})
    call("POST", "/setup", status=400, json={"project": 5})
    tasks = [{"id": 1, "data": {"picture": picture}}, {"id": 2, "data": {}}, "not a task"]
    predicted = call("POST", "/predict", status=200, json={"project": 5, "tasks": tasks}).get_json()["results"]
    assert "error" not in predicted[0] and "error" in predicted[1] and "error" in predicted[2]
    call("POST", "/predict", status=400, data=b"{", content_type="application/json")
    call("POST", "/predict", status=400, json={"tasks": [], "project": str(2**63)})
    call("POST", "/predict", status=400, json={"tasks": [{"id": 2**63, "data": {}}], "label_config": SHAPES_CONFIG})
    call("POST", "/predict", status=400, data=b'{"tasks": [], "project": "\\ud800"}', content_type="application/json")
    job = call("POST", "/train", status=201, json={"project": 5, "params": {"epochs": 1}}).get_json()
    call("POST", "/train", status=400, json={"project": 5, "params": {"epochs": 0}})
    call("POST", "/webhook", status=200, json={"action": "PROJECT_UPDATED", "project": {"id": 5}})
    call("POST", "/webhook", status=200, json={"action": "ANNOTATION_CREATED", "project": {"id": 6}})
    call("POST", "/webhook", status=201, json={"action": "START_TRAINING", "project": 6})
    call("POST", "/webhook", status=400, json={"action": "START_TRAINING"})
    jobs = client.application.extensions["jobs"]
    assert jobs.wait(job["job_id"], timeout=30).state == "failed"  # no Label Studio configured: fails fast
    call("GET", "/jobs", status=200)
    call("GET", "/jobs", "/jobs?project=5", status=200)
    call("GET", "/jobs", "/jobs?project=%C2%B2", status=400)
    call("GET", "/jobs/{job_id}", f"/jobs/{job['job_id']}", status=200)
    call("GET", "/jobs/{job_id}", "/jobs/nope", status=404)
    answer = call("GET", "/job_status", f"/job_status?job={job['job_id']}", status=200).get_json()
    assert answer["job_status"] == "failed" and "LABEL_STUDIO_URL" in answer["error"]
    call("GET", "/job_status", status=400)
    call("POST", "/job_status", status=200, json={"job": job["job_id"]})
    call("POST", "/job_status", status=404, json={"job": "nope"})
    call("GET", "/versions", status=200)
    call("GET", "/versions", "/versions?project=5", status=200)
    call("GET", "/versions", f"/versions?project={2**64}", status=400)
    call("POST", "/versions/{name}/activate", "/versions/nope/activate", status=404)
    call("GET", "/export/{project_id}.csv", "/export/5.csv", status=404)
    call("GET", "/export/{project_id}.csv", f"/export/{2**64}.csv", status=404)
    call("GET", "/metrics", status=200)
    call("GET", "/openapi.json", status=200)
    too_large = client.application.config["MAX_CONTENT_LENGTH"] + 1
    call("POST", "/setup", status=413, data=b"x" * too_large, content_type="application/json")
    check_limits_and_cancel(client, call)


def check_limits_and_cancel(client, call) -> None:
    """The answers of the work limits and of cancellation, against their schemas."""
    page = call("GET", "/jobs", "/jobs?limit=1&offset=1", status=200).get_json()
    assert len(page["jobs"]) == 1 and page["total"] >= 2 and (page["limit"], page["offset"]) == (1, 1)
    call("GET", "/jobs", "/jobs?limit=501", status=400)
    call("GET", "/jobs", "/jobs?offset=-1", status=400)
    call("POST", "/train", status=400, json={"project": 5, "params": {"epochs": 101}})
    many = [{"id": i, "data": {}} for i in range(1001)]
    call("POST", "/predict", status=413, json={"tasks": many, "label_config": SHAPES_CONFIG})
    jobs = client.application.extensions["jobs"]
    jobs.max_queued = 0  # a full queue
    try:
        call("POST", "/train", status=429, json={"project": 8})
        call("POST", "/webhook", status=429, json={"action": "START_TRAINING", "project": 8})
    finally:
        jobs.max_queued = 100
    release = threading.Event()

    def work(job, report):  # reports until released or cancelled
        while not release.wait(0.02):
            report(0.5, "training")

    for job in client.application.extensions["job_store"].jobs():  # the earlier ones ran the real cycle
        jobs.wait(job.id, timeout=30)
    jobs.work = work
    try:
        running = call("POST", "/train", status=201, json={"project": 9}).get_json()["job_id"]
        queued = call("POST", "/train", status=201, json={"project": 10}).get_json()["job_id"]
        deadline = time.monotonic() + 10
        while (
            client.application.extensions["job_store"].job(running).state != "running" and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        answer = call("POST", "/jobs/{job_id}/cancel", f"/jobs/{queued}/cancel", status=200).get_json()
        assert answer["state"] == "cancelled"
        answer = call("POST", "/jobs/{job_id}/cancel", f"/jobs/{running}/cancel", status=200).get_json()
        assert answer["cancel_requested"] is True
        assert jobs.wait(running, timeout=10).state == "cancelled"
        call("GET", "/jobs/{job_id}", f"/jobs/{running}", status=200)
        call("GET", "/job_status", f"/job_status?job={running}", status=200)
        call("POST", "/jobs/{job_id}/cancel", f"/jobs/{running}/cancel", status=409)
        call("POST", "/jobs/{job_id}/cancel", "/jobs/nope/cancel", status=404)
        call("POST", "/jobs/{job_id}/cancel", f"/jobs/{running}/cancel", status=401, auth=False)
    finally:
        release.set()


class Tally:
    """What the fuzz sent and got: counts per operation and status, and the failures."""

    def __init__(self):
        self.sent = 0
        self.per_operation: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.per_operation_status: dict[str, Counter[int]] = defaultdict(Counter)
        self.failures: list[dict] = []
        self.blocked_lookups: Counter[str] = Counter()
        self.no_negative_data: list[str] = []
        self.jobs = 0

    def report(self, seconds: float) -> dict:
        return {
            "command": f"FUZZ_EXAMPLES={FUZZ_EXAMPLES} FUZZ_REPORT=1 .venv/bin/python -m pytest tests/http/test_openapi.py -k fuzz -s",
            "schemathesis": version("schemathesis"),
            "hypothesis": version("hypothesis"),
            "requests": self.sent,
            "examples_per_operation_and_mode": FUZZ_EXAMPLES,
            "seconds": round(seconds, 1),
            "per_operation": dict(sorted(self.per_operation.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "per_operation_statuses": {
                op: {str(k): v for k, v in sorted(c.items())} for op, c in sorted(self.per_operation_status.items())
            },
            "failures": len(self.failures),
            "failure_examples": self.failures[:20],
            "blocked_dns_lookups": sum(self.blocked_lookups.values()),
            "no_negative_data": self.no_negative_data,
            "training_jobs_queued_all_failed_fast": self.jobs,
        }


def _offline_getaddrinfo(real, tally: Tally):
    """Only loopback and private addresses resolve: no fuzzed URL can reach (or wait on) anything
    outside the machine; the backend's own check refuses the private ones."""

    def getaddrinfo(host, *args, **kwargs):
        try:
            local = host == "localhost" or not ipaddress.ip_address(host).is_global
        except ValueError:
            local = False
        if local:
            return real(host, *args, **kwargs)
        tally.blocked_lookups[str(host)] += 1
        raise socket.gaierror(socket.EAI_NONAME, "name resolution is off in the fuzz test")

    return getaddrinfo


@pytest.mark.timeout(max(900, 2 * FUZZ_EXAMPLES))
def test_fuzz_every_endpoint_against_the_document(make_client, image_server, shapes, monkeypatch, tmp_path):
    app = make_client(basic_auth_user=USER, basic_auth_pass=PASSWORD, fetch_timeout=1.0).application
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=AUTH)
    tally = Tally()
    monkeypatch.setattr(socket, "getaddrinfo", _offline_getaddrinfo(socket.getaddrinfo, tally))
    pictures = [f"{image_server.url}/test/{Path(sample.path).name}" for sample in shapes["test"][:2]] + [
        f"{image_server.url}/missing",
        f"{image_server.url}/redirect-private",
        "http://10.1.2.3/private.png",
        "http://images.example.com/public.png",
        "file:///etc/passwd",
        "/data/upload/1/x.png",
        "../../etc/passwd",
    ]
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = [op for op in operations if (op.method.upper(), op.path) in FUZZED]
    assert {(op.method.upper(), op.path) for op in fuzzed} == FUZZED

    # Things for the fuzz to find: two failed jobs, a model version and a broken one.
    client = app.test_client()
    job_ids = [client.post("/train", json={"project": p}, headers=AUTH).get_json()["job_id"] for p in (1, 2)]
    store = app.extensions["store"]
    record = write_version(
        tmp_path / "versions", "p1-v1", Detector.create("cpu_preset", SHAPE_CLASSES), {}, [], {"map": 0.5}
    )
    store.add_version(record, 1)
    store.add_version(
        ModelVersion("p2-broken", "cpu_preset", (), str(tmp_path / "versions" / "missing" / "model.pt")), 2
    )
    versions = ["p1-v1", "p2-broken", "cpu_preset-backbone-untrained"]

    def steer(case, data) -> None:
        """Part of the positive cases steered to what exists: a labeling config that parses and
        image URLs (to the model and the image fetcher), known jobs and versions."""
        if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE or not data.draw(st.booleans()):
            return
        path, body = case.operation.path, case.body if isinstance(case.body, dict) else None
        if body is not None and path in ("/predict", "/setup"):
            body["label_config" if path == "/predict" else "schema"] = SHAPES_CONFIG
            tasks = body.get("tasks")
            if isinstance(tasks, list) and tasks and isinstance(tasks[0], dict):
                tasks[0]["data"] = {"picture": data.draw(st.sampled_from(pictures))}
        elif path == "/webhook" and body is not None:
            body["action"] = data.draw(st.sampled_from(["START_TRAINING", "ANNOTATION_CREATED", "ANNOTATIONS_DELETED"]))
        elif path in ("/jobs/{job_id}", "/jobs/{job_id}/cancel"):  # failed jobs: cancel answers 409
            case.path_parameters["job_id"] = data.draw(st.sampled_from(job_ids))
        elif path == "/job_status" and body is not None:
            body["job"] = data.draw(st.sampled_from(job_ids))
        elif path == "/job_status":
            case.query = {**(case.query or {}), "job": data.draw(st.sampled_from(job_ids))}
        elif path == "/versions/{name}/activate":
            case.path_parameters["name"] = data.draw(st.sampled_from(versions))

    def send(case, data) -> None:
        name = f"{case.operation.method.upper()} {case.operation.path}"
        steer(case, data)
        # Every tenth request carries fuzzed credentials (drawn always: Hypothesis wants the same draws).
        user = data.draw(st.sampled_from([USER, ""]) | st.text(max_size=12))
        credentials = f"{user}:{data.draw(st.text(max_size=12))}".encode("utf-8", "surrogatepass")
        headers = AUTH if tally.sent % 10 else {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        started = time.perf_counter()
        response = case.call(headers=headers)
        elapsed = time.perf_counter() - started
        torch.set_flush_denormal(False)  # the call may have set it on this thread (see the loop below)
        tally.sent += 1
        tally.per_operation[name] += 1
        tally.statuses[response.status_code] += 1
        tally.per_operation_status[name][response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
            assert elapsed < 10, f"took {elapsed:.1f} s"
        except (Exception, BaseExceptionGroup) as error:  # collected, so one bug does not hide the others
            tally.failures.append(
                {
                    "operation": name,
                    "status": response.status_code,
                    "request": {
                        "method": case.operation.method.upper(),
                        "path": case.formatted_path,
                        "query": case.query,
                        "headers": {**(case.headers or {}), **headers},
                        "body": repr(case.body)[:500],
                    },
                    "response": response.text[:300],
                    "failure": str(error)[:1000],
                }
            )

    # The detector flushes denormal floats on the threads that run it (al_core/device.py), the
    # test's thread among them; Hypothesis refuses to generate floats while that flag is set.
    torch.set_flush_denormal(False)
    started = time.perf_counter()
    for operation in fuzzed:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = hypothesis_settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(case=operation.as_strategy(generation_mode=mode, headers=AUTH), data=st.data())(send))
            try:
                run()
            except Unsatisfiable:  # nothing in the operation's schema to violate (a free-form string)
                tally.no_negative_data.append(f"{operation.method.upper()} {operation.path}")
    seconds = time.perf_counter() - started
    torch.set_flush_denormal(True)

    # Nothing heavy started: every training job failed fast for want of Label Studio.
    deadline = time.monotonic() + 60
    while (
        any(job.state in ("queued", "running") for job in app.extensions["job_store"].jobs())
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    for job in app.extensions["job_store"].jobs():
        assert job.state == "failed" and "LABEL_STUDIO_URL" in (job.error or ""), job
    tally.jobs = len(app.extensions["job_store"].jobs())

    # Still serving: health and a real prediction.
    assert client.get("/health").status_code == 200
    picture = {"id": 1, "data": {"picture": pictures[0]}}
    answer = client.post("/predict", json={"tasks": [picture], "label_config": SHAPES_CONFIG}, headers=AUTH)
    assert answer.status_code == 200 and "error" not in answer.get_json()["results"][0]

    report = tally.report(seconds)
    print(f"\nfuzz: {report['requests']} requests in {report['seconds']} s, {report['failures']} failures")
    print("fuzz: statuses", report["statuses"])
    for operation, statuses in report["per_operation_statuses"].items():
        print(f"fuzz: {operation}: {report['per_operation'][operation]} {statuses}")
    if os.environ.get("FUZZ_REPORT"):
        out = ROOT / "bench" / "results" / "fuzz.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
    assert not tally.failures, json.dumps(tally.failures[:5], indent=1)
    assert tally.sent >= 10 * len(fuzzed)
