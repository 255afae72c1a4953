"""Label Studio's ML backend protocol through Flask's test client."""

import base64
import logging
import re

import pytest

from ..conftest import SHAPES_CONFIG

NO_RECTANGLES = (
    '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="x"/></Choices></View>'
)


def _task_url(image_server, sample, task_id):
    return {"id": task_id, "data": {"picture": f"{image_server.url}/test/{sample.path.split('/')[-1]}"}}


def test_health_and_index(make_client):
    client = make_client()
    for path in ("/health", "/"):
        body = client.get(path).get_json()
        assert body["status"] == "UP" and body["model_version"] == "cpu_preset-backbone-untrained"


def test_setup_returns_the_model_version_and_remembers_the_config(make_client, image_server, shapes):
    client = make_client()
    answer = client.post("/setup", json={"project": "4.1795262362", "schema": SHAPES_CONFIG, "hostname": "http://ls"})
    assert answer.status_code == 200 and answer.get_json() == {"model_version": "cpu_preset-backbone-untrained"}
    # A later /predict without label_config uses the stored one.
    answer = client.post(
        "/predict", json={"project": "4.1795262399", "tasks": [_task_url(image_server, shapes["test"][0], 1)]}
    )
    assert answer.status_code == 200 and len(answer.get_json()["results"]) == 1


def test_configs_without_rectangles_get_a_clear_error(make_client):
    client = make_client()
    for path, body in [
        ("/setup", {"project": "1.2", "schema": NO_RECTANGLES}),
        ("/predict", {"tasks": [], "label_config": NO_RECTANGLES}),
    ]:
        answer = client.post(path, json=body)
        assert answer.status_code == 400 and "RectangleLabels" in answer.get_json()["error"]


def test_predict_answers_every_task_in_order_even_broken_ones(make_client, image_server, shapes):
    client = make_client()
    tasks = [
        _task_url(image_server, shapes["test"][0], 11),
        {"id": 12, "data": {"picture": f"{image_server.url}/missing"}},
        {"id": 13, "data": {"other": "x"}},
        "not a task",
        {"id": 15, "data": {"picture": "http://169.254.169.254/latest"}},
        _task_url(image_server, shapes["test"][1], 16),
    ]
    answer = client.post("/predict", json={"project": "7.1", "tasks": tasks, "label_config": SHAPES_CONFIG})
    assert answer.status_code == 200
    results = answer.get_json()["results"]
    assert len(results) == len(tasks)
    for index in (0, 5):
        entry = results[index]
        assert set(entry) >= {"model_version", "score", "result"} and "error" not in entry
        assert 0.0 <= entry["score"] <= 1.0 and entry["informativeness"] >= 0 and entry["scorer"] == "entropy"
    for index, reason in [(1, "HTTP 404"), (2, "no 'picture' field"), (3, "JSON object"), (4, "refused")]:
        assert results[index]["result"] == [] and reason in results[index]["error"] and results[index]["score"] == 1.0
    writer = client.application.extensions["predictor"].writer
    assert writer.flush()
    stored = writer.store.task_scores(7)
    assert sorted(s.task_id for s in stored) == [11, 16]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "must be JSON"),
        (b"[1, 2]", 400, "must be an object"),
        (b'{"tasks": "x", "label_config": "<View/>"}', 400, "'tasks': Input should be a valid list"),
        (b'{"tasks": [], "project": "abc"}', 400, "'project' must look like"),
        (b'{"tasks": [], "project": "99.1"}', 400, "none stored for this project"),
    ],
)
def test_malformed_predict_requests(make_client, body, status, message):
    answer = make_client().post("/predict", data=body, content_type="application/json")
    assert answer.status_code == status and message in answer.get_json()["error"]


def test_body_limit(make_client):
    answer = make_client(max_request_bytes=1000).post("/predict", data=b"x" * 5000, content_type="application/json")
    assert answer.status_code == 413 and "too large" in answer.get_json()["error"]


def test_unknown_routes_and_methods_answer_json(make_client):
    client = make_client()
    assert client.get("/nope").status_code == 404
    answer = client.get("/predict")
    assert answer.status_code == 405 and "error" in answer.get_json()


def test_webhook_knows_unknown_events(make_client):
    client = make_client()
    answer = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 3}})
    assert answer.status_code == 200 and answer.get_json() == {"status": "Unknown event"}
    assert client.post("/webhook", data=b"nope", content_type="application/json").status_code == 400
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 400


def test_versions_and_prometheus_metrics(make_client, image_server, shapes):
    client = make_client()
    versions = client.get("/versions").get_json()
    assert versions["versions"] == ["cpu_preset-backbone-untrained"] and versions["details"] == []
    assert client.get("/versions?project=3").get_json()["active"] == "cpu_preset-backbone-untrained"
    client.post(
        "/predict",
        json={
            "tasks": [_task_url(image_server, shapes["test"][0], 1), {"id": 2, "data": {}}],
            "label_config": SHAPES_CONFIG,
        },
    )
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.content_type.startswith("text/plain")
    text = answer.get_data(as_text=True)
    assert 'al_backend_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert "al_backend_images_scored_total 1.0" in text
    assert 'al_backend_errors_total{kind="task"} 1.0' in text
    assert 'al_backend_request_seconds_count{endpoint="/predict"} 1.0' in text


def _basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_on_every_endpoint_but_health(make_client, caplog):
    client = make_client(basic_auth_user="ls", basic_auth_pass="s3cret-pass")
    assert client.get("/health").status_code == 200
    # Every route the app has, so a new endpoint cannot slip past the check.
    calls = [
        (method.lower(), re.sub(r"<(?:\w+:)?\w+>", "1", rule.rule))
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static" and rule.rule != "/health"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    ]
    assert len(calls) >= 14 and ("post", "/versions/1/activate") in calls
    for method, path in calls:
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, headers=_basic("ls", "wrong")).status_code == 401, path
        assert getattr(client, method)(path, headers=_basic("other", "s3cret-pass")).status_code == 401, path
    answer = client.post(
        "/setup", json={"project": "1.1", "schema": SHAPES_CONFIG}, headers=_basic("ls", "s3cret-pass")
    )
    assert answer.status_code == 200


def test_auth_off_by_default(make_client):
    assert make_client().get("/versions").status_code == 200


def test_secrets_and_signed_urls_never_reach_the_logs(make_client, image_server, caplog):
    from backend.logging_setup import RedactSecrets

    secret = "tok-abcdef-123456"
    client = make_client(label_studio_url="http://127.0.0.2:1", label_studio_api_key=secret)
    handler_filter = RedactSecrets((secret,))
    caplog.handler.addFilter(handler_filter)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("backend").warning("about to use %s", secret)
        client.post(
            "/predict",
            json={
                "tasks": [{"id": 1, "data": {"picture": f"{image_server.url}/missing?token={secret}"}}],
                "label_config": SHAPES_CONFIG,
            },
        )
    assert caplog.records and secret not in caplog.text
    assert "/missing?... answered HTTP 404" in caplog.text


def test_tasks_run_through_the_model_in_batches(make_client, image_server, shapes, untrained_detector, monkeypatch):
    batches = []
    original = untrained_detector.predict
    monkeypatch.setattr(untrained_detector, "predict", lambda images: batches.append(len(images)) or original(images))
    client = make_client(predict_batch_size=2)
    tasks = [_task_url(image_server, sample, index) for index, sample in enumerate(shapes["test"][:5])]
    tasks.insert(2, {"id": 99, "data": {}})
    results = client.post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG}).get_json()["results"]
    assert len(results) == 6 and "error" in results[2]
    assert [r["model_version"] for r in results] == ["cpu_preset-backbone-untrained"] * 6
    # Batches of at most two images; the broken task never reaches the model.
    assert sum(batches) == 5 and max(batches) <= 2


def test_predict_refuses_more_tasks_than_the_limit(make_client, image_server, shapes):
    client = make_client(max_tasks_per_request=2)
    tasks = [{"id": i, "data": {}} for i in range(3)]
    answer = client.post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG})
    assert answer.status_code == 413
    error = answer.get_json()["error"]
    assert "3 tasks" in error and "at most 2 (MAX_TASKS_PER_REQUEST)" in error
    answer = client.post("/predict", json={"tasks": tasks[:2], "label_config": SHAPES_CONFIG})
    assert answer.status_code == 200 and len(answer.get_json()["results"]) == 2


def test_the_default_task_limit_is_1000(make_client):
    from backend.settings import Settings

    assert Settings().max_tasks_per_request == 1000
    tasks = [{"id": i, "data": {}} for i in range(1001)]
    answer = make_client().post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG})
    assert answer.status_code == 413 and "at most 1000" in answer.get_json()["error"]
