"""Dynamic batching across /predict calls: images of concurrent requests are merged into model
batches, as Triton and TorchServe do. Annotators open tasks one by one, so each call brings one
image; run one at a time, the model works at batch 1 while the others queue.

One worker thread owns the model. It takes the oldest waiting image, waits up to ``max_wait``
for more images of the same detector and size (up to ``max_batch``), and runs them as one batch.
Batching only images of one size keeps every result identical to running the image alone:
torchvision pads a mixed-size batch, and the padding reaches the border pixels' features.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from al_core.detectors import Detector


@dataclass
class _Item:
    detector: Detector
    image: Image.Image
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[int, tuple[int, int]]:
        return id(self.detector), self.image.size


# Runs one batch: (detector, images) -> one result per image, in order.
RunBatch = Callable[[Detector, list[Image.Image]], Sequence[object]]


class Batcher:
    def __init__(self, run: RunBatch, max_batch: int, max_wait_s: float):
        self.run = run
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self._waiting: list[_Item] = []
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, detector: Detector, image: Image.Image) -> Future:
        """A future of the image's result; it raises what the batch raised."""
        return self.submit_many(detector, [image])[0]

    def submit_many(self, detector: Detector, images: Sequence[Image.Image]) -> list[Future]:
        """Futures of the images' results, queued at once: a request's own images are never
        split across batches by the wait running out while they are still being queued."""
        items = [_Item(detector, image) for image in images]
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.extend(items)
            self._changed.notify()
        return [item.future for item in items]

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._worker.join(timeout=30)

    def _take_batch(self) -> list[_Item] | None:
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if not self._waiting:
                return None
            key = self._waiting[0].key
            deadline = time.monotonic() + self.max_wait_s
            while sum(item.key == key for item in self._waiting) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            batch = [item for item in self._waiting if item.key == key][: self.max_batch]
            taken = {id(item) for item in batch}
            self._waiting = [item for item in self._waiting if id(item) not in taken]
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                results = self.run(batch[0].detector, [item.image for item in batch])
            except BaseException as error:  # every waiting request hears of it
                for item in batch:
                    item.future.set_exception(error)
                continue
            for item, result in zip(batch, results, strict=True):
                item.future.set_result(result)
