"""Learning loss: the ranking loss, the head on a toy problem, per-image detector losses."""

import pytest
import torch
from PIL import Image, ImageDraw

from al_core.detectors import Detector
from al_core.detectors.detector import to_tensor
from al_core.detectors.loss_head import LossPredictionHead, pair_ranking_loss
from al_core.training import per_image_losses


def test_pair_ranking_loss_hand_computed():
    predicted = torch.tensor([2.0, 0.5, 1.0, 0.0])
    true = torch.tensor([3.0, 1.0, 2.0, 5.0])
    # Every pair i < j: (0, 1) and (0, 2) are ranked right by at least the margin -> 0;
    # (0, 3): true 3 < 5, pred 2 - 0 = 2 -> 2 + 1 = 3; (1, 2): 1 < 2, 0.5 - 1 -> 0.5;
    # (1, 3): 1 < 5, 0.5 - 0 -> 1.5; (2, 3): 2 < 5, 1 - 0 -> 2.
    assert pair_ranking_loss(predicted, true).item() == pytest.approx((3 + 0.5 + 1.5 + 2) / 6)
    assert pair_ranking_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == 0.0


def _spearman(a, b):
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_loss_head_learns_to_rank_on_a_toy_problem():
    """True loss = brightness of level 0 + contrast of level 1; the head must learn the order."""
    torch.manual_seed(0)

    def batch(n):
        maps = [torch.randn(n, 8, 4, 4) + torch.randn(n, 1, 1, 1), torch.randn(n, 4, 2, 2) * torch.rand(n, 1, 1, 1) * 3]
        loss = maps[0].mean(dim=(1, 2, 3)) + maps[1].std(dim=(1, 2, 3))
        return maps, loss

    head = LossPredictionHead([8, 4], hidden=32)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(400):
        maps, loss = batch(16)
        ranking = pair_ranking_loss(head(maps), loss)
        optimizer.zero_grad()
        ranking.backward()
        optimizer.step()
    maps, loss = batch(200)
    with torch.no_grad():
        assert _spearman(head(maps), loss) > 0.6


def _one_square_images(count):
    """Same layout (one 24 px square at the same place), different colours and backgrounds."""
    images, targets = [], []
    for i in range(count):
        image = Image.new("RGB", (128, 128), (40 * i, 90, 200 - 30 * i))
        ImageDraw.Draw(image).rectangle([40, 40, 64, 64], fill=(250, 250 - 50 * i, 20))
        images.append(to_tensor(image))
        targets.append({"boxes": torch.tensor([[40.0, 40, 64, 64]]), "labels": torch.tensor([1])})
    return images, targets


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "cpu_preset"])
def test_per_image_losses_average_to_torchvision_batch_loss(name):
    """RetinaNet averages per-image losses; FCOS divides by the batch's foreground count,
    equal per image here (same layout), so both batch losses are the mean of per-image ones."""
    torch.manual_seed(0)
    detector = Detector.create(name, ["square"], pretrained="none", image_size=128)
    images, targets = _one_square_images(3)
    detector.model.train()
    # Batch statistics would differ between a batch of 3 and of 1; pretrained backbones freeze
    # them (torchvision's FrozenBatchNorm2d), and so does this test.
    for module in detector.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    batch_loss = sum(detector.model(images, targets).values())
    per_image, maps = per_image_losses(detector, images, targets)
    detector.model.eval()
    assert per_image.shape == (3,) and len(maps) == 3
    assert per_image.mean().item() == pytest.approx(batch_loss.item(), rel=1e-4)
    assert per_image.std() > 0  # the images really differ


def test_trained_loss_head_round_trips_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    detector = Detector.create("cpu_preset", ["square"], loss_head=True)
    path = tmp_path / "ll.pt"
    detector.save(path, "ll-v1")
    loaded = Detector.load(path)
    image = Image.new("RGB", (128, 128), (10, 20, 30))
    assert loaded.has_loss_head
    assert loaded.predict([image])[0].predicted_loss == pytest.approx(
        detector.predict([image])[0].predicted_loss, abs=1e-5
    )


def test_the_heads_pull_on_the_detector_is_global_over_the_run(shapes, monkeypatch):
    """Attached for the first 60% of a detector's first training only; detached when fine-tuned."""
    import al_core.training as training

    flags, real = [], training._step_loss
    monkeypatch.setattr(training, "_step_loss", lambda *args: flags.append(args[-1]) or real(*args))
    torch.manual_seed(0)
    detector = Detector.create("cpu_preset", ["circle", "square", "triangle"], pretrained="none", loss_head=True)
    config = training.TrainConfig(epochs=1, batch_size=4, loss_head_detach_after=0.6)
    training.train_detector(detector, shapes["train"][:20], config)
    first, flags[:] = list(flags), []
    training.train_detector(detector, shapes["train"][:20], config)
    assert first == [False, False, False, True, True] and flags == [True] * 5


def test_loss_spearman_reads_the_true_losses_of_labeled_images(trained_detector, shapes):
    from al_core.training import DetectionDataset, loss_spearman

    samples = shapes["test"][:8]
    items = [DetectionDataset(samples)[i] for i in range(len(samples))]
    trained_detector.model.train()
    with torch.no_grad():
        true, _ = per_image_losses(trained_detector, [i for i, _ in items], [t for _, t in items])
    trained_detector.model.eval()
    assert loss_spearman(trained_detector, samples, true.tolist()) == pytest.approx(1.0)
    assert loss_spearman(trained_detector, samples, (-true).tolist()) == pytest.approx(-1.0)
    assert not trained_detector.model.training  # left as it was found
    assert loss_spearman(trained_detector, samples[:2], [0.0, 1.0]) is None
