"""/predict's scores reach SQLite off the request path: batched per project, all of them by
the time flush returns, and written by the caller itself when the queue is full."""

import threading

from backend.score_writer import ScoreWriter
from backend.store import Store, TaskScore


def scores(first: int, count: int, version: str = "v1") -> list[TaskScore]:
    return [TaskScore(task, version, "entropy", task / 100, task / 100) for task in range(first, first + count)]


def test_every_score_is_written_by_flush_time(tmp_path):
    writer = ScoreWriter(Store(tmp_path / "state.sqlite3"))
    threads = [threading.Thread(target=writer.submit, args=(project, scores(10 * i, 10))) for i, project in
               enumerate([1, 2, None, 1])]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush()
    store = writer.store
    assert len(store.task_scores(1)) == 20 and len(store.task_scores(2)) == 10 and len(store.task_scores(None)) == 10


def test_a_full_queue_writes_in_the_callers_thread(tmp_path):
    store = Store(tmp_path / "state.sqlite3")
    gate, written_by = threading.Event(), []
    real = store.save_scores

    def slow_save(project_id, batch):
        written_by.append(threading.current_thread().name)
        if threading.current_thread().name == "score-writer":
            gate.wait(10)  # the writer is busy: the queue fills up
        real(project_id, batch)

    store.save_scores = slow_save
    writer = ScoreWriter(store, max_pending=1)
    writer.submit(1, scores(0, 1))  # taken by the writer, which then blocks
    while not written_by:
        pass
    writer.submit(1, scores(1, 1))  # waits in the queue
    writer.submit(1, scores(2, 1))  # the queue is full: written here
    assert written_by[-1] == threading.current_thread().name
    gate.set()
    assert writer.flush()
    assert sorted(s.task_id for s in store.task_scores(1)) == [0, 1, 2]


def test_a_failed_write_is_logged_and_the_writer_goes_on(tmp_path, caplog):
    store = Store(tmp_path / "state.sqlite3")
    writer = ScoreWriter(store)
    real, calls = store.save_scores, []
    store.save_scores = lambda project_id, batch: (
        calls.append(1) or (real(project_id, batch) if len(calls) > 1 else 1 / 0)
    )
    writer.submit(1, scores(0, 3))
    assert writer.flush()
    writer.submit(1, scores(3, 3))
    assert writer.flush()
    assert sorted(s.task_id for s in store.task_scores(1)) == [3, 4, 5]
    assert any("could not write 3 scores" in record.getMessage() for record in caplog.records)


def test_close_writes_what_is_pending_and_stops_the_thread(tmp_path):
    writer = ScoreWriter(Store(tmp_path / "state.sqlite3"))
    writer.submit(3, scores(0, 5))
    writer.close()
    assert not writer._thread.is_alive() and len(writer.store.task_scores(3)) == 5
    writer.submit(3, scores(5, 1))  # after close: written in the caller's thread
    assert len(writer.store.task_scores(3)) == 6
    writer.close()  # twice is harmless
