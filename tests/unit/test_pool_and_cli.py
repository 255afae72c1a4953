"""Scoring a pool end to end: every strategy through `python -m al_core score` on a folder of
images with the trained CPU-preset checkpoint; the cold-start rule; influence; CSV output."""

import pandas as pd
import pytest
import torch

from al_core import cli
from al_core.datasets import SHAPE_CLASSES, generate_shapes
from al_core.detectors import Detector
from al_core.pool import COLD_START_RULE, score_pool
from al_core.scoring import SCORERS, ScoringContext


@pytest.fixture(scope="module")
def pool_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    generate_shapes(folder, 24, seed=7)
    return folder


@pytest.mark.parametrize("strategy", sorted(SCORERS))
def test_every_strategy_ranks_a_folder_from_the_command_line(
    strategy, trained_checkpoint, shapes_coco, pool_folder, tmp_path
):
    out = tmp_path / f"{strategy}.csv"
    command = ["score", "--checkpoint", str(trained_checkpoint), "--images", str(pool_folder), "--strategy", strategy]
    command += ["--labeled", str(shapes_coco), "--budget", "5", "--out", str(out)]
    if strategy == "weighted":
        command += ["--param", "weights={'entropy': 2.0, 'coreset': 1.0}"]
    assert cli.main(command) == 0
    table = pd.read_csv(out)
    assert len(table) == 24 and table["image"].nunique() == 24
    assert table["score"].is_monotonic_decreasing
    assert list(table["rank"]) == list(range(1, 25))
    assert (table["model_version"] == "shapes-v1").all() and (table["rule"] == strategy).all()
    assert table["score"].between(0, 1).all()


def test_scores_are_deterministic_under_a_seed(trained_detector, pool_folder):
    paths = sorted(str(p) for p in pool_folder.glob("*.png"))
    first = score_pool(trained_detector, paths, "random", context=ScoringContext(seed=5), batch_size=5)
    again = score_pool(trained_detector, paths, "random", context=ScoringContext(seed=5), batch_size=7)
    assert [s.value for s in first.scores] == [s.value for s in again.scores]
    entropy = [score_pool(trained_detector, paths, "entropy", batch_size=b).scores for b in (4, 24)]
    assert [s.value for s in entropy[0]] == pytest.approx([s.value for s in entropy[1]], abs=1e-6)


def test_untrained_head_falls_back_to_coreset_and_says_so(pool_folder):
    torch.manual_seed(0)
    fresh = Detector.create("cpu_preset", SHAPE_CLASSES)
    paths = sorted(str(p) for p in pool_folder.glob("*.png"))
    scored = score_pool(fresh, paths, "entropy", context=ScoringContext(budget=4))
    assert scored.rule == COLD_START_RULE and scored.strategy == "entropy"
    selection = scored.select(4)
    assert all(item.score.scorer == "coreset" for item in selection.images)
    # Strategies that need no trained head run as asked.
    assert score_pool(fresh, paths, "random").rule == "random"


def test_influence_of_a_labeled_image_on_itself_is_its_gradient_norm(trained_detector, shapes):
    """With the labeled set = one image and pseudo-labels = its true boxes, grad L(z) is the
    labeled gradient itself, so the score is exactly its norm (Cauchy-Schwarz: the largest
    value any image with a gradient that long can get)."""
    from al_core.detectors.detector import to_tensor
    from al_core.detectors.registry import DETECTORS
    from al_core.images import load_rgb
    from al_core.scoring import PoolImage, create_scorer
    from al_core.scoring.influence import last_layer_gradient, loss_mode
    from al_core.types import Detections

    sample = shapes["train"][0]
    image = load_rgb(sample.path)
    truth_as_detections = Detections(sample.boxes, sample.labels, torch.ones(len(sample.labels)), image.size)
    scorer = create_scorer("influence", hessian="identity")
    context = ScoringContext(detector=trained_detector, labeled=[sample])
    [score] = scorer.score_batch([PoolImage(sample.path, image, truth_as_detections)], context)
    target = {"boxes": sample.boxes, "labels": sample.labels + 1}
    with loss_mode(trained_detector.model):
        prefixes = DETECTORS["cpu_preset"].last_layers
        gradient = last_layer_gradient(trained_detector.model, prefixes, [to_tensor(image)], [target])
    assert score.value == pytest.approx(float(gradient.norm()), rel=1e-4)
    assert score.normalized > 0.5 and score.parts["pseudo_boxes"] == len(sample.labels)
    other = shapes["train"][1]
    [score_other] = scorer.score_batch([PoolImage(other.path, load_rgb(other.path), truth_as_detections)], context)
    assert score_other.value != pytest.approx(score.value)
    # The diagonal Fisher estimate: s = g / (g^2 + mean(g^2)), score = s . g / ||s||.
    diagonal = create_scorer("influence").score_batch([PoolImage(sample.path, image, truth_as_detections)], context)
    s = gradient / (gradient.pow(2) + gradient.pow(2).mean())
    assert diagonal[0].value == pytest.approx(float(s @ gradient / s.norm()), rel=1e-3)
    with pytest.raises(ValueError, match="hessian"):
        create_scorer("influence", hessian="lissa")


def test_scorers_that_need_more_say_what(trained_detector, pool_folder):
    paths = sorted(str(p) for p in pool_folder.glob("*.png"))[:2]
    with pytest.raises(ValueError, match="labeled images"):
        score_pool(trained_detector, paths, "discriminative")
    no_head = Detector.create("cpu_preset", SHAPE_CLASSES)
    no_head.mark_trained()
    with pytest.raises(ValueError, match="loss-prediction head"):
        score_pool(no_head, paths, "loss_prediction")
    with pytest.raises(ValueError, match="unknown scorer"):
        score_pool(trained_detector, paths, "oracle")
    with pytest.raises(ValueError, match="bad parameters"):
        score_pool(trained_detector, paths, "entropy", {"temperature": 2})


def test_cli_reports_bad_input_clearly(tmp_path, capsys, trained_checkpoint):
    code = cli.main(
        ["score", "--checkpoint", str(trained_checkpoint), "--images", str(tmp_path / "nope"), "--out", "x.csv"]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_weighted_combination_of_scorers(trained_detector, pool_folder):
    paths = sorted(str(p) for p in pool_folder.glob("*.png"))[:8]
    context = ScoringContext(budget=3, seed=2)
    weighted = score_pool(trained_detector, paths, "weighted", {"weights": {"entropy": 2.0, "random": 1.0}}, context)
    entropy = score_pool(trained_detector, paths, "entropy", context=ScoringContext(seed=2)).scores
    random = score_pool(trained_detector, paths, "random", context=ScoringContext(seed=2)).scores
    for w, e, r in zip(weighted.scores, entropy, random):
        assert w.value == pytest.approx((2 * e.normalized + r.normalized) / 3)
        assert w.parts == pytest.approx({"entropy": e.normalized, "random": r.normalized})
    with pytest.raises(ValueError, match="weights"):
        score_pool(trained_detector, paths, "weighted", {"weights": {}})


def test_inverse_frequency_scoring_counts_the_labeled_boxes_of_each_class(trained_detector, shapes, pool_folder):
    paths = sorted(str(p) for p in pool_folder.glob("*.png"))[:6]
    labeled = shapes["train"][:12]
    context = ScoringContext(labeled=labeled)
    scored = score_pool(trained_detector, paths, "entropy", {"aggregation": "inverse_frequency"}, context)
    expected = torch.bincount(torch.cat([s.labels for s in labeled]), minlength=3)
    assert context.class_counts.tolist() == expected.tolist()
    assert all(s.aggregation == "inverse_frequency" for s in scored.scores)


def test_class_balanced_scoring_measures_class_quality_on_the_labeled_images(trained_detector, shapes, pool_folder):
    paths = sorted(str(p) for p in pool_folder.glob("*.png"))[:6]
    context = ScoringContext(labeled=shapes["train"][:12])
    scored = score_pool(trained_detector, paths, "entropy", {"aggregation": "class_balanced"}, context)
    assert context.class_quality.shape == (3,) and (context.class_quality > 0.3).all()
    assert all(s.aggregation == "class_balanced" for s in scored.scores)
