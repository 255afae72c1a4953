"""One strategy of one finished simulation against a strategy of another, paired by seed.

``python -m al_core simulate`` compares strategies with random inside one run. Comparing a
training protocol (for example ``min_steps``) needs two runs of the same protocol otherwise,
made on the same machine (CPU training repeats on one machine, not across machines). This
reads both runs' ``results.json``, names the two strategies ``--as`` (baseline first), and
gives the same summary as a run's ``summary.json``: the gain over the baseline at equal
images, boxes and seconds with its 95% interval over the seeds both have, and the cost saved;
then both strategies' means per cycle.

    python bench/paired_runs.py \\
        --base bench/results/simulation-typiclust random \\
        --other bench/results/simulation-min-steps random \\
        --as random-6-epochs random-300-steps [--out bench/results/paired-min-steps-random.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from al_core.simulation_report import summary


def strategy_rows(run_dir: str | Path, strategy: str, label: str) -> list[dict]:
    rows = json.loads((Path(run_dir) / "results.json").read_text())
    picked = [dict(row, strategy=label) for row in rows if row["strategy"] == strategy]
    if not picked:
        raise ValueError(f"{run_dir} has no rows of strategy {strategy!r}")
    return picked


def paired_rows(base: tuple[str, str], other: tuple[str, str], labels: tuple[str, str]) -> list[dict]:
    """Both strategies' rows, renamed ``labels``, on the seeds both have (so the mean curves
    behind the cost saved cover the same seeds as the paired gains)."""
    if labels[0] == labels[1]:
        raise ValueError("give the two strategies distinct labels (--as)")
    rows = strategy_rows(*base, labels[0]) + strategy_rows(*other, labels[1])
    seeds = [{row["seed"] for row in rows if row["strategy"] == label} for label in labels]
    return [row for row in rows if row["seed"] in seeds[0] & seeds[1]]


def paired(base: tuple[str, str], other: tuple[str, str], labels: tuple[str, str]) -> dict:
    """The summary entry of ``other`` against ``base`` (each a run folder and a strategy)."""
    table = summary(paired_rows(base, other, labels), baseline=labels[0])
    entry = table[table["strategy"] == labels[1]].iloc[0].to_dict()
    return {key: None if value != value else value for key, value in entry.items()}  # NaN (not reached): None


def per_cycle(rows: list[dict]) -> pd.DataFrame:
    """Per strategy and cycle, the means over seeds of the seconds, images, epochs and mAP@0.5."""
    columns = ["labeled_seconds", "labeled_images", "epochs", "map50"]
    return pd.DataFrame(rows).groupby(["strategy", "cycle"])[columns].mean().round(3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", nargs=2, metavar=("RUN_DIR", "STRATEGY"), required=True)
    parser.add_argument("--other", nargs=2, metavar=("RUN_DIR", "STRATEGY"), required=True)
    parser.add_argument("--as", dest="labels", nargs=2, metavar=("BASE_LABEL", "OTHER_LABEL"), required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    entry = paired(tuple(args.base), tuple(args.other), tuple(args.labels))
    if args.out:  # written first, so a reader that closes the output early loses nothing
        args.out.write_text(json.dumps(entry, indent=1, default=float) + "\n")
        print(f"wrote {args.out}")
    for unit in ("images", "boxes", "seconds"):
        gain, ci = entry.get(f"gain_{unit}"), entry.get(f"gain_{unit}_ci95")
        if gain is not None:
            per_seed = ", ".join(f"{g:+.1f}" for g in entry[f"gain_{unit}_per_seed"])
            saved = entry[f"saved_{unit}"]
            saved = "not reached" if saved is None else f"{100 * saved:.1f}%"
            print(f"at equal {unit}: {gain:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}] ({per_seed}); {saved} saved")
    print(f"final mAP@0.5: {100 * entry['final_map50']:.1f}; boxes per image {entry['boxes_per_image']:.2f}")
    print(per_cycle(paired_rows(tuple(args.base), tuple(args.other), tuple(args.labels))).to_string())


if __name__ == "__main__":
    main()
