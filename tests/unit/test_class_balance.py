"""bench/class_balance.py: the rare/common split and each half's boxes and AP."""

import pytest
import torch

from al_core.types import LabeledImage
from bench.class_balance import halves, pool_shares, rare_classes, report


def image(*labels):
    return LabeledImage("x", torch.zeros(len(labels), 4), torch.tensor(labels))


def test_rare_classes_are_those_below_the_median_share_of_the_pool():
    pool = [image(0, 0, 0, 0), image(1, 1, 2), image(3)]
    shares = pool_shares(pool, 4)
    assert shares == pytest.approx([4 / 8, 2 / 8, 1 / 8, 1 / 8])
    assert rare_classes(shares) == {2, 3}


def test_halves_sum_boxes_and_average_the_defined_ap():
    run = {"boxes_per_class": [10, 4, 1, 0], "ap50_per_class": [0.9, 0.7, 0.2, None]}
    assert halves(run, {2, 3}) == pytest.approx(
        {"rare_boxes": 1, "rare_ap50": 0.2, "common_boxes": 14, "common_ap50": 0.8}
    )


def test_report_gives_each_strategys_means_over_seeds_and_the_rarest_class():
    def run(map50, boxes, ap):
        return {"map50": map50, "boxes_per_class": boxes, "ap50_per_class": ap}

    record = {
        "class_names": ["a", "b", "c"],
        "pool_share": [0.6, 0.3, 0.1],
        "rare": [2],
        "runs": {"random": {"1": run(0.8, [10, 6, 2], [0.9, 0.8, 0.4]), "0": run(0.6, [12, 4, 4], [0.9, 0.7, None])}},
    }
    lines = report(record)
    assert "| random | 1 | 80.0 | 2 | 16 | 40.0 | 85.0 |" in lines  # the per-seed rows
    # means over seeds 0 and 1: rare boxes 3, common 16; the rarest class 'c' has AP on seed 1 only
    assert "| random | 70.0 | 3 / 16 | 40.0 / 82.5 | 3.0 (4, 2) | 40.0 (-, 40) |" in lines
