"""HUALE's training losses as options: EIoU and emphasis pinned on hand-computed boxes; the
installed head losses reproduce torchvision's own where they should and change only the box
term where they should not; detectors whose box loss torchvision keeps inside are refused."""

import pytest
import torch
import torchvision

from al_core.datasets import SHAPE_CLASSES
from al_core.detectors import Detector
from al_core.detectors.box_losses import box_loss_sum, eiou_loss, emphasis_weights, training_losses
from al_core.training import DetectionDataset, TrainConfig, _collate, train_detector


def test_eiou_hand_computed():
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 4, 2], [1, 1, 3, 3]])
    targets = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [1, 1, 3, 3]])
    # 1: IoU 1/7, centres 2 apart squared over the (0,0,3,3) diagonal squared 18, equal sides.
    # 2: IoU 1/2, centre gap 1 over diagonal^2 20, width gap (4-2)^2 over enclosing width^2 16.
    # 3: identical boxes.
    expected = torch.tensor([1 - 1 / 7 + 2 / 18, 0.5 + 1 / 20 + 4 / 16, 0.0])
    assert torch.allclose(eiou_loss(boxes, targets), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou", "eiou"])
def test_empty_predicted_boxes_give_a_finite_loss_and_gradient(name):
    boxes = torch.tensor([[4.0, 4, 4, 4], [2, 2, 2, 6]], requires_grad=True)  # an untrained FCOS's output
    loss = box_loss_sum(name, 1.0, boxes, torch.tensor([[2.0, 2, 6, 6], [2, 2, 6, 6]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(boxes.grad).all()


def test_emphasis_weights_lean_on_the_worst_localised_boxes():
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2]])
    targets = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]])  # IoU 1, 1/2, 1
    assert torch.equal(emphasis_weights(boxes, targets, 0.0), torch.ones(3))
    # (1 - IoU)^1 = 0, 0.5, 0 -> mean 1/6 -> 0, 3, 0
    assert torch.allclose(emphasis_weights(boxes, targets, 1.0), torch.tensor([0.0, 3.0, 0.0]))
    # gamma 2: 0, 0.25, 0 -> still all of it on the one poorly localised box
    assert torch.allclose(emphasis_weights(boxes, targets, 2.0), torch.tensor([0.0, 3.0, 0.0]))


def _losses(model, images, targets):
    torch.manual_seed(0)
    model.train()
    return {name: float(value.detach()) for name, value in model(images, targets).items()}


@pytest.fixture(scope="module")
def batch(shapes):
    images, targets = _collate([DetectionDataset(shapes["train"][:3])[i] for i in range(3)])
    return list(images), list(targets)


def test_fcos_losses_reproduce_torchvision_and_change_only_the_box_term(batch):
    model = Detector.create("cpu_preset", SHAPE_CLASSES).model
    own = _losses(model, *batch)
    with training_losses(model, "giou"):  # FCOS's own loss, recomputed by ours
        assert _losses(model, *batch) == pytest.approx(own, rel=1e-5)
    with training_losses(model, "eiou", 2.0):
        changed = _losses(model, *batch)
    assert changed["classification"] == pytest.approx(own["classification"], rel=1e-6)
    assert changed["bbox_ctrness"] == pytest.approx(own["bbox_ctrness"], rel=1e-6)
    assert changed["bbox_regression"] != pytest.approx(own["bbox_regression"], rel=1e-3)
    assert "compute_loss" not in vars(model.head)  # removed on leaving: the model is plain again
    assert _losses(model, *batch) == pytest.approx(own, rel=1e-6)


def test_retinanet_losses_reproduce_torchvision(batch):
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=len(SHAPE_CLASSES) + 1, min_size=128, max_size=128
    )
    model.head.regression_head._loss_type = "diou"  # torchvision's own DIoU
    own = _losses(model, *batch)
    model.head.regression_head._loss_type = "smooth_l1"
    with training_losses(model, "diou"):
        assert _losses(model, *batch) == pytest.approx(own, rel=1e-5)
    with training_losses(model, "eiou"):
        assert _losses(model, *batch)["bbox_regression"] != pytest.approx(own["bbox_regression"], rel=1e-3)


def test_detectors_with_their_box_loss_inside_torchvision_are_refused():
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    with pytest.raises(ValueError, match="need a dense head"):
        with training_losses(model, "eiou"):
            pass
    with training_losses(model, "default"):  # the default asks nothing of the head
        pass
    with pytest.raises(ValueError, match="unknown box loss 'iou'"):
        with training_losses(Detector.create("cpu_preset", SHAPE_CLASSES).model, "iou"):
            pass


def test_training_with_eiou_and_emphasis_learns_and_logs_to_tensorboard(shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    detector = Detector.create("cpu_preset", SHAPE_CLASSES)
    config = TrainConfig(epochs=4, warmup_iters=5, box_loss="eiou", emphasis=1.0, early_stop_window=3)
    result = train_detector(detector, shapes["train"][:16], config, held_out=shapes["test"][:6], log_dir=tmp_path)
    board = EventAccumulator(str(tmp_path))
    board.Reload()
    scalars = lambda tag: [event.value for event in board.Scalars(tag)]  # noqa: E731
    losses = scalars("train/loss")
    assert len(losses) == result.iterations == 16 and len(scalars("train/lr")) == 16
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])  # the last epoch's loss well under the first's
    assert set(board.Tags()["scalars"]) >= {"train/loss_classification", "train/loss_bbox_regression"}
    assert scalars("eval/AP50") == pytest.approx([h["map50"] for h in result.history])
    assert scalars("eval/AP75") == pytest.approx([h["map75"] for h in result.history])
    maps = [h["map"] for h in result.history]
    assert scalars("eval/AP_shift") == pytest.approx([sum(abs(b - a) for a, b in zip(maps, maps[1:])) / 3])
