"""Dynamic batching across /predict calls: concurrent images are merged into batches of one
detector and one size, every result equals running the image alone, and errors reach every
waiting request without stopping the batcher."""

import threading

import pytest
import torch
from PIL import Image

from backend.batcher import Batcher

from ..conftest import SHAPES_CONFIG


def test_concurrent_images_are_merged_into_batches_of_one_size():
    seen = []

    def run(detector, images):
        seen.append([image.size for image in images])
        return [image.size for image in images]

    batcher = Batcher(run, max_batch=4, max_wait_s=0.5)
    images = [Image.new("RGB", (64, 64))] * 6 + [Image.new("RGB", (32, 48))] * 2
    futures = [None] * len(images)

    def submit(i):
        futures[i] = batcher.submit("one detector", images[i])

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [f.result(timeout=10) for f in futures] == [image.size for image in images]
    batcher.close()
    assert sorted(len(batch) for batch in seen) == [2, 2, 4]  # 6 of one size in 4 + 2, 2 of the other
    assert all(len(set(batch)) == 1 for batch in seen)


def test_a_requests_images_queued_together_run_as_one_batch_without_waiting():
    """With no wait at all, images queued one by one may run alone; queued together (one
    request's batch), they run as one batch, up to the batch size."""
    seen = []

    def run(detector, images):
        seen.append(len(images))
        return list(range(len(images)))

    batcher = Batcher(run, max_batch=4, max_wait_s=0.0)
    futures = batcher.submit_many("d", [Image.new("RGB", (16, 16))] * 6)
    assert [f.result(timeout=10) for f in futures] == [0, 1, 2, 3, 0, 1]
    assert batcher.submit_many("d", []) == []
    batcher.close()
    assert seen == [4, 2]


def test_a_failed_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def run(detector, images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return ["ok"] * len(images)

    batcher = Batcher(run, max_batch=8, max_wait_s=0.05)
    first = [batcher.submit("d", Image.new("RGB", (8, 8))) for _ in range(3)]
    for future in first:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=10)
    assert batcher.submit("d", Image.new("RGB", (8, 8))).result(timeout=10) == "ok"
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("d", Image.new("RGB", (8, 8)))


def test_batched_results_equal_one_at_a_time(trained_detector, shapes):
    """The trained CPU preset on 8 canvases of two sizes: merged by 8 concurrent callers, or
    run alone, the boxes, labels and scores are the same."""
    images = [Image.open(s.path).convert("RGB") for s in shapes["test"][:8]]
    images[5:] = [image.resize((160, 120)) for image in images[5:]]
    sizes = []
    run = lambda detector, batch: sizes.append(len(batch)) or detector.predict(batch)  # noqa: E731
    alone = Batcher(run, max_batch=1, max_wait_s=0)
    expected = [alone.submit(trained_detector, image).result() for image in images]
    alone.close()
    merged = Batcher(run, max_batch=8, max_wait_s=0.5)
    futures = [None] * 8
    threads = [
        threading.Thread(target=lambda i=i: futures.__setitem__(i, merged.submit(trained_detector, images[i])))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = [future.result(timeout=60) for future in futures]
    assert sorted(sizes[8:]) == [3, 5]  # after the 8 single runs: one batch per image size
    merged.close()
    for want, have in zip(expected, got):
        assert torch.equal(want.labels, have.labels) and len(want.boxes) > 0
        assert torch.allclose(want.boxes, have.boxes, atol=1e-4)
        assert torch.allclose(want.scores, have.scores, atol=1e-5)


def test_concurrent_predict_calls_answer_as_one_call_would(make_client, image_server, shapes):
    client = make_client(predict_batch_size=8, predict_max_wait_ms=200)
    tasks = [
        {"id": i, "data": {"picture": f"{image_server.url}/test/{s.path.split('/')[-1]}"}}
        for i, s in enumerate(shapes["test"][:8])
    ]
    together = client.post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG}).get_json()["results"]
    answers = [None] * 8

    def call(i):
        body = {"tasks": [tasks[i]], "label_config": SHAPES_CONFIG}
        answers[i] = client.post("/predict", json=body).get_json()["results"][0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for want, have in zip(together, answers):
        assert have["result"] == want["result"]  # same regions, same order
        assert have["score"] == pytest.approx(want["score"], abs=1e-5)
