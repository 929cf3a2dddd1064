"""Building batches ahead of the training step, in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from trainer.data.batch import Batch


def prefetch(batches: Iterator[Batch], depth: int, *, pin: bool = False) -> Iterator[Batch]:
    """Build batches ahead in a background thread (numpy releases the GIL); ``pin``
    (CUDA workers): also page-lock them there, off the step's path, so that the step's
    ``non_blocking`` host-to-device copy is asynchronous."""
    if pin:
        batches = (b.pin_memory() for b in batches)
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    t = threading.Thread(target=work, name="rectrain-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
