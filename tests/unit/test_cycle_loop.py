"""The one cycle loop (al_core.cycle_loop) that the service and the simulator both run: its
steps in order, the held-out rule, what it scores and the order people get."""

import pytest

from al_core.annotation_cost import CostModel
from al_core.cycle_loop import CycleHooks, CycleLabels, CyclePlan, calibration, run_cycle
from al_core.datasets import SHAPE_CLASSES
from al_core.detectors import Detector
from al_core.display import Display
from al_core.priority import PriorityRule
from al_core.training import TrainConfig


class Recorder(CycleHooks):
    def __init__(self):
        self.calls, self.stages = [], []

    def progress(self, fraction, stage):
        self.stages.append((fraction, stage))

    def after_train(self, detector, trained):
        self.calls.append(("after_train", trained.metrics["labeled"], trained.metrics["held_out"]))
        return detector

    def after_score(self, result):
        self.calls.append(("after_score", len(result.scored)))


def plan(**changes) -> CyclePlan:
    values = dict(strategy="entropy", train=TrainConfig(epochs=1, batch_size=4), cost=CostModel(), display=Display())
    values.update(changes)
    return CyclePlan(**values)


@pytest.fixture(scope="module")
def fresh():
    return lambda: Detector.create("cpu_preset", SHAPE_CLASSES)


def test_one_cycle_trains_with_a_held_out_share_then_scores_the_pool_in_peoples_order(shapes, fresh):
    samples, pool = shapes["train"][:10], [s.path for s in shapes["train"][10:16]]
    recent = {s.path for s in samples[6:]}
    hooks = Recorder()
    result = run_cycle(CycleLabels(samples, recent, pool), fresh(), plan(params={"aggregation": "mean"}, seed=3), hooks)
    # 10 labels: 2 held out (the newest first), trained on 8, then a last pass over all 10
    assert hooks.calls == [("after_train", 10, 2), ("after_score", 6)]
    assert result.trained.metrics["final_pass_epochs"] == 1 and len(result.trained.held_out) == 2
    assert {h.path for h in result.trained.held_out} <= recent
    # under CALIBRATION_MIN_IMAGES (5) held out: the plan's thresholds, and a note why
    assert result.trained.display == Display() and "under CALIBRATION_MIN_IMAGES" in str(result.trained.metrics)
    assert sorted(image.path for image in result.scored) == sorted(pool)
    people = [image.score.normalized for image in result.for_people]
    assert people == sorted(people, reverse=True) and len(people) == 6
    for image in result.scored:  # what a person is shown: the display's boxes of the candidates
        assert image.shown.boxes.tolist() == Display().shown(image.detections).boxes.tolist()
        assert image.detections.box_features is None and image.detections.class_probs is None
    fractions = [fraction for fraction, _ in hooks.stages]
    assert fractions == sorted(fractions) and any("last pass" in stage for _, stage in hooks.stages)


def test_without_a_pool_nothing_is_scored_and_the_hooks_still_run(shapes, fresh):
    hooks = Recorder()
    result = run_cycle(CycleLabels(shapes["train"][:4]), fresh(), plan(), hooks)
    # under 5 labels nothing is held out: no last pass, figures on the training images
    assert hooks.calls == [("after_train", 4, 0), ("after_score", 0)]
    assert result.trained.metrics["evaluated_on"] == "training images"
    assert "final_pass_epochs" not in result.trained.metrics and result.order == []


def test_fixed_thresholds_are_what_people_get_with_the_draw_and_near_copy_rules_on(shapes, fresh):
    fixed = Display(threshold=0.05, certain=0.9)
    samples = shapes["train"][:6]
    pool = [s.path for s in shapes["train"][20:24]]
    rule = PriorityRule(near_duplicates=True, sampling="power")
    result = run_cycle(CycleLabels(samples, pool=pool), fresh(), plan(fixed_display=fixed, priority=rule), Recorder())
    assert result.trained.display == fixed
    assert sorted(image.path for image in result.scored) == sorted(pool)
    assert all("informativeness" in image.score.parts for image in result.scored)  # the draw ran


def test_calibration_needs_enough_held_out_images(shapes, fresh):
    display, about = calibration(fresh(), shapes["test"][:4], plan(calibration_min_images=5))
    assert display == Display() and about["calibration"]["images"] == 4
    display, about = calibration(fresh(), shapes["test"][:6], plan(calibration_min_images=5))
    assert about["calibration"]["images"] == 6 and Display.from_dict(about["display"]) == display
