"""A simulation's rows -> Markdown tables, a plot of mAP against what the labels cost, and per
strategy the two figures users care about, at equal images, equal boxes and equal seconds:
- mean gain over random: per seed, the area between the strategy's mAP@0.5 curve and random's
  over the cost range both cover (linear between cycles), divided by that range, in points;
  then the mean over seeds with its 95% t interval (paired by seed);
- cost saved: 1 - C / C_random, where C_random is random's final cost and C the cost at which
  the strategy's mean curve first reaches random's final mAP@0.5 (linear interpolation between
  cycles); "not reached" when it never does.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402


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


UNITS = {"images": "labeled_images", "boxes": "labeled_boxes", "seconds": "labeled_seconds"}


def paired_gain(strategy: pd.DataFrame, base: pd.DataFrame, x: str) -> float | None:
    """One seed's mean gain in mAP@0.5 points over the baseline at equal cost ``x``: the area
    between the two curves (linear between cycles) over the cost range both cover, divided by
    that range. None when the ranges do not overlap."""
    sx, sy = strategy[x].to_numpy(float), strategy["map50"].to_numpy(float)
    bx, by = base[x].to_numpy(float), base["map50"].to_numpy(float)
    low, high = max(sx[0], bx[0]), min(sx[-1], bx[-1])
    if high <= low:
        return None
    grid = np.unique(np.concatenate([[low, high], sx[(sx > low) & (sx < high)], bx[(bx > low) & (bx < high)]]))
    difference = np.interp(grid, sx, sy) - np.interp(grid, bx, by)
    return float(100 * np.trapezoid(difference, grid) / (high - low))


def mean_ci95(values: list[float]) -> tuple[float | None, list[float] | None]:
    """The mean and its 95% t interval over seeds (paired gains); no interval from one seed."""
    if not values:
        return None, None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean, [mean - half, mean + half]


def _saved(table: pd.DataFrame, strategy: str, baseline: str) -> float | None:
    """1 - C / C_random: C the cost at which the strategy's mean curve first reaches random's
    final mean mAP@0.5, C_random random's final cost."""
    base = table[table["strategy"] == baseline].sort_values("cycle")
    group = table[table["strategy"] == strategy].sort_values("cycle")
    reached = reach(group["labeled"].to_numpy(), group["map50_mean"].to_numpy(), base["map50_mean"].iloc[-1])
    return None if reached is None else 1 - reached / base["labeled"].iloc[-1]


def _edits_per_box(frame: pd.DataFrame) -> float | None:
    """Box edits a person makes reviewing every pre-annotated box of the images chosen for
    people, per box they hold: how wrong the pre-annotations of a strategy's picks are."""
    if "edits_full_review" not in frame:
        return None
    reviewed = frame.dropna(subset=["edits_full_review", "boxes_from_scratch"])  # the last cycle chooses none
    boxes = reviewed["boxes_from_scratch"].sum()
    return float(reviewed["edits_full_review"].sum() / boxes) if boxes > 0 else None


def summary(rows: list[dict], baseline: str = "random") -> pd.DataFrame:
    """Per strategy: final mAP, and at equal images, boxes and seconds (where the rows count
    them) the mean gain over random paired by seed (``gain_<unit>``, with ``gain_<unit>_ci95``)
    and the share of that cost saved to reach random's final mAP (``saved_<unit>``)."""
    frame = pd.DataFrame(rows)
    if baseline not in set(frame["strategy"]):
        raise ValueError(f"the simulation has no {baseline!r} run to compare with")
    units = {unit: x for unit, x in UNITS.items() if x in frame and frame[x].notna().all()}
    tables = {unit: curves(rows, x) for unit, x in units.items()}
    last = frame[frame["cycle"] == frame.groupby(["strategy", "seed"])["cycle"].transform("max")]
    per_seed = last.sort_values("seed").groupby("strategy")["map50"].apply(list)
    runs = {key: run.sort_values("cycle") for key, run in frame.groupby(["strategy", "seed"])}
    result = []
    for strategy, group in tables["images"].groupby("strategy"):
        group = group.sort_values("cycle")
        entry = {
            "strategy": strategy,
            "final_map50": group["map50_mean"].iloc[-1],
            "final_map50_std": group["map50_std"].iloc[-1],
            "final_map50_per_seed": per_seed[strategy],
            "seeds": int(group["seeds"].max()),
        }
        seeds = [seed for (name, seed) in runs if name == strategy and (baseline, seed) in runs]
        for unit, x in units.items():
            gains = [paired_gain(runs[strategy, seed], runs[baseline, seed], x) for seed in seeds]
            entry[f"gain_{unit}"], entry[f"gain_{unit}_ci95"] = mean_ci95([g for g in gains if g is not None])
            entry[f"gain_{unit}_per_seed"] = gains
            entry[f"saved_{unit}"] = _saved(tables[unit], strategy, baseline)
        final = last[last["strategy"] == strategy]
        boxes = final["labeled_boxes"] / final["labeled_images"] if "labeled_boxes" in final else None
        entry["boxes_per_image"] = None if boxes is None else float(boxes.mean())
        # what a labeled box cost a person, opening and checking its image included
        seconds = final["labeled_seconds"] / final["labeled_boxes"] if "labeled_seconds" in final else None
        entry["seconds_per_box"] = None if seconds is None or seconds.isna().all() else float(seconds.mean())
        entry["edits_per_box"] = _edits_per_box(frame[frame["strategy"] == strategy])
        spearman = frame.loc[frame["strategy"] == strategy].get("loss_spearman")
        entry["loss_spearman"] = None if spearman is None or spearman.isna().all() else float(spearman.mean())
        entry["train_seconds_per_cycle"] = group["train_seconds"].mean()
        entry["scoring_seconds_per_cycle"] = group["scoring_seconds"].mean()
        result.append(entry)
    key = "gain_seconds" if "seconds" in units else "gain_boxes" if "boxes" in units else "gain_images"
    return pd.DataFrame(result).sort_values(key, ascending=False).reset_index(drop=True)


AXES = {"labeled_images": "labeled images", "labeled_boxes": "labeled boxes", "labeled_seconds": "labeled seconds"}


def plot(rows: list[dict], path: str | Path) -> Path:
    """mAP@0.5 against labeled images, boxes and (where the rows have them) human seconds."""
    axes_x = [x for x in AXES if x in pd.DataFrame(rows)]
    figure, axes = plt.subplots(1, len(axes_x), figsize=(6 * len(axes_x), 5), squeeze=False)
    for axis, x in zip(axes[0], axes_x, strict=True):
        for strategy, group in curves(rows, x).groupby("strategy"):
            group = group.sort_values("cycle")
            style = {"color": "black", "linestyle": "--", "linewidth": 2} if strategy == "random" else {}
            axis.plot(group["labeled"], 100 * group["map50_mean"], marker="o", label=strategy, **style)
            spread = 100 * group["map50_std"].fillna(0)
            mean = 100 * group["map50_mean"]
            axis.fill_between(group["labeled"], mean - spread, mean + spread, alpha=0.12)
        axis.set_xlabel(AXES[x] + " (mean over seeds)")
        axis.set_ylabel("mAP@0.5 on the test split (mean ± std over seeds)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _gain_cell(entry: dict, unit: str) -> str:
    gain, interval = entry.get(f"gain_{unit}"), entry.get(f"gain_{unit}_ci95")
    if gain is None or pd.isna(gain):
        return ""
    return f"{gain:+.2f}" + (f" [{interval[0]:+.1f}, {interval[1]:+.1f}]" if isinstance(interval, list) else "")


def _number(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}"


def _saved_cell(entry: dict, unit: str) -> str:
    saved = entry.get(f"saved_{unit}")
    return "not reached" if saved is None or pd.isna(saved) else f"{100 * saved:.0f}%"


def markdown(rows: list[dict]) -> str:
    table = summary(rows)
    units = [unit for unit in UNITS if f"gain_{unit}" in table]
    header = ["strategy", "final mAP@0.5", "per seed"]
    header += [f"gain over random at equal {unit} [95% CI]" for unit in units]
    header += [f"{unit} saved to reach random's final mAP" for unit in units]
    header += ["boxes per labeled image", "seconds per labeled box", "box edits per chosen box"]
    header += ["loss head's Spearman on the pool", "train s/cycle", "scoring s/cycle"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for entry in table.to_dict("records"):
        spread = 0.0 if pd.isna(entry["final_map50_std"]) else 100 * entry["final_map50_std"]
        seeds = ", ".join(f"{100 * value:.1f}" for value in entry["final_map50_per_seed"])
        cells = [entry["strategy"], f"{100 * entry['final_map50']:.1f} ± {spread:.1f}", seeds]
        cells += [_gain_cell(entry, unit) for unit in units] + [_saved_cell(entry, unit) for unit in units]
        rho = entry["loss_spearman"]
        cells += [_number(entry[key]) for key in ("boxes_per_image", "seconds_per_box", "edits_per_box")]
        cells += ["" if rho is None or pd.isna(rho) else f"{rho:+.2f}"]
        cells += [f"{entry['train_seconds_per_cycle']:.0f}", f"{entry['scoring_seconds_per_cycle']:.1f}"]
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
    "edits_added": "of them: missed objects drawn",
    "edits_removed": "wrong boxes deleted",
    "edits_corrected": "boxes corrected",
    "edits_cooperative": "box edits, only uncertain boxes reviewed",
    "cooperative_accepted_boxes": "certain boxes accepted unseen",
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
    present = [key for key in EFFORT if key in frame]  # runs before a column was added lack it
    per_run = frame.groupby(["strategy", "seed"])[present].sum(min_count=1)
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
        cells = [values["strategy"]] + ["" if pd.isna(values.get(key)) else f"{values[key]:.0f}" for key in EFFORT]
        precision = values["pseudo_precision"]
        cells.append("" if pd.isna(precision) else f"{100 * precision:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SECONDS = {  # row field -> column title: the human seconds of the images chosen for people
    "seconds_from_scratch": "from scratch",
    "seconds_fixed_threshold": "fixed 0.3 display",
    "seconds_with_preannotations": "calibrated display",
    "seconds_cooperative": "calibrated, certain boxes accepted unseen",
}


def seconds_table(rows: list[dict]) -> pd.DataFrame:
    """Per strategy and cycle, mean over seeds: mAP@0.5 with the boxes and seconds its labels
    cost, the seconds per chosen image each way, and the ratios of the pre-annotated ways to
    drawing from scratch."""
    frame = pd.DataFrame(rows)
    if "seconds_from_scratch" not in frame:
        return pd.DataFrame()
    frame = frame[frame["chosen"].fillna(0) > 0].copy()
    for key in SECONDS:
        frame[key] = frame[key] / frame["chosen"]
    spent = ["map50", "labeled_boxes", "labeled_seconds"]  # what the model of that cycle was trained on
    table = frame.groupby(["strategy", "cycle"])[spent + list(SECONDS)].mean().reset_index()
    for key in list(SECONDS)[1:]:
        table[key.replace("seconds_", "ratio_")] = table[key] / table["seconds_from_scratch"]
    return table


def seconds_summary(rows: list[dict], first_cycle: int = 1) -> pd.DataFrame:
    """Per strategy, from ``first_cycle`` on (the first model trained on its own choices): the
    mean over cycles of each way's seconds ratio to drawing from scratch (seeds pooled per
    cycle), its worst ratio at any cycle of any seed, and the share of boxes accepted unseen
    (box-level review) that are wrong."""
    frame = pd.DataFrame(rows)
    if "seconds_from_scratch" not in frame:
        return pd.DataFrame()
    frame = frame[(frame["chosen"].fillna(0) > 0) & (frame["cycle"] >= first_cycle)].copy()
    result = []
    for strategy, group in frame.groupby("strategy"):
        entry = {"strategy": strategy, "cycles_from": first_cycle, "seeds": int(group["seed"].nunique())}
        for key in list(SECONDS)[1:]:
            per_cycle = group.groupby("cycle")[[key, "seconds_from_scratch"]].sum()
            name = key.replace("seconds_", "")
            entry[f"mean_ratio_{name}"] = float((per_cycle[key] / per_cycle["seconds_from_scratch"]).mean())
            entry[f"worst_ratio_{name}"] = float((group[key] / group["seconds_from_scratch"]).max())
        accepted = int(group["cooperative_accepted_boxes"].sum())
        entry["accepted_unseen_boxes"] = accepted
        entry["accepted_unseen_wrong_share"] = (
            float(group["cooperative_wrong_boxes_kept"].sum() / accepted) if accepted else None
        )
        result.append(entry)
    return pd.DataFrame(result)


def seconds_markdown(rows: list[dict], cost: str = "") -> str:
    table = seconds_table(rows)
    if table.empty:
        return ""
    lines = ["Human seconds per image chosen for people (mean over seeds); ratio to drawing from scratch."]
    if cost:
        lines.append(f"Cost model: {cost}.")
    lines += ["", "From cycle 1 on: mean ratio over cycles, and the worst ratio at any cycle of any seed.", ""]
    header = ["strategy", "fixed 0.3: mean", "worst", "calibrated: mean", "worst", "cooperative: mean", "worst"]
    header += ["accepted unseen", "of them wrong"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for entry in seconds_summary(rows).to_dict("records"):
        cells = [entry["strategy"]]
        for name in ("fixed_threshold", "with_preannotations", "cooperative"):
            cells += [f"{entry[f'mean_ratio_{name}']:.2f}", f"{entry[f'worst_ratio_{name}']:.2f}"]
        share = entry["accepted_unseen_wrong_share"]
        cells += [str(entry["accepted_unseen_boxes"]), "" if share is None or pd.isna(share) else f"{100 * share:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    header = ["strategy", "cycle", "mAP@0.5", "labeled boxes", "labeled seconds"]
    header += [f"s/image {title}" for title in SECONDS.values()]
    header += [f"ratio {title}" for title in list(SECONDS.values())[1:]]
    lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in table.itertuples(index=False):
        values = row._asdict()
        cells = [values["strategy"], str(values["cycle"]), f"{100 * values['map50']:.1f}"]
        cells += [f"{values['labeled_boxes']:.0f}", f"{values['labeled_seconds']:.0f}"]
        cells += [f"{values[key]:.1f}" for key in SECONDS]
        cells += [f"{values[key.replace('seconds_', 'ratio_')]:.2f}" for key in list(SECONDS)[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows: list[dict], out_dir: str | Path, cost: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    summary(rows).to_json(out / "summary.json", orient="records", indent=2)
    seconds_summary(rows).to_json(out / "seconds.json", orient="records", indent=2)
    parts = [markdown(rows), effort_markdown(rows), seconds_markdown(rows, cost)]
    (out / "report.md").write_text("\n\n".join(part for part in parts if part) + "\n")
    return {"csv": out / "results.csv", "plot": plot(rows, out / "map_vs_labels.png"), "table": out / "report.md"}
