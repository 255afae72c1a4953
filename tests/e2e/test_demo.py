"""`make demo` end to end, small: its own Label Studio and backend, two cycles of a simulated
annotator, the printed summary, the CSV exports, the editor screenshot, and a clean stop."""

import re
import subprocess
import sys

import pandas as pd
import requests

from ..label_studio_server import ROOT, free_port


def test_demo_runs_cycles_and_says_where_everything_is(tmp_path):
    ls_port, port = free_port(), free_port()
    command = [sys.executable, "scripts/demo.py", "--images", "40", "--test-images", "20", "--cycles", "2"]
    command += ["--per-cycle", "10", "--epochs", "4", "--min-steps", "0", "--dir", str(tmp_path / "demo")]
    command += ["--label-studio-port", str(ls_port), "--port", str(port)]
    command += ["--screenshot", str(tmp_path / "editor.png"), "--no-wait"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert f"Label Studio:  http://127.0.0.1:{ls_port}/projects/1/data" in out
    assert "login:       admin@example.com / " in out and f"Backend:       http://127.0.0.1:{port}" in out
    number = r"\s+([\d.]+)"
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(p1-v\d+)" + 5 * number + "$", out, re.M)
    assert [row[:3] for row in rows] == [("1", "10", "p1-v1"), ("2", "20", "p1-v2")]
    assert all(0 <= float(row[3]) <= 1 for row in rows)
    # seconds per image from scratch: 2 s to open, 7 s per digit (1 to 4 per canvas)
    assert all(9 <= float(row[5]) <= 30 and float(row[6]) > 0 for row in rows)
    assert all(abs(float(row[7]) - float(row[6]) / float(row[5])) < 0.01 for row in rows)
    assert "Annotator's seconds per held-out image (cost model: 2 s per image opened" in out
    exports = re.findall(r"^  (\S+cycle_\d+\.csv)$", out, re.M)
    assert len(exports) == 2
    for path in exports:
        table = pd.read_csv(path)
        assert len(table) > 0 and table.iloc[:, 1].is_monotonic_decreasing
    assert re.search(
        r"Screenshot of task \d+, pre-annotated with [1-9]\d* boxes \([1-9]\d* in the editor's view\)", out
    )
    assert (tmp_path / "editor.png").stat().st_size > 10_000
    for url in (f"http://127.0.0.1:{ls_port}/health", f"http://127.0.0.1:{port}/health"):  # both stopped
        try:
            requests.get(url, timeout=2)
            raise AssertionError(f"{url} still answers after the demo stopped")
        except requests.ConnectionError:
            pass
