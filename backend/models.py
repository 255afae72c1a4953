"""Which detector serves which project: each project's active version, else the base model.

Versions are loaded on first use and kept in a small LRU (MAX_LOADED_MODELS), so a backend
serving many projects does not keep every model it ever trained in memory. A project whose
active version cannot be loaded (files deleted or corrupted) is served its newest intact
version, or the base model, and /health says so; requests never fail for it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

from al_core.detectors import Detector
from al_core.device import in_passing_thread
from al_core.display import Display
from al_core.types import ModelVersion
from al_core.versions import read_version

from .store import Store

log = logging.getLogger(__name__)


class VersionError(ValueError):
    """A version that cannot be activated; the message says why."""


@dataclass(frozen=True)
class Fallback:
    """A project served another model than its active version, and why."""

    project_id: int
    active: str
    serving: str
    reason: str


class Models:
    def __init__(self, base: Detector, store: Store, device: str, max_loaded: int = 4):
        self.base = base
        self.store = store
        self.device = device
        self.max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[str, Detector] = OrderedDict()
        self._broken: dict[str, str] = {}  # version name -> why it cannot be loaded
        self.fallbacks: dict[int, Fallback] = {}
        self._lock = threading.Lock()

    def for_project(self, project_id: int | None) -> Detector:
        active = self.store.active_version(project_id) if project_id is not None else None
        if active is None:
            return self.base
        try:
            detector = self.load(active.name, active.path)
            self.fallbacks.pop(active.project_id, None)
            return detector
        except VersionError as error:
            return self._fall_back(active, str(error))

    def _fall_back(self, active: ModelVersion, reason: str) -> Detector:
        """The newest intact version of the project older than its active one, else the base."""
        older = [v for v in self.store.versions(active.project_id) if v.created_at < active.created_at]
        detector = self.base
        for version in reversed(older):
            try:
                detector = self.load(version.name, version.path)
                break
            except VersionError:
                continue
        fallback = Fallback(active.project_id, active.name, detector.version.name, reason)
        if self.fallbacks.get(active.project_id) != fallback:
            log.error("project %s: %s; serving %s instead", active.project_id, reason, fallback.serving)
            self.fallbacks[active.project_id] = fallback
        return detector

    def check_active_versions(self) -> None:
        """At start-up: each project's active version must read back intact (files present,
        checksum right); any that does not is noted and served by a fallback from now on."""
        for version in self.store.versions():
            if version.active:
                try:
                    read_version(version.path)
                except (ValueError, OSError) as error:
                    with self._lock:
                        self._broken[version.name] = f"version {version.name} cannot be loaded: {error}"
                    self.for_project(version.project_id)

    def load(self, name: str, path: str) -> Detector:
        """The version's detector, loaded once and kept among the most recently used."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            if name in self._broken:  # do not re-read a broken checkpoint on every request
                raise VersionError(self._broken[name])
            try:
                record = read_version(path)
                detector = in_passing_thread(partial(Detector.load, record.checkpoint, device=self.device))
                detector.version = record  # with what it trained on and its figures
                if "display" in record.metrics:  # calibrated after its training run
                    detector.display = Display.from_dict(record.metrics["display"])
            except (ValueError, TypeError, OSError) as error:
                self._broken[name] = f"version {name} cannot be loaded: {error}"
                raise VersionError(self._broken[name]) from None
            self._loaded[name] = detector
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return detector

    def forget(self, name: str) -> None:
        """Drop a version from memory (it was deleted by the retention policy)."""
        with self._lock:
            self._loaded.pop(name, None)
            self._broken.pop(name, None)

    def activate(self, name: str) -> Detector:
        """Serve ``name`` for its project from now on; a broken version is refused and the
        active one stays."""
        version = self.store.version(name)
        if version is None:
            raise KeyError(name)
        with self._lock:
            self._broken.pop(name, None)  # an explicit activation reads the files again
        detector = self.load(name, version.path)
        self.store.activate_version(name)
        self.fallbacks.pop(version.project_id, None)
        return detector
