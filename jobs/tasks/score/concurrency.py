"""What keeps the decoders and the engine busy at the same time while scoring: a generator run ahead in
a thread, fixed-size chunks of a stream, engine slices tuned on the first batches, and the engine's
share of the CPU cores."""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable

import torch
from realfake.pipelines.provenance import usable_cores

log = logging.getLogger(__name__)

# Slice sizes tried for the engine on the CPU (see MicroBatches), besides the batch size itself.
CPU_SLICE_CANDIDATES = (8, 16, 32)


def chunked(items: Iterable, sizes: Iterable[int]):
    """Lists of consecutive items, of the sizes given in turn (the last size repeats)."""
    sizes = iter(sizes)
    size = next(sizes)
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
            size = next(sizes, size)
    if chunk:
        yield chunk


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Ahead:
    """Runs a generator in a background thread, up to `depth` items ahead of its consumer.

    Scoring runs two: the walk (stats and header checks: Python work that would otherwise stall the
    decoder between chunks), and the loaders' preparation (a DALI pipeline is built and starts decoding
    while the previous chunk is scored). The decoders (DALI's C++ threads, DataLoader processes) and the
    engine release the GIL while they work, so these threads' work overlaps theirs. An exception in the
    thread is raised in the consumer; `close()` stops the thread early.
    """

    _END = object()

    def __init__(self, generator: Iterable, depth: int, name: str):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(generator,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, generator: Iterable) -> None:
        try:
            for item in generator:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))

    def __iter__(self):
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():  # closed: a consumer in another thread must not wait forever
                    return
                continue
            if item is self._END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class MicroBatches:
    """Runs the engine on slices of each loader batch, of the size found fastest on the first batches.

    On a CPU the best size depends on the model and the caches, not on the loader: a small CNN whose
    activations stay in L2 is fastest in small slices, a ResNet in whole batches. So the first batch
    warms up, each of the next ones is scored with one candidate size, and the fastest per image is kept
    for the rest: the tuning scores real images, it costs nothing extra. On a GPU, whole batches.
    """

    def __init__(self, predict, batch_size: int, device: str):
        self.predict_fn = predict
        if str(device).startswith("cuda"):
            self.candidates = [batch_size]
        else:
            self.candidates = sorted({c for c in CPU_SLICE_CANDIDATES if c < batch_size} | {batch_size},
                                     reverse=True)
        self.timings: dict[int, float] = {}  # slice size -> seconds per image
        self.warm = len(self.candidates) == 1
        self.best: int | None = self.candidates[0] if self.warm else None

    def __call__(self, images):
        if self.best is not None:
            return self._run(images, self.best)
        size = self.candidates[len(self.timings)] if self.warm else self.candidates[0]
        start = time.perf_counter()
        p_fake = self._run(images, size)
        if not self.warm:
            self.warm = True  # the first batch pays one-time costs: not timed
        elif images.shape[0] > 0:
            self.timings[size] = (time.perf_counter() - start) / images.shape[0]
            if len(self.timings) == len(self.candidates):
                self.best = min(self.timings, key=self.timings.get)
                log.info("engine slices of %d images (ms per image by slice: %s)", self.best,
                         ", ".join(f"{k}: {v * 1e3:.2f}" for k, v in sorted(self.timings.items())))
        return p_fake

    def _run(self, images, size: int):
        return self.predict_fn(images, chunk_size=size)


def choose_engine_threads(device: str, decode_workers: int, requested: int = 0) -> int:
    """torch's intra-op threads for the engine while scoring: `requested`, or (0) the cores the decoders
    leave free, at least one.

    Decoding and the model share the CPU cores. torch's default (one thread per core) oversubscribes
    them, and its OpenMP threads spin while they wait for work, so by default the engine takes what the
    decode workers leave; a model that costs more than decoding keeps the decoders waiting, and then
    more engine threads win (`--engine-threads`). On a GPU the engine needs one thread to launch kernels.
    """
    if str(device).startswith("cuda"):
        return 1
    if requested:
        return requested
    return max(1, min(torch.get_num_threads(), usable_cores() - decode_workers))
