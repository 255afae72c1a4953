"""What the routes share, built once by create_app and reached through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from al_core.types import Certainty

from .job_store import JobStore
from .jobs import JobRunner
from .metrics import Metrics
from .models import Models
from .predictor import Predictor
from .settings import Settings
from .store import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    job_store: JobStore
    models: Models
    predictor: Predictor
    jobs: JobRunner
    metrics: Metrics

    def close(self) -> None:
        """Stop what serves requests (the batcher, the fetch pool, the score writer); the job
        runner's thread is a daemon and holds its state in SQLite."""
        self.predictor.close()

    @property
    def default_certainty(self) -> Certainty:
        return self.settings.display.certainty()


def services() -> Services:
    return current_app.extensions["services"]
