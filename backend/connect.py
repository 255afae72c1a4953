"""`python -m backend connect`: register this backend with a Label Studio project in one step.

Registering with basic auth leaves the webhook Label Studio creates without credentials, so
annotation events would get 401. This command registers the backend through the SDK, puts the
``Authorization`` header (and ``X-Webhook-Secret`` when WEBHOOK_SECRET is set) on the webhook
(creating it when Label Studio did not), sets the project's model version to the backend's
trained version (when it has one for the project; Label Studio refuses versions it has no
predictions of) and adds the view ordered by informativeness.
"""

from __future__ import annotations

import argparse
import base64
from dataclasses import dataclass

import requests
from label_studio_sdk import LabelStudio

from exporters.label_studio_api import LabelStudioProject

from .settings import Settings


@dataclass
class Connection:
    ml_backend_id: int
    webhook_id: int
    model_version: str
    view_id: int


def connect(
    label_studio_url: str,
    api_key: str,
    project_id: int,
    backend_url: str,
    user: str = "",
    password: str = "",
    title: str = "Active-learning detector",
    train_on_annotation_update: bool = False,
    fields_in_task_data: bool = False,
    webhook_secret: str = "",
) -> Connection:
    ls = LabelStudio(base_url=label_studio_url, api_key=api_key)
    backend_url = backend_url.rstrip("/")
    auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": user, "basic_auth_pass": password} if user else {}
    ml = ls.ml.create(project=project_id, url=backend_url, title=title, is_interactive=False, **auth)
    headers = {}
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if webhook_secret:
        headers["X-Webhook-Secret"] = webhook_secret
    webhook = next(
        (w for w in ls.webhooks.list(project=project_id) if w.url.rstrip("/") == f"{backend_url}/webhook"), None
    )
    if webhook is None:
        webhook = ls.webhooks.create(
            project=project_id,
            url=f"{backend_url}/webhook",
            send_payload=True,
            send_for_all_actions=True,
            headers=headers,
        )
    else:
        ls.webhooks.update(id=webhook.id, headers=headers)
    versions = requests.get(
        f"{backend_url}/versions", params={"project": project_id}, auth=(user, password) if user else None, timeout=30
    )
    versions.raise_for_status()
    trained = [v["name"] for v in versions.json()["details"] if v["project"] == project_id and v["active"]]
    project = LabelStudioProject(label_studio_url, api_key, project_id)
    # Label Studio only accepts a version it has predictions of: a trained one was pushed.
    if trained:
        project.set_model_version(trained[0], uncertainty_sampling=False)
    model_version = ls.projects.get(id=project_id).model_version
    if train_on_annotation_update:
        ls.projects.update(id=project_id, start_training_on_annotation_update=True)
    return Connection(ml.id, webhook.id, model_version, project.ensure_priority_view(fields_in_task_data))


def main(argv: list[str] | None = None) -> int:
    settings = Settings.load()
    parser = argparse.ArgumentParser(prog="fdet-connect", description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--backend-url", default=f"http://{settings.host}:{settings.port}")
    parser.add_argument("--label-studio-url", default=settings.label_studio_url)
    parser.add_argument("--api-key", default=settings.label_studio_api_key, help="default: LABEL_STUDIO_API_KEY")
    parser.add_argument("--user", default=settings.basic_auth_user, help="default: BASIC_AUTH_USER")
    parser.add_argument("--password", default=settings.basic_auth_pass, help="default: BASIC_AUTH_PASS")
    parser.add_argument("--title", default="Active-learning detector")
    parser.add_argument("--train-on-annotation-update", action="store_true")
    args = parser.parse_args(argv)
    if not (args.label_studio_url and args.api_key):
        parser.error("give --label-studio-url and --api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    done = connect(
        args.label_studio_url,
        args.api_key,
        args.project,
        args.backend_url,
        args.user,
        args.password,
        args.title,
        args.train_on_annotation_update,
        settings.write_task_data,
        settings.webhook_secret,
    )
    print(
        f"connected: ML backend {done.ml_backend_id}, webhook {done.webhook_id} with credentials, "
        f"model version {done.model_version}, view {done.view_id}"
    )
    return 0
