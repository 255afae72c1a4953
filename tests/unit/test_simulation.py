"""The simulator's machinery on tiny data (1 seed, 2 cycles, 2 strategies), its resume, its
report arithmetic, and the digit-canvas generator."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from al_core import cli
from al_core.annotation_cost import CostModel
from al_core.cooperation import oracle_edits, pseudo_labels
from al_core.datasets import DigitCanvasConfig, generate_digit_canvases, read_dataset, write_digit_canvases
from al_core.display import GRID, Display
from al_core.simulation import (
    FIXED_DISPLAY,
    SimulationConfig,
    StrategySpec,
    _label_chosen,
    _Labels,
    _plan,
    oracle_order,
    select,
    simulate,
)
from al_core.simulation_report import effort_markdown, markdown, reach, seconds_summary, summary, write_report
from al_core.types import Detections, LabeledImage

ROOT = Path(__file__).resolve().parents[2]


def test_digit_canvases_have_exact_boxes_a_long_tail_and_near_duplicates(tmp_path):
    config = DigitCanvasConfig(seed=3, long_tail=1.0, near_duplicates=0.3)
    samples = generate_digit_canvases(tmp_path / "a", 120, config)
    again = generate_digit_canvases(tmp_path / "b", 120, config)
    assert all(torch.equal(x.boxes, y.boxes) for x, y in zip(samples, again))  # seeded
    counts = Counter(label for s in samples for label in s.labels.tolist())
    assert counts.most_common()[0][1] >= 4 * counts.most_common()[-1][1]  # long tail
    shifted = sum(
        len(a.labels) == len(b.labels) and torch.equal(a.labels, b.labels) and (a.boxes - b.boxes).abs().max() <= 2
        for a, b in zip(samples, samples[1:])
    )
    assert 0.15 * 120 <= shifted <= 0.5 * 120  # near copies of the previous canvas
    for sample in samples:
        assert 1 <= len(sample.labels) <= 4
        assert (sample.boxes[:, :2] >= 0).all() and (sample.boxes[:, 2:] <= 128).all()
        sides = sample.boxes[:, 2:] - sample.boxes[:, :2]
        assert (sides > 2).all() and (sides <= 40).all()
    uniform = generate_digit_canvases(tmp_path / "c", 120, DigitCanvasConfig(seed=3, long_tail=0.0))
    flat = Counter(label for s in uniform for label in s.labels.tolist())
    assert flat.most_common()[0][1] < 3 * flat.most_common()[-1][1]


def test_written_set_reads_back_as_coco(tmp_path):
    path = write_digit_canvases(tmp_path, 10, DigitCanvasConfig(seed=1))
    data = read_dataset(path)
    assert len(data.images) == 10 and data.class_names == tuple("0123456789")


def test_budget_in_boxes():
    pool = [LabeledImage("x", torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)) for n in (3, 1, 4, 2)]
    assert select([2, 0, 1, 3], pool, 5, "boxes") == [2, 0]  # 4 boxes, then 7 >= 5
    assert select([2, 0, 1, 3], pool, 2, "images") == [2, 0]
    assert select([2, 0, 1, 3], pool, 20, "seconds", lambda i: 2 + 7 * len(pool[i].labels)) == [2]  # 30 s
    assert select([1, 3, 2], pool, 20, "seconds", lambda i: 2 + 7 * len(pool[i].labels)) == [1, 3]  # 9 + 16 s


def test_reach_and_summary_hand_computed():
    assert reach([10, 20, 30], [0.2, 0.4, 0.6], 0.5) == pytest.approx(25.0)
    assert reach([10, 20], [0.2, 0.3], 0.5) is None
    rows = []
    for strategy, maps in {"random": [0.2, 0.4, 0.5], "smart": [0.2, 0.5, 0.6]}.items():
        for cycle, value in enumerate(maps):
            rows.append({"strategy": strategy, "seed": 0, "cycle": cycle, "labeled_images": 10 * (cycle + 1),
                         "map50": value, "map": value / 2, "train_seconds": 1.0, "scoring_seconds": 0.5})  # fmt: skip
    table = summary(rows).set_index("strategy")
    # the area between the curves over 10..30 images: 0.05 x 10 + 0.1 x 10, over 20 images
    assert table.loc["smart", "gain_images"] == pytest.approx(100 * 0.075)
    # random ends at 0.5 with 30 images; smart reaches 0.5 at 20 images: a third saved
    assert table.loc["smart", "saved_images"] == pytest.approx(1 / 3)
    assert table.loc["smart", "gain_images_ci95"] is None and "gain_boxes" not in table  # one seed, no boxes


def test_gains_at_equal_boxes_are_paired_by_seed_with_an_interval():
    rows = []
    # smart buys twice the boxes per image: ahead at equal images, level at equal boxes
    for seed, offset in ((0, 0.0), (1, 0.02), (2, -0.01)):
        for strategy, per_image in (("random", 1), ("smart", 2)):
            for cycle in range(3):
                images = 10 * (cycle + 1)
                boxes = per_image * images
                rows.append({"strategy": strategy, "seed": seed, "cycle": cycle, "labeled_images": images,
                             "labeled_boxes": boxes, "map50": 0.01 * boxes + offset, "map": 0.0,
                             "train_seconds": 1.0, "scoring_seconds": 0.5})  # fmt: skip
    entry = summary(rows).set_index("strategy").loc["smart"]
    assert entry["gain_images"] > 5 and entry["seeds"] == 3
    assert entry["gain_boxes"] == pytest.approx(0.0, abs=1e-9)
    low, high = entry["gain_boxes_ci95"]
    assert low == pytest.approx(0.0, abs=1e-9) and high == pytest.approx(0.0, abs=1e-9)
    assert entry["gain_boxes_per_seed"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert len(entry["gain_images_per_seed"]) == 3 and min(entry["gain_images_per_seed"]) > 5
    # random ends at mean 0.3033 with 30 images and 30 boxes; smart gets there at 15 images, 30 boxes
    assert entry["saved_images"] == pytest.approx(0.5) and entry["saved_boxes"] == pytest.approx(0.0, abs=1e-9)


def test_seconds_per_box_carry_each_images_fixed_seconds():
    rows = []
    for strategy, per_image in (("random", 1), ("crowded", 2)):
        for cycle in range(2):
            images = 10 * (cycle + 1)
            boxes = per_image * images
            rows.append({"strategy": strategy, "seed": 0, "cycle": cycle, "labeled_images": images,
                         "labeled_boxes": boxes, "labeled_seconds": 2.0 * images + 7.0 * boxes,
                         "map50": 0.1 * cycle, "map": 0.0, "train_seconds": 1.0, "scoring_seconds": 0.5})  # fmt: skip
    table = summary(rows).set_index("strategy")
    # 2 s to open each image and 7 s per box: 9 s a box at one box an image, 8 s at two
    assert table.loc["random", "seconds_per_box"] == pytest.approx(9.0)
    assert table.loc["crowded", "seconds_per_box"] == pytest.approx(8.0)
    assert table.loc["random", "edits_per_box"] is None  # no review counted


def test_edits_per_box_pool_the_chosen_images_of_every_seed():
    rows = []
    for strategy, edits in (("random", (1, 3)), ("doubtful", (4, 6))):
        for seed, first in enumerate(edits):
            # cycle 1 chose only empty images (2 wrong boxes deleted); cycle 2, the last, chose nothing
            for cycle, boxes, edited in ((0, 10, first), (1, 0, 2), (2, None, None)):
                rows.append({"strategy": strategy, "seed": seed, "cycle": cycle, "labeled_images": 10 + cycle,
                             "map50": 0.1 * cycle, "map": 0.0, "train_seconds": 1.0, "scoring_seconds": 0.5,
                             "boxes_from_scratch": boxes, "edits_full_review": edited})  # fmt: skip
    table = summary(rows).set_index("strategy")
    assert table.loc["random", "edits_per_box"] == pytest.approx((4 + 4) / 20)
    assert table.loc["doubtful", "edits_per_box"] == pytest.approx((10 + 4) / 20)


def test_the_effort_table_splits_the_edits_and_reads_runs_made_before_the_split():
    common = {"chosen": 3, "boxes_from_scratch": 5, "edits_full_review": 4, "edits_cooperative": 4,
              "cooperative_accepted_boxes": 0, "cooperative_wrong_boxes_kept": 0, "pseudo_images": 0,
              "pseudo_precision": None}  # fmt: skip
    split = {"edits_added": 2, "edits_removed": 1, "edits_corrected": 1}
    rows = [{"strategy": "new", "seed": 0, **common, **split}, {"strategy": "old", "seed": 0, **common}]
    lines = effort_markdown(rows).splitlines()
    assert "missed objects drawn" in lines[0]
    assert lines[2] == "| new | 3 | 5 | 4 | 2 | 1 | 1 | 4 | 0 | 0 | 0 |  |"
    assert lines[3] == "| old | 3 | 5 | 4 |  |  |  | 4 | 0 | 0 | 0 |  |"
    assert "missed objects drawn" in effort_markdown(rows[1:])  # a run from before the split alone


def test_report_lists_each_seeds_final_map_in_seed_order():
    rows = [
        {"strategy": "random", "seed": seed, "cycle": cycle, "labeled_images": 10 * (cycle + 1), "map50": value,
         "map": value / 2, "train_seconds": 1.0, "scoring_seconds": 0.5}
        for seed, maps in ((1, [0.3, 0.7]), (0, [0.2, 0.5]))
        for cycle, value in enumerate(maps)
    ]  # fmt: skip
    assert summary(rows).loc[0, "final_map50_per_seed"] == [0.5, 0.7]
    assert "| random | 60.0 ± 14.1 | 50.0, 70.0 | +0.00 [+0.0, +0.0] |" in markdown(rows)


def test_simulation_smoke_runs_resumes_and_reports(tmp_path):
    config_file = tmp_path / "smoke.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "out_dir": str(tmp_path / "out"),
                "dataset": {"generate": {"count": 48, "seed": 0}},
                "test_fraction": 0.25,
                "seeds": [0],
                "initial": 6,
                "per_cycle": 6,
                "cycles": 2,
                "epochs_first": 2,
                "epochs_per_cycle": 1,
                "strategies": ["random", {"name": "entropy", "params": {"aggregation": "mean"}}],
            }
        )
    )
    assert cli.main(["simulate", "--config", str(config_file)]) == 0
    out = tmp_path / "out"
    rows = json.loads((out / "results.json").read_text())
    assert [(r["strategy"], r["cycle"], r["labeled_images"]) for r in rows] == [
        (s, c, 6 * (c + 1)) for s in ("random", "entropy") for c in range(3)
    ]
    assert all(0 <= r["map50"] <= 1 for r in rows)
    assert rows[1]["rule"] == "random" and rows[4]["rule"] == "entropy"
    assert (out / "map_vs_labels.png").stat().st_size > 1000 and "| random |" in (out / "report.md").read_text()
    # The report again from results.json alone, running nothing; without results, a clear error.
    (out / "report.md").unlink()
    assert cli.main(["simulate", "--config", str(config_file), "--report-only"]) == 0
    assert "| entropy |" in (out / "report.md").read_text() and json.loads((out / "results.json").read_text()) == rows
    assert cli.main(["simulate", "--config", str(config_file), "--report-only", "--out-dir", str(tmp_path)]) == 2
    assert "Cost model: 2 s per image opened, 7 s per box drawn" in (out / "report.md").read_text()
    for run in (rows[:3], rows[3:]):  # each run's human seconds add up, cycle by cycle
        assert run[0]["labeled_seconds"] == pytest.approx(2 * 6 + 7 * run[0]["labeled_boxes"], abs=0.1)
        for before, after in zip(run, run[1:]):
            assert before["seconds_from_scratch"] == pytest.approx(2 * 6 + 7 * before["boxes_from_scratch"], abs=0.1)
            assert after["labeled_seconds"] == pytest.approx(
                before["labeled_seconds"] + before["seconds_with_preannotations"], abs=0.2
            )
            assert before["held_out_images"] == round(0.2 * before["labeled_images"])  # the service's split
            assert before["display_threshold"] in (None, *GRID)
    # Same seed, same initial set for every strategy.
    first = json.loads((out / "runs" / "random__seed0" / "cycle_0.json").read_text())["labeled"]
    assert first == json.loads((out / "runs" / "entropy__seed0" / "cycle_0.json").read_text())["labeled"]
    # Resume: drop the last cycle of one run; only that cycle runs again.
    (out / "runs" / "entropy__seed0" / "cycle_2.json").unlink()
    config = SimulationConfig.load(config_file)
    again = simulate(config, progress=False)
    assert [r["train_seconds"] for r in again[:5]] == [r["train_seconds"] for r in rows[:5]]
    assert len(again) == 6
    write_report(again, out)


def test_bad_simulation_configs(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"out_dir": "x", "dataset": {}, "strategies": ["oracle"]}))
    with pytest.raises(ValueError, match="unknown strategies"):
        SimulationConfig.load(path)
    path.write_text(yaml.safe_dump({"out_dir": "x", "dataset": {}, "strategies": ["random", "random"]}))
    with pytest.raises(ValueError, match="distinct"):
        SimulationConfig.load(path)
    path.write_text(yaml.safe_dump({"out_dir": "x", "dataset": {}, "strategies": [{"name": "random", "oracle": "x"}]}))
    with pytest.raises(ValueError, match="oracle is one of"):
        SimulationConfig.load(path)


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "simulation").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_benchmark_config_loads(path):
    config = SimulationConfig.load(path)
    assert config.strategies and config.seeds


def test_a_strategys_training_fields_override_the_protocols(tmp_path):
    raw = {"out_dir": "x", "dataset": {}, "min_steps": 300, "strategies": ["random"]}
    raw["strategies"].append({"name": "random", "train": {"min_steps": 600}, "label": "longer"})
    path = tmp_path / "steps.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = SimulationConfig.load(path)
    plain, longer = (_plan(config, spec, 0, 0, [], _Labels([0], {}, [], spent=1.0)) for spec in config.strategies)
    assert (plain.train.min_steps, longer.train.min_steps) == (300, 600)
    assert plain.train.epochs == longer.train.epochs == config.epochs_first


def test_the_chosen_images_work_counted_four_ways():
    truth = LabeledImage("a", torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 60]]), torch.tensor([0, 1]))
    # A right box at 0.9, a second label on the same object at 0.5, a junk box at 0.35.
    boxes = torch.tensor([[0.0, 0, 20, 20], [0, 0, 20, 21], [80, 80, 95, 95]])
    det = Detections(boxes, torch.tensor([0, 2, 1]), torch.tensor([0.9, 0.5, 0.35]), (100, 100))
    display = Display(threshold=0.4, certain=0.8, nms_iou=0.7)
    work, labels = _label_chosen([0], [truth], {"a": det}, display, CostModel(), StrategySpec("random"), {})
    # calibrated: the 0.9 box checked, the object at 40 drawn -> 2 + 1.6 + 7
    assert work["seconds_with_preannotations"] == pytest.approx(10.6)
    assert work["seconds_cooperative"] == pytest.approx(9.0)  # the 0.9 box accepted unseen
    # fixed 0.3, no NMS across labels: checked + two wrong boxes deleted + one drawn
    assert work["seconds_fixed_threshold"] == pytest.approx(2 + 1.6 + 2 * 2 + 7)
    assert work["seconds_from_scratch"] == pytest.approx(16)
    assert work["cooperative_accepted_boxes"] == 1 and work["cooperative_wrong_boxes_kept"] == 0
    assert (work["edits_added"], work["edits_removed"], work["edits_corrected"]) == (1, 0, 0)
    assert work["edits_full_review"] == 1
    assert labels[0] is truth and FIXED_DISPLAY.nms_iou == 1.0


def test_the_oracle_ranks_by_the_models_true_errors_and_keeps_ties_in_order():
    box, far = [0.0, 0, 20, 20], [40.0, 40, 60, 60]
    truths = [LabeledImage(name, torch.tensor([box, far]), torch.tensor([0, 1])) for name in "abcd"]
    shown = {  # a: both right; b: one of two missed; c: one right, one wrong class; d: both right
        "a": Detections(torch.tensor([box, far]), torch.tensor([0, 1]), torch.tensor([0.9, 0.9]), (100, 100)),
        "b": Detections(torch.tensor([box]), torch.tensor([0]), torch.tensor([0.9]), (100, 100)),
        "c": Detections(torch.tensor([box, far]), torch.tensor([0, 2]), torch.tensor([0.9, 0.9]), (100, 100)),
        "d": Detections(torch.tensor([box, far]), torch.tensor([0, 1]), torch.tensor([0.9, 0.9]), (100, 100)),
    }
    display, cost = Display(threshold=0.3, certain=0.8), CostModel()
    # edit rates: a 0, b 1/2, c 1/2, d 0; per second: b 1/(2 + 1.6 + 7), c 1/(2 + 1.6 + 4)
    assert oracle_order([3, 0, 1, 2], truths, shown, display, cost, "edit_rate") == [1, 2, 3, 0]
    assert oracle_order([3, 0, 1, 2], truths, shown, display, cost, "edits_per_second") == [2, 1, 3, 0]


def test_box_level_review_and_self_labeling_trust_only_a_measured_or_chosen_certain_threshold():
    unmeasured = Display(threshold=0.3)
    assert unmeasured.certainty().certain == 1.0  # nothing certain until measured or set
    calibrated = Display(threshold=0.3, certain=0.7, calibrated=True)
    base = SimulationConfig(out_dir="unused", dataset={}, strategies=[]).base_display()
    assert base.certain == 1.0
    chosen = StrategySpec("random", cooperation={"certain": 0.7}).fixed_display(base)
    assert chosen.certain == 0.7  # a strategy's own threshold
    assert StrategySpec("random", cooperation={"uncertain": 0.2}).fixed_display(base).certain == 1.0
    boxes = torch.tensor([[0.0, 0, 20, 20], [50, 50, 70, 70]])
    left = {  # a: every shown box certain, saturated; b: one uncertain box
        "a": Detections(boxes, torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), (100, 100)),
        "b": Detections(boxes, torch.tensor([0, 1]), torch.tensor([0.9, 0.5]), (100, 100)),
    }
    assert [p.path for p in pseudo_labels(left, calibrated.certainty(), 5)] == ["a"]
    assert pseudo_labels(left, unmeasured.certainty(), 5) == []
    # A saturated score is not certain when nothing is: box-level review keeps it for people.
    edits, _ = oracle_edits(left["a"], LabeledImage("a", boxes, torch.tensor([0, 1])), unmeasured.certainty(), True)
    assert edits.checked == 2


def test_seconds_summary_hand_computed():
    def row(cycle, seed, scratch, calibrated, accepted=0, wrong=0):
        return {"strategy": "s", "seed": seed, "cycle": cycle, "chosen": 2, "seconds_from_scratch": scratch,
                "seconds_fixed_threshold": 2 * scratch, "seconds_with_preannotations": calibrated,
                "seconds_cooperative": calibrated, "cooperative_accepted_boxes": accepted,
                "cooperative_wrong_boxes_kept": wrong}  # fmt: skip

    rows = [row(0, 0, 10, 50), row(1, 0, 10, 4), row(1, 1, 30, 6, 40, 1), row(2, 0, 20, 10, 10, 0)]
    entry = seconds_summary(rows).iloc[0]
    # cycle 0 is left out; cycle 1 pools its seeds: 10 / 40; cycle 2: 10 / 20
    assert entry["mean_ratio_with_preannotations"] == pytest.approx((10 / 40 + 10 / 20) / 2)
    assert entry["worst_ratio_with_preannotations"] == pytest.approx(0.5)
    assert entry["mean_ratio_fixed_threshold"] == pytest.approx(2.0)
    assert entry["accepted_unseen_wrong_share"] == pytest.approx(1 / 50) and entry["seeds"] == 2


def test_a_budget_in_seconds_buys_that_much_of_a_persons_time(tmp_path):
    config = SimulationConfig(
        out_dir=str(tmp_path / "out"), dataset={"generate": {"count": 32, "seed": 0}}, strategies=[StrategySpec("random")],
        seeds=[0], initial=60, per_cycle=60, cycles=1, budget_unit="seconds", epochs_first=1, epochs_per_cycle=1,
    )  # fmt: skip
    config.check()
    first, last = simulate(config, progress=False)
    # 2 s to open a canvas, 7 s per digit (1 to 4 digits): the last image bought costs at most 30 s
    assert 60 <= first["labeled_seconds"] < 60 + 30
    assert 60 <= first["seconds_with_preannotations"] < 60 + 30
    assert last["labeled_seconds"] == pytest.approx(
        first["labeled_seconds"] + first["seconds_with_preannotations"], abs=0.2
    )
