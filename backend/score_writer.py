"""The scores of /predict calls, written to SQLite off the request path: a request hands its
scores to one writer thread and answers; the thread writes whatever has gathered in one
transaction per project.

Bounded: at most ``max_pending`` batches wait. A request that finds the queue full writes its
own scores (back-pressure: nothing is dropped). ``flush`` waits until everything handed over
before it is written; ``close`` flushes and stops the thread, and runs at exit if nobody
called it.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Sequence

from .store import Store, TaskScore

log = logging.getLogger(__name__)
_STOP = object()  # the last item the writer thread takes


class ScoreWriter:
    def __init__(self, store: Store, max_pending: int = 10_000):
        self.store = store
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="score-writer", daemon=True)
        self._thread.start()
        self._closed = False
        atexit.register(self.close)

    def submit(self, project_id: int | None, scores: Sequence[TaskScore]) -> None:
        if not scores:
            return
        if self._closed:  # a request that outlived the app: write in place
            self.store.save_scores(project_id, scores)
            return
        try:
            self._queue.put_nowait((project_id, list(scores)))
        except queue.Full:
            self.store.save_scores(project_id, scores)

    def flush(self, timeout: float = 30.0) -> bool:
        """Whether everything submitted before this call was written within ``timeout`` seconds."""
        if not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put((None, done))
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is pending, then stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self.flush(timeout)
        self._queue.put((None, _STOP))
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            if items[0][1] is _STOP:
                return
            while len(items) < 1000:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write([item for item in items if not isinstance(item[1], threading.Event)])
            for _, marker in items:
                if isinstance(marker, threading.Event):
                    marker.set()

    def _write(self, items: list[tuple[int | None, list[TaskScore]]]) -> None:
        by_project: dict[int | None, list[TaskScore]] = defaultdict(list)
        for project_id, scores in items:
            by_project[project_id] += scores
        for project_id, scores in by_project.items():
            try:
                self.store.save_scores(project_id, scores)
            except Exception:  # a locked or full disk: these scores are lost, the service goes on
                log.exception("could not write %d scores of project %s", len(scores), project_id)
