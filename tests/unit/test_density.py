"""Information density: doubt weighted by how typical of the pool an image is."""

import pytest
import torch

from al_core.scoring import create_scorer
from al_core.scoring.base import PoolImage, ScoringContext
from al_core.scoring.density import mean_similarity
from al_core.selection import ranking
from tests.unit.test_typicality import image  # one box per probability row, the given features


def run(scorer, features, probs):
    batch = [PoolImage(str(i), None, image(f, p)) for i, (f, p) in enumerate(zip(features, probs, strict=True))]
    context = ScoringContext()
    # Two batches: the density is the whole pool's, not one batch's.
    scores = scorer.score_batch(batch[:3], context) + scorer.score_batch(batch[3:], context)
    scores = scorer.finish(scores, context)
    return scores, ranking([b.key for b in batch], scores)


def test_mean_similarity_is_highest_in_the_crowd_and_lowest_for_the_opposite_point():
    crowd = torch.tensor([[1.0, 0.1], [1.0, -0.1], [1.0, 0.0], [0.9, 0.05]])
    values = mean_similarity(torch.cat([crowd, torch.tensor([[-1.0, 0.0]])]))
    assert values.min() >= 0 and values.max() <= 1
    assert int(values.argmin()) == 4 and values[4] < 0.3
    assert (values[:4] > 0.6).all()
    # Scale does not matter (cosine), and a lone point is as typical as can be.
    assert torch.allclose(mean_similarity(crowd * 7), mean_similarity(crowd), atol=1e-6)
    assert mean_similarity(crowd[:1]).tolist() == [1.0]
    # The same as the mean over every pair, without the N x N matrix.
    points = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(points, dim=-1)
    pairs = (1 + unit @ unit.T) / 2
    assert torch.allclose(mean_similarity(points), (pairs.sum(1) - pairs.diagonal()) / 39, atol=1e-5)


def test_an_uncertain_outlier_ranks_below_an_as_uncertain_image_of_the_crowd():
    """Images 0 and 4 are equally in doubt (0.5/0.5); 4 points away from the rest of the pool,
    so 0 ranks first. Without the weight (beta 0) the order is entropy's own."""
    features = [[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-1.0, 0.2]]
    probs = [[[0.5, 0.5]], [[0.9, 0.1]], [[0.95, 0.05]], [[0.8, 0.2]], [[0.5, 0.5]]]
    entropy = {"aggregation": "mean", "boxes": "all"}
    scores, order = run(create_scorer("information_density", within_params=entropy), features, probs)
    assert order[0] == 0 and order.index(4) > order.index(3)
    assert scores[0].scorer == "information_density"
    assert scores[0].parts["doubt"] == pytest.approx(scores[4].parts["doubt"])
    assert scores[4].parts["density"] < scores[0].parts["density"]
    assert scores[0].value == pytest.approx(scores[0].parts["doubt"] * scores[0].parts["density"])
    assert all(0 <= s.normalized <= 1 for s in scores)

    plain, plain_order = run(create_scorer("entropy", **entropy), features, probs)
    flat, flat_order = run(create_scorer("information_density", within_params=entropy, beta=0.0), features, probs)
    assert flat_order == plain_order
    assert [s.value for s in flat] == pytest.approx([s.value for s in plain])


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="beta"):
        create_scorer("information_density", beta=-1)
    with pytest.raises(ValueError, match="its own"):
        create_scorer("information_density", within="information_density")
    with pytest.raises(ValueError, match="unknown scorer"):
        create_scorer("information_density", within="nope")
