"""What a project keeps on disk, applied after each successful cycle: the newest
KEEP_MODEL_VERSIONS model versions (always the active one and the one before it) and the
newest KEEP_CYCLE_EXPORTS cycles' files. Job rows are pruned by the job runner, and a job's
own work files go when it ends (backend/cycle.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from al_core.versions import delete_version

from .models import Models
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)


def prune(settings: Settings, store: Store, models: Models, project_id: int) -> None:
    prune_versions(store, models, project_id, settings.keep_model_versions)
    prune_exports(
        store, settings.data_path / "exports" / f"project-{project_id}", project_id, settings.keep_cycle_exports
    )


def versions_to_delete(names: list[str], active: str | None, keep: int) -> list[str]:
    """Of a project's versions, oldest first: all but the newest ``keep``, the active one and
    the one made just before it (the version to go back to)."""
    kept = set(names[-keep:]) if keep > 0 else set()
    if active in names:
        index = names.index(active)
        kept.update(names[max(0, index - 1) : index + 1])
    return [name for name in names if name not in kept]


def prune_versions(store: Store, models: Models, project_id: int, keep: int) -> None:
    versions = store.versions(project_id)
    active = next((v.name for v in versions if v.active), None)
    paths = {v.name: v.path for v in versions}
    for name in versions_to_delete([v.name for v in versions], active, keep):
        store.delete_version(name)  # first: nobody looks for its files from now on
        models.forget(name)
        delete_version(paths[name])
        log.info("project %s: model version %s deleted (KEEP_MODEL_VERSIONS=%d)", project_id, name, keep)


def prune_exports(store: Store, folder: Path, project_id: int, keep: int) -> None:
    cycles = store.cycles(project_id)
    for cycle in cycles[: max(0, len(cycles) - keep)]:
        for name in (f"cycle_{cycle.cycle}.csv", f"cycle_{cycle.cycle}_selection.json"):
            (folder / name).unlink(missing_ok=True)
