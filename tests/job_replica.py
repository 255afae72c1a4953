"""One backend replica's job worker, as its own process, for tests/e2e/test_replicas.py.

    python -m tests.job_replica STATE_DIR NAME SECONDS_PER_JOB

Runs jobs from the shared state; each job appends "<job id> <start> <end> <NAME>" to
STATE_DIR/ran-NAME.txt. It prints "ready" once its worker runs, then serves until killed.
"""

import sys
import time
from pathlib import Path

from backend.job_store import JobStore
from backend.jobs import JobRunner


def main() -> None:
    state, name, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])

    def work(job, report):
        start = time.time()
        report(0.5, "working")
        time.sleep(seconds)
        with open(state / f"ran-{name}.txt", "a") as out:
            out.write(f"{job.id} {start} {time.time()} {name}\n")
        return f"{name}-{job.id}"

    runner = JobRunner(JobStore(state / "state.sqlite3"), work)
    runner.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
