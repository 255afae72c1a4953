"""The training loop's guarantees: held-out split, early stopping, best weights, resume,
non-finite stop, COCO mAP, atomic model versions and refusing broken ones."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from al_core.datasets import SHAPE_CLASSES
from al_core.detectors import Detector
from al_core.evaluation import evaluate
from al_core.training import (
    NonFiniteLoss,
    TrainConfig,
    final_pass,
    plateaued,
    split_held_out,
    train_detector,
    with_min_steps,
)
from al_core.versions import read_version, write_version
from backend.models import Models, VersionError
from backend.store import Store


def test_plateau_rule_hand_computed():
    history = [{"map": m} for m in (0.10, 0.30, 0.31, 0.305, 0.31)]
    # last 3 changes: 0.01, 0.005, 0.005 -> mean 0.00667
    assert plateaued(history, window=3, delta=0.01)
    assert not plateaued(history, window=3, delta=0.005)
    assert not plateaued(history[:3], window=3, delta=1.0)  # not enough evaluations yet


def test_held_out_split_is_seeded_and_skipped_for_tiny_sets(shapes):
    samples = shapes["train"][:20]
    train, held = split_held_out(samples, 0.2, seed=1)
    again = split_held_out(samples, 0.2, seed=1)
    assert len(held) == 4 and len(train) == 16 and [s.path for s in held] == [s.path for s in again[1]]
    assert not set(s.path for s in held) & set(s.path for s in train)
    assert split_held_out(samples[:4], 0.2, seed=1) == (samples[:4], [])


def fresh():
    torch.manual_seed(0)
    return Detector.create("cpu_preset", SHAPE_CLASSES)


def test_held_out_split_is_refreshed_from_the_newest_labels(shapes):
    samples = shapes["train"][:20]  # 20 x 0.2 = 4 held out
    paths = lambda images: {s.path for s in images}  # noqa: E731
    newest = paths(samples[14:])  # 6 labeled since the previous version
    train, held = split_held_out(samples, 0.2, seed=1, recent=newest)
    assert len(held) == 4 and len(paths(held) & newest) == 3  # half the newest at most, the rest older
    assert not paths(held) & paths(train) and len(train) == 16
    assert split_held_out(samples, 0.2, seed=1, recent=newest) == (train, held)  # seeded
    first_run = split_held_out(samples, 0.2, seed=1, recent=paths(samples))  # everything is new
    assert len(first_run[1]) == 4
    one_new = split_held_out(samples, 0.2, seed=1, recent=paths(samples[:1]))
    assert not paths(one_new[1]) & paths(samples[:1])  # a lone new image trains the model
    # Without recent labels it is the plain seeded draw it always was.
    assert split_held_out(samples, 0.2, seed=1, recent=set()) == split_held_out(samples, 0.2, seed=1)


def test_early_stop_keeps_the_best_weights(shapes):
    detector = fresh()
    config = TrainConfig(epochs=6, min_epochs=2, early_stop_window=1, early_stop_delta=1.0, warmup_iters=5)
    result = train_detector(detector, shapes["train"][:20], config, held_out=shapes["test"][:4])
    assert result.stopped_early and result.epochs == 2 and len(result.history) == 2
    assert result.metrics["map"] == max(h["map"] for h in result.history)
    assert detector.version.trained


def test_min_steps_raise_the_epochs_of_a_small_set_up_to_the_cap():
    config = TrainConfig(epochs=12, min_epochs=4, min_steps=300, max_epochs=100)
    small = with_min_steps(config, per_epoch=4)  # 13 images in batches of 4
    assert (small.epochs, small.min_epochs) == (75, 75)  # early stopping waits for the 300 steps
    large = with_min_steps(config, per_epoch=50)
    assert (large.epochs, large.min_epochs) == (12, 6)  # 12 epochs are 600 steps already
    assert with_min_steps(config, per_epoch=1).epochs == 100  # never past max_epochs
    assert with_min_steps(TrainConfig(epochs=12), per_epoch=1) == TrainConfig(epochs=12)  # off by default
    assert final_pass(config, 0.2).min_steps == 0  # the served model's short last pass stays short


def test_min_steps_train_a_small_set_for_that_many_steps(shapes):
    samples = shapes["train"][:8]  # 2 steps an epoch
    plateau = {"min_epochs": 1, "early_stop_window": 1, "early_stop_delta": 1.0, "warmup_iters": 1}
    result = train_detector(fresh(), samples, TrainConfig(epochs=6, **plateau), held_out=shapes["test"][:2])
    assert result.epochs == 2 and result.stopped_early  # the plateau rule stops at its first chance
    config = TrainConfig(epochs=1, min_steps=7, **plateau)
    result = train_detector(fresh(), samples, config, held_out=shapes["test"][:2])
    assert (result.epochs, result.iterations) == (4, 8)  # 4 epochs give the 7 steps; the rule waits


def test_resume_continues_from_the_saved_epoch(shapes, tmp_path):
    state = tmp_path / "run.state"
    samples = shapes["train"][:20]  # 5 steps an epoch
    first = train_detector(fresh(), samples, TrainConfig(epochs=2, warmup_iters=5), state_path=state)
    assert first.iterations == 10 and state.exists()
    resumed = train_detector(fresh(), samples, TrainConfig(epochs=3, warmup_iters=5), state_path=state)
    assert resumed.iterations == 15 and resumed.epochs == 3  # one more epoch, not three


def test_a_non_finite_loss_stops_before_the_step(shapes, monkeypatch):
    detector = fresh()
    before = {k: v.clone() for k, v in detector.model.state_dict().items()}
    monkeypatch.setattr(
        detector.model.head, "compute_loss", lambda *a, **k: {"loss": torch.tensor(float("nan"), requires_grad=True)}
    )
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 0"):
        train_detector(detector, shapes["train"][:4], TrainConfig(epochs=1))
    after = detector.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_coco_map_of_the_trained_checkpoint(trained_detector, shapes):
    metrics = evaluate(trained_detector, shapes["test"])
    assert metrics["map50"] > 0.8 and 0 < metrics["map"] <= metrics["map50"]
    assert evaluate(fresh(), shapes["test"])["map50"] < 0.05


def test_per_class_ap_averages_to_the_map(trained_detector, shapes):
    metrics = evaluate(trained_detector, shapes["test"])
    per_class = metrics["map50_per_class"]
    assert len(per_class) == len(trained_detector.class_names)
    defined = [value for value in per_class if value is not None]
    present = {int(label) for sample in shapes["test"] for label in sample.labels}
    assert len(defined) == len(present)
    assert abs(sum(defined) / len(defined) - metrics["map50"]) < 1e-9


def test_per_class_ap_of_images_without_boxes_is_undefined(trained_detector, shapes):
    empty = [replace(sample, boxes=sample.boxes[:0], labels=sample.labels[:0]) for sample in shapes["test"][:2]]
    assert evaluate(trained_detector, empty)["map50_per_class"] == [None] * len(trained_detector.class_names)


def test_versions_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    detector = fresh()
    record = write_version(tmp_path, "p1-v1", detector, {"epochs": 1}, [3, 1], {"map": 0.5})
    assert record.labeled_ids == (1, 3) and record.class_names == SHAPE_CLASSES and record.metrics == {"map": 0.5}
    assert Detector.load(record.checkpoint).version.name == "p1-v1"
    with pytest.raises(FileExistsError):
        write_version(tmp_path, "p1-v1", detector, {}, [], {})

    real_save = torch.save

    def disk_full_mid_checkpoint(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # the disk filled up half way
        raise OSError(28, "No space left on device")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for target, fault in ((torch, disk_full_mid_checkpoint), (json, disk_full)):
        with monkeypatch.context() as patch:
            patch.setattr(target, "save" if target is torch else "dumps", fault)
            with pytest.raises(OSError, match="No space left"):
                write_version(tmp_path, "p1-v2", detector, {}, [], {})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p1-v1"]  # no half version, no temp dir
    assert read_version(tmp_path / "p1-v1").name == "p1-v1"


def test_a_broken_version_is_refused_and_the_active_one_stays(tmp_path, untrained_detector):
    store = Store(tmp_path / "state.sqlite3")
    models = Models(untrained_detector, store, "cpu")
    good = write_version(tmp_path / "models", "p1-v1", fresh(), {}, [1], {})
    store.add_version(good, 1)
    models.activate("p1-v1")
    broken = write_version(tmp_path / "models", "p1-v2", fresh(), {}, [1], {})
    (broken.path / "model.pt").write_bytes(b"garbage")
    store.add_version(broken, 1)
    with pytest.raises(VersionError, match="cannot be loaded"):
        models.activate("p1-v2")
    flipped = write_version(tmp_path / "models", "p1-v3", fresh(), {}, [1], {})
    weights = bytearray((flipped.path / "model.pt").read_bytes())
    weights[len(weights) // 2] ^= 0x01  # one bit in the tensor data: still unpickles
    (flipped.path / "model.pt").write_bytes(bytes(weights))
    store.add_version(flipped, 1)
    with pytest.raises(VersionError, match="p1-v3 cannot be loaded: .*corrupted: its SHA-256"):
        models.activate("p1-v3")
    assert store.active_version(1).name == "p1-v1" and models.for_project(1).version.name == "p1-v1"
    assert models.for_project(2) is untrained_detector
    (good.path / "metrics.json").unlink()
    with pytest.raises(ValueError, match="not a complete model version"):
        read_version(good.path)


def test_torchrun_trains_the_same_loop_on_two_processes(shapes, tmp_path):
    """`torchrun --nproc_per_node 2 -m al_core train`: two gloo workers, each on its shard under
    DistributedDataParallel; rank 0 saves a checkpoint that loads and has learned."""
    import subprocess
    import sys
    from pathlib import Path

    from al_core.datasets.coco import write_coco

    coco = write_coco(shapes["train"][:16], SHAPE_CLASSES, tmp_path / "sixteen.json")
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "al_core", "train"]
    command += ["--images", str(coco), "--epochs", "2", "--out", str(tmp_path / "ddp.pt"), "--device", "cpu"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 16 images, 2 workers, batches of 4: 2 steps per epoch on each worker.
    assert "trained 4 steps" in done.stdout
    detector = Detector.load(tmp_path / "ddp.pt")
    assert detector.version.trained and detector.class_names == SHAPE_CLASSES


def test_batches_of_pseudo_labels_interleave_without_changing_the_human_order():
    """One loader: exactly the loader's own batches, epoch after epoch (its sampler's generator
    advances as in a plain loop). Two: every batch once, each with its loss weight."""
    import random

    from torch.utils.data import DataLoader

    from al_core.training import _interleaved

    def loader(data, seed):
        return DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(seed))

    plain, mixed = loader(list(range(10)), 0), loader(list(range(10)), 0)
    for epoch in range(3):
        assert [b.tolist() for b in plain] == [
            b.tolist() for b, _ in _interleaved([(mixed, 1.0)], random.Random(epoch))
        ]
    humans, pseudo = loader(list(range(10)), 1), loader(list(range(100, 105)), 2)
    seen = list(_interleaved([(humans, 1.0), (pseudo, 0.5)], random.Random(0)))
    assert sorted(x for b, _ in seen for x in b.tolist()) == [*range(10), *range(100, 105)]
    assert all((w == 0.5) == (b.min().item() >= 100) for b, w in seen)
