"""Which detector serves which project: each project's active version, else the base model.
Every version is loaded once and kept; requests never load a model."""

from __future__ import annotations

import threading

from al_core.detectors import Detector
from al_core.versions import read_version

from .store import Store


class VersionError(ValueError):
    """A version that cannot be activated; the message says why."""


class Models:
    def __init__(self, base: Detector, store: Store, device: str):
        self.base = base
        self.store = store
        self.device = device
        self._loaded: dict[str, Detector] = {}
        self._lock = threading.Lock()

    def for_project(self, project_id: int | None) -> Detector:
        active = self.store.active_version(project_id) if project_id is not None else None
        return self._load(active.name, active.path) if active else self.base

    def _load(self, name: str, path: str) -> Detector:
        with self._lock:
            if name not in self._loaded:
                try:
                    record = read_version(path)
                    self._loaded[name] = Detector.load(record.checkpoint, device=self.device)
                except (ValueError, OSError) as error:
                    raise VersionError(f"version {name} cannot be loaded: {error}") from None
            return self._loaded[name]

    def activate(self, name: str) -> Detector:
        """Serve ``name`` for its project from now on; a broken version is refused and the
        active one stays."""
        version = self.store.version(name)
        if version is None:
            raise KeyError(name)
        detector = self._load(name, version.path)
        self.store.activate_version(name)
        return detector
