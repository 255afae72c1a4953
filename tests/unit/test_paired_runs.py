"""bench/paired_runs.py: a strategy of one run against a strategy of another, paired by seed."""

import json

import pytest

from al_core.simulation_report import summary
from bench.paired_runs import main, paired, paired_rows, per_cycle


def rows(strategy, lift, seeds=(0, 1, 2)):
    """Three cycles a seed; mAP rises with the labels, ``lift`` points above a common curve."""
    out = []
    for seed in seeds:
        for cycle in range(3):
            images = 10 + 10 * cycle
            out.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    "cycle": cycle,
                    "labeled_images": images,
                    "labeled_boxes": 2 * images,
                    "labeled_seconds": 20.0 * images,
                    "map50": 0.2 + 0.2 * cycle + (lift + 0.01 * seed) / 100,
                    "map": 0.1,
                    "train_seconds": 1.0,
                    "scoring_seconds": 1.0,
                    "epochs": 6,
                }
            )
    return out


def write(folder, content):
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(content))
    return folder


def test_two_runs_paired_give_what_one_run_gives(tmp_path):
    base = write(tmp_path / "a", rows("random", 0.0) + rows("entropy", 9.0))
    other = write(tmp_path / "b", rows("random", 3.0, seeds=(0, 1, 2, 3)))
    entry = paired((str(base), "random"), (str(other), "random"), ("plain", "longer"))
    assert entry["gain_seconds"] == pytest.approx(3.0) and entry["seeds"] == 3  # seed 3 has no pair
    # the other way round, the baseline's extra seed leaves too: the same curve reaches its own final
    same = paired((str(other), "random"), (str(other), "random"), ("a", "b"))
    assert same["saved_seconds"] == pytest.approx(0.0)
    fewer = paired((str(other), "random"), (str(base), "random"), ("longer", "plain"))
    assert fewer["seeds"] == 3 and {
        row["seed"] for row in paired_rows((str(other), "random"), (str(base), "random"), ("x", "y"))
    } == {0, 1, 2}
    assert entry["gain_boxes_per_seed"] == pytest.approx([3.0, 3.0, 3.0])
    one_run = summary(rows("random", 0.0) + rows("entropy", 3.0))
    expected = one_run[one_run["strategy"] == "entropy"].iloc[0]
    assert entry["gain_seconds_ci95"] == pytest.approx(expected["gain_seconds_ci95"], abs=1e-9)


def test_the_report_is_printed_and_written(tmp_path, capsys):
    base = write(tmp_path / "a", rows("random", 0.0))
    other = write(tmp_path / "b", rows("random", -2.0))
    out = tmp_path / "paired.json"
    main(["--base", str(base), "random", "--other", str(other), "random", "--as", "x", "y", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "at equal seconds: -2.0" in printed and "labeled_seconds" in printed  # and the per-cycle means
    written = json.loads(out.read_text())
    assert written["gain_images"] == pytest.approx(-2.0)
    # y never reaches x's final mAP: "not reached", null in the file (not NaN, which is no JSON)
    assert "not reached saved" in printed and written["saved_seconds"] is None


def test_missing_strategies_and_equal_labels_are_refused(tmp_path):
    base = write(tmp_path / "a", rows("random", 0.0))
    with pytest.raises(ValueError, match="no rows of strategy 'entropy'"):
        paired((str(base), "random"), (str(base), "entropy"), ("x", "y"))
    with pytest.raises(ValueError, match="distinct labels"):
        paired((str(base), "random"), (str(base), "random"), ("x", "x"))


def test_per_cycle_means_are_over_the_paired_seeds(tmp_path):
    base = write(tmp_path / "a", rows("random", 0.0, seeds=(0, 1)))
    other = write(tmp_path / "b", rows("random", 3.0, seeds=(0, 1, 2)))
    table = per_cycle(paired_rows((str(base), "random"), (str(other), "random"), ("x", "y")))
    assert table.loc[("y", 0), "map50"] == pytest.approx(0.23, abs=1e-3)
    assert table.loc[("y", 0), "labeled_images"] == 10 and len(table) == 6
    assert table.loc[("x", 2), "labeled_images"] == 30
