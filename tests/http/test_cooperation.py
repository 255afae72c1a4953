"""Box-level human-machine cooperation (ASM, CEAL): the certainty thresholds, the three ASM
selection rules, and how pre-annotations show certain and uncertain boxes."""

import json

import pytest
import torch

from al_core.cooperation import oracle_edits, pseudo_labels
from al_core.pool import ScoredPool
from al_core.scoring import create_scorer
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.types import Certainty, Detections, LabeledImage
from exporters.label_config import parse_label_config
from exporters.label_studio_regions import detections_to_regions

from ..conftest import SHAPES_CONFIG


def det(scores, labels=None) -> Detections:
    n = len(scores)
    return Detections(
        boxes=torch.tensor([[10.0 * i, 0.0, 10.0 * i + 8, 8.0] for i in range(n)]).reshape(-1, 4),
        labels=torch.tensor(labels if labels is not None else [0] * n, dtype=torch.int64),
        scores=torch.tensor(scores, dtype=torch.float32),
        image_size=(100, 50),
    )


def test_the_thresholds_split_boxes_at_their_edges():
    certainty = Certainty(uncertain=0.3, certain=0.7)
    # 0.7 is certain, 0.3 is uncertain, just below 0.3 is not shown.
    assert certainty.split(torch.tensor([0.7, 0.69, 0.3, 0.2999, 0.95])) == (2, 2)
    assert certainty.al_ratio(torch.tensor([0.7, 0.5])) == 0.5
    assert certainty.al_ratio(torch.tensor([0.1])) == 1.0  # nothing shown: a person must look
    assert certainty.al_ratio(torch.tensor([0.8, 0.9])) == 0.0
    for bad in ((0.7, 0.3), (0.5, 0.5), (-0.1, 0.5), (0.2, 1.2)):
        with pytest.raises(ValueError, match="uncertain < certain"):
            Certainty(*bad)


IMAGES = {
    "sure": [0.95, 0.9],  # AL 0, SL (0.95 + 0.9) / 2 = 0.925
    "mixed": [0.9, 0.5, 0.4, 0.1],  # AL 2/3, SL 0.9 / 3 = 0.3
    "half": [0.8, 0.6],  # AL 0.5, SL 0.4
    "faint": [0.35],  # AL 1, SL 0
    "empty": [],  # AL 1 (a person must look), SL 0
}


def asm_scores(images: dict, seed: int = 0, **params) -> list:
    scorer = create_scorer("sl_al_ratio", **params)
    context = ScoringContext(seed=seed)
    return scorer.finish(scorer.score_batch([PoolImage(k, None, det(v)) for k, v in images.items()], context), context)


def rank(rule: str, k: int, **params) -> list[str]:
    scores = asm_scores(IMAGES, rule=rule, **{"certain": 0.7, "uncertain": 0.3, **params})
    pool = ScoredPool(list(IMAGES), scores, "sl_al_ratio", rule, "v1", 0)
    return [image.key for image in pool.select(k).images]


def test_asm_topk_v1_ranks_by_al_ratio_then_by_the_doubt_of_the_uncertain_boxes():
    # "faint" and "empty" tie at AL ratio 1; faint's uncertain box (0.35) has entropy, empty has none.
    assert rank("al_ratio", 5) == ["faint", "empty", "mixed", "half", "sure"]
    assert rank("al_ratio", 2) == ["faint", "empty"]


def test_asm_topk_v2_asks_people_only_above_the_threshold():
    assert rank("threshold", 5, min_al_ratio=0.6) == ["faint", "empty", "mixed"]
    assert rank("threshold", 2, min_al_ratio=0.6) == ["faint", "empty"]
    assert rank("threshold", 5, min_al_ratio=0.5) == ["faint", "empty", "mixed", "half"]
    assert rank("threshold", 5, min_al_ratio=0.0) == rank("al_ratio", 5)


def test_asm_topk_v2_rescoring_moves_an_image_out_of_the_queue():
    """The same image, uncertain under the old model and certain under the new one."""
    fixed = {"rule": "threshold", "min_al_ratio": 0.5, "certain": 0.7, "uncertain": 0.3}
    (old,) = asm_scores({"x": [0.5, 0.6]}, **fixed)
    (new,) = asm_scores({"x": [0.9, 0.8]}, **fixed)
    assert old.for_people and not new.for_people


def test_asm_thresholds_come_from_the_pool_and_ties_break_by_seed():
    # A weak model: no score reaches 0.7, so fixed thresholds would tie every image at AL ratio 1.
    weak = {
        "a": [0.6, 0.55, 0.5, 0.45, 0.42, 0.4],
        "b": [0.32, 0.31],
        "c": [0.6, 0.31],
        "d": [0.32, 0.31],
        "e": [0.32, 0.31],
    }
    scores = dict(zip(weak, asm_scores(weak), strict=True))
    certain = scores["a"].parts["certain_threshold"]
    assert 0.3 < certain < 0.7  # the median shown score
    assert scores["a"].value == 0.0 and scores["b"].value == 1.0 and scores["c"].value == 0.5
    # b, d and e tie on both keys: the seed orders them, not their names.
    orders = set()
    for seed in range(8):
        by_name = dict(zip(weak, asm_scores(weak, seed=seed), strict=True))
        ranked = sorted(weak, key=lambda k, s=by_name: -s[k].normalized)
        assert set(ranked[:3]) == {"b", "d", "e"}
        orders.add(tuple(ranked[:3]))
    assert len(orders) > 1


def test_asm_topk_v3_ranks_by_lowest_sl_score():
    assert rank("sl_score", 5)[:3] in (["empty", "faint", "mixed"], ["faint", "empty", "mixed"])
    assert rank("sl_score", 5)[3:] == ["half", "sure"]


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="unknown sl_al_ratio rule"):
        create_scorer("sl_al_ratio", rule="v4")
    with pytest.raises(ValueError, match="min_al_ratio"):
        create_scorer("sl_al_ratio", rule="threshold", min_al_ratio=2)


def test_pre_annotations_show_uncertain_boxes_first_and_mark_each():
    config = parse_label_config(SHAPES_CONFIG)
    regions = detections_to_regions(
        det([0.95, 0.45, 0.75, 0.2, 0.31], labels=[0, 1, 2, 0, 0]),
        ("circle", "square", "triangle"),
        config,
        Certainty(uncertain=0.3, certain=0.7),
    )
    assert [r["score"] for r in regions] == [0.31, 0.45, 0.95, 0.75]  # uncertain (least sure first), then certain
    assert [r["meta"]["certainty"] for r in regions] == ["uncertain", "uncertain", "certain", "certain"]
    assert all(r["meta"]["text"][0].startswith(("check this box", "model is sure")) for r in regions)


def test_each_project_sets_its_thresholds_through_setup(make_client, trained_detector, shapes):
    client = make_client(detector=trained_detector, local_files_root=str(shapes["root"]))
    task = {"id": 1, "data": {"picture": shapes["test"][0].path}}

    def predict(project: str) -> dict:
        body = {"tasks": [task], "project": project}
        return client.post("/predict", json=body).get_json()["results"][0]

    strict = {"uncertain_threshold": 0.05, "certain_threshold": 0.999}
    for project, extra in (("3.1", strict), ("4.1", '{"uncertain_threshold": 0.05, "certain_threshold": 0.06}')):
        answer = client.post("/setup", json={"project": project, "schema": SHAPES_CONFIG, "extra_params": extra})
        assert answer.status_code == 200
    everything_checked, nothing_checked = predict("3.1"), predict("4.1")
    shown = len(everything_checked["result"])
    assert shown > 0 and shown == len(nothing_checked["result"])  # the same boxes shown, >= 0.05
    assert everything_checked["uncertain_boxes"] == shown and everything_checked["al_ratio"] == 1.0
    assert {r["meta"]["certainty"] for r in everything_checked["result"]} == {"uncertain"}
    assert nothing_checked["al_ratio"] < 1.0 and nothing_checked["uncertain_boxes"] < shown
    scores = [r["score"] for r in nothing_checked["result"]]
    certain = [r["meta"]["certainty"] == "certain" for r in nothing_checked["result"]]
    assert certain == sorted(certain)  # uncertain ones first
    for bad, message in (
        ({"certain_threshold": "high"}, "must be a number"),
        ({"uncertain_threshold": 0.8, "certain_threshold": 0.7}, "uncertain < certain"),
        ("{not json", "JSON object"),
    ):
        answer = client.post("/setup", json={"project": "3.1", "schema": SHAPES_CONFIG, "extra_params": bad})
        assert answer.status_code == 400 and message in answer.get_json()["error"]
    assert predict("3.1")["al_ratio"] == 1.0  # a refused /setup changed nothing
    assert scores == [r["score"] for r in predict("4.1")["result"]]


def truth(boxes, labels) -> LabeledImage:
    return LabeledImage("img.png", torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels))


def boxes_det(boxes, labels, scores) -> Detections:
    return Detections(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels),
        torch.tensor(scores, dtype=torch.float32),
        (100, 100),
    )


def test_pseudo_labels_take_only_all_certain_images_surest_first():
    certainty = Certainty(0.3, 0.7)
    detections = {
        "a.png": boxes_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], [0.9, 0.8]),  # least sure box 0.8
        "b.png": boxes_det([[0, 0, 10, 10]], [2], [0.95]),  # 0.95
        "c.png": boxes_det([[0, 0, 10, 10], [5, 5, 9, 9]], [0, 0], [0.9, 0.5]),  # one uncertain box
        "d.png": boxes_det([[0, 0, 10, 10]], [0], [0.1]),  # nothing shown: not self-labelable
        "e.png": boxes_det([[0, 0, 10, 10], [1, 1, 2, 2]], [1, 1], [0.75, 0.05]),  # the hidden box does not count
    }
    chosen = pseudo_labels(detections, certainty, max_images=10)
    assert [p.path for p in chosen] == ["b.png", "a.png", "e.png"]
    assert chosen[1].labels.tolist() == [0, 1] and len(chosen[2].labels) == 1
    assert [p.path for p in pseudo_labels(detections, certainty, max_images=2)] == ["b.png", "a.png"]


def test_oracle_edits_hand_counted():
    # Objects: a circle at A, a square at B, a triangle at C.
    gt = truth([[0, 0, 20, 20], [40, 40, 60, 60], [70, 0, 90, 20]], [0, 1, 2])
    det = boxes_det(
        [
            [0, 0, 20, 20],  # certain, right: circle at A
            [40, 40, 60, 60],  # certain, WRONG class (triangle) at B
            [70, 0, 86, 16],  # uncertain, right class, loose (IoU 0.64): corrected
            [0, 60, 10, 70],  # uncertain, nothing there: removed
            [50, 80, 60, 90],  # below 0.3: not shown
        ],
        [0, 2, 2, 0, 1],
        [0.9, 0.8, 0.5, 0.4, 0.1],
    )
    certainty = Certainty(0.3, 0.7)
    review, label = oracle_edits(det, gt, certainty, cooperative=False)
    assert (review.added, review.removed, review.corrected, review.checked) == (0, 1, 2, 1)
    assert review.from_scratch == 3 and review.edits == 3 and label is gt
    coop, coop_label = oracle_edits(det, gt, certainty, cooperative=True)
    # Certain boxes are accepted unseen: the wrong class at B stays; only the two uncertain are edited.
    assert (coop.added, coop.removed, coop.corrected, coop.checked) == (0, 1, 1, 0) and coop.edits == 2
    assert sorted(coop_label.labels.tolist()) == [0, 2, 2]  # the square at B is labeled a triangle
    missed = oracle_edits(boxes_det([], [], []), gt, certainty, cooperative=True)[0]
    assert missed.added == 3 and missed.edits == 3  # nothing shown: every object drawn


def test_pseudo_labels_never_count_as_human_labels(tmp_path):
    """A two-cycle simulation with self-labeling: human label counts ignore pseudo-labels, and the
    pseudo-labels are chosen afresh by each cycle's model."""
    from al_core.simulation import SimulationConfig, StrategySpec, simulate

    config = SimulationConfig(
        out_dir=str(tmp_path / "sim"),
        dataset={"generate": {"count": 40, "seed": 0}},
        strategies=[
            StrategySpec(
                "sl_al_ratio", label="coop", cooperation={"self_labeling": 30, "uncertain": 0.02, "certain": 0.05}
            )
        ],
        seeds=[0],
        initial=8,
        per_cycle=4,
        cycles=2,
        epochs_first=2,
        epochs_per_cycle=1,
        test_fraction=0.25,
    )
    config.check()
    rows = simulate(config, progress=False)
    assert [r["labeled_images"] for r in rows] == [8, 12, 16]  # humans only
    assert rows[0]["pseudo_images"] == 0 and rows[1]["pseudo_images"] > 0  # chosen by the cycle-0 model
    state = json.loads((tmp_path / "sim" / "runs" / "coop__seed0" / "cycle_1.json").read_text())
    humans = {p for p in state["labels_next"]}
    assert len(humans) == 16 and not {p["path"] for p in state["pseudo_next"]} & {
        state["labels_next"][i]["path"] for i in humans
    }
    for row in rows[:-1]:
        assert row["edits_cooperative"] <= row["edits_full_review"] + row["boxes_from_scratch"]
