"""A simulation's rows -> a Markdown table, a plot of mAP against labels spent, and per
strategy the two figures users care about:
- mean gain over random: the mean over cycles of (strategy's mean mAP@0.5 - random's), in points;
- labels saved: 1 - L / L_random, where L_random is random's final labeled count and L the
  labeled count at which the strategy's mean curve first reaches random's final mAP@0.5
  (linear interpolation between cycles); "not reached" when it never does.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def curves(rows: list[dict], x: str = "labeled_images") -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["strategy", "cycle"])
    return grouped.agg(
        labeled=(x, "mean"),
        map50_mean=("map50", "mean"),
        map50_std=("map50", "std"),
        map_mean=("map", "mean"),
        seeds=("seed", "nunique"),
        train_seconds=("train_seconds", "mean"),
        scoring_seconds=("scoring_seconds", "mean"),
    ).reset_index()


def reach(labeled: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The labeled count where the curve first reaches ``target`` (interpolated), or None."""
    for i in range(len(values)):
        if values[i] >= target:
            if i == 0:
                return float(labeled[0])
            fraction = (target - values[i - 1]) / (values[i] - values[i - 1])
            return float(labeled[i - 1] + fraction * (labeled[i] - labeled[i - 1]))
    return None


def summary(rows: list[dict], baseline: str = "random", x: str = "labeled_images") -> pd.DataFrame:
    table = curves(rows, x)
    if baseline not in set(table["strategy"]):
        raise ValueError(f"the simulation has no {baseline!r} run to compare with")
    frame = pd.DataFrame(rows)
    last = frame[frame["cycle"] == frame.groupby(["strategy", "seed"])["cycle"].transform("max")]
    per_seed = last.sort_values("seed").groupby("strategy")["map50"].apply(list)
    base = table[table["strategy"] == baseline].sort_values("cycle")
    target, base_labels = base["map50_mean"].iloc[-1], base["labeled"].iloc[-1]
    result = []
    for strategy, group in table.groupby("strategy"):
        group = group.sort_values("cycle")
        gains = group["map50_mean"].to_numpy() - base["map50_mean"].to_numpy()[: len(group)]
        reached = reach(group["labeled"].to_numpy(), group["map50_mean"].to_numpy(), target)
        result.append(
            {
                "strategy": strategy,
                "final_map50": group["map50_mean"].iloc[-1],
                "final_map50_std": group["map50_std"].iloc[-1],
                "final_map50_per_seed": per_seed[strategy],
                "mean_gain_map50_points": 100 * gains.mean(),
                "labels_saved": None if reached is None else 1 - reached / base_labels,
                "train_seconds_per_cycle": group["train_seconds"].mean(),
                "scoring_seconds_per_cycle": group["scoring_seconds"].mean(),
            }
        )
    return pd.DataFrame(result).sort_values("mean_gain_map50_points", ascending=False).reset_index(drop=True)


def plot(rows: list[dict], path: str | Path, x: str = "labeled_images") -> Path:
    table = curves(rows, x)
    figure, axis = plt.subplots(figsize=(8, 5))
    for strategy, group in table.groupby("strategy"):
        group = group.sort_values("cycle")
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if strategy == "random" else {}
        axis.plot(group["labeled"], 100 * group["map50_mean"], marker="o", label=strategy, **style)
        spread = 100 * group["map50_std"].fillna(0)
        axis.fill_between(
            group["labeled"], 100 * group["map50_mean"] - spread, 100 * group["map50_mean"] + spread, alpha=0.12
        )
    axis.set_xlabel("labeled images" if x == "labeled_images" else "labeled boxes")
    axis.set_ylabel("mAP@0.5 on the test split (mean ± std over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def markdown(rows: list[dict]) -> str:
    header = ["strategy", "final mAP@0.5", "per seed", "mean gain over random (mAP@0.5 points)"]
    header += ["labels saved to reach random's final mAP", "train s/cycle", "scoring s/cycle"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in summary(rows).itertuples():
        saved = "not reached" if r.labels_saved is None or pd.isna(r.labels_saved) else f"{100 * r.labels_saved:.0f}%"
        spread = 0.0 if pd.isna(r.final_map50_std) else 100 * r.final_map50_std
        seeds = ", ".join(f"{100 * value:.1f}" for value in r.final_map50_per_seed)
        cells = [
            r.strategy,
            f"{100 * r.final_map50:.1f} ± {spread:.1f}",
            seeds,
            f"{r.mean_gain_map50_points:+.2f}",
            saved,
        ]
        cells += [f"{r.train_seconds_per_cycle:.0f}", f"{r.scoring_seconds_per_cycle:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = curves(rows)
    per_cycle = table.pivot(index="cycle", columns="strategy", values="map50_mean")
    labeled = table.groupby("cycle")["labeled"].mean()
    lines += ["", "| cycle | labeled images | " + " | ".join(per_cycle.columns) + " |"]
    lines.append("|---" * (len(per_cycle.columns) + 2) + "|")
    for cycle, values in per_cycle.iterrows():
        lines.append(f"| {cycle} | {labeled[cycle]:.0f} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |")
    return "\n".join(lines)


EFFORT = {  # row field -> column title; summed over a run's cycles, then averaged over seeds
    "chosen": "images given to people",
    "boxes_from_scratch": "boxes drawn from scratch",
    "edits_full_review": "box edits, every shown box reviewed",
    "edits_cooperative": "box edits, only uncertain boxes reviewed",
    "cooperative_wrong_boxes_kept": "wrong certain boxes accepted unseen",
    "pseudo_images": "pseudo-labeled images trained on",
}


def effort(rows: list[dict]) -> pd.DataFrame:
    """Per strategy: the human work of its selections, counted by the oracle three ways (from
    scratch, reviewing every pre-annotated box, reviewing only the uncertain ones), the wrong
    boxes box-level cooperation lets through, and the pseudo-labels used with their precision."""
    frame = pd.DataFrame(rows)
    if "edits_cooperative" not in frame:
        return pd.DataFrame()
    per_run = frame.groupby(["strategy", "seed"])[list(EFFORT)].sum(min_count=1)
    per_run["pseudo_precision"] = frame.groupby(["strategy", "seed"])["pseudo_precision"].mean()
    return per_run.groupby("strategy").mean().reset_index()


def effort_markdown(rows: list[dict]) -> str:
    table = effort(rows)
    if table.empty:
        return ""
    header = ["strategy", *EFFORT.values(), "pseudo-label box precision"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in table.itertuples(index=False):
        values = row._asdict()
        cells = [values["strategy"]] + [f"{values[key]:.0f}" for key in EFFORT]
        precision = values["pseudo_precision"]
        cells.append("" if pd.isna(precision) else f"{100 * precision:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    summary(rows).to_json(out / "summary.json", orient="records", indent=2)
    (out / "report.md").write_text(markdown(rows) + "\n\n" + effort_markdown(rows) + "\n")
    return {"csv": out / "results.csv", "plot": plot(rows, out / "map_vs_labels.png"), "table": out / "report.md"}
