"""`realfake score`: score every image under some folders with an inference engine, resumably.

The flow is one stream, so memory stays flat however many files there are:

    walk (sorted, symlinks once) -> shard filter -> skip what OUT holds      (files.py, in a thread)
    -> chunks of CHUNK_FILES files -> a loader per chunk (decode in worker processes / DALI threads,
       overlapped with the model; a DALI loader is prepared while the chunk before it is scored)
    -> engine (slices tuned on the first batches)                           (concurrency.py)
    -> one row per file, appended and fsynced batch by batch                (writers.py)

Rules (also in `realfake score --help`):
- Resume: the paths already in OUT are skipped, so rerunning the same command after a crash (even
  kill -9) scores only what is missing: no file lost, none twice. A torn last line is cut off first.
- One output, one engine: OUT (or its errors file) written by another engine is refused; use another
  --out, or --no-resume to replace it.
- Errors: a file that cannot be scored (empty, truncated, corrupt, not an image, unsupported format,
  unreadable, too large) is one row of `<OUT>.errors.csv` with the reason, and the run goes on. A rerun
  retries the files of the errors file: the errors file is started afresh, and a file that fails again
  is listed again (a file that now decodes moves to OUT).
- Sharding: `shard="i/n"` scores the files whose relative path hashes to i (see pipelines/walk.py);
  `merge.merge_outputs` joins the outputs of the n shards.
- A resumed output is never rescored: a file that changed since it was scored keeps its row (its size
  and mtime in OUT tell), and a file that disappeared keeps its row too.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import import_module
from pathlib import Path

import torch
from realfake.engines.devices import resolve_device
from realfake.engines.registry import promoted_engine
from realfake.engines.runtime import Engine, load_engine
from realfake.jobs.service.store import realfake_home
from realfake.jobs.tasks.outputs.common import (
    DECISIONS,
    ERROR_COLUMNS,
    RESULT_COLUMNS,
    errors_path,
    output_format,
    resolve_output,
)
from realfake.jobs.tasks.outputs.writers import open_writer, read_existing
from realfake.jobs.tasks.score.concurrency import Ahead, MicroBatches, choose_engine_threads, chunked
from realfake.jobs.tasks.score.files import WalkCounts, check_folders, files_to_score
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.pixel_loaders import dali_installed, resolve_backend
from realfake.pipelines.walk import parse_shard
from tqdm import tqdm

log = logging.getLogger(__name__)

# Files handed to one loader: bounds the memory of file lists (a million files = 100 loaders) while
# keeping the cost of starting a loader (worker processes, a DALI pipeline) small. With DALI the first
# chunk is smaller, so that decoding starts while the header checks of the next files go on.
FIRST_CHUNK_FILES = 2_048
CHUNK_FILES = 10_000
# Check file headers before DALI sees the files (see images.sniff_problem); off only to measure its cost.
DALI_HEADER_CHECK = True
UNKNOWN_REASON = ("re-saved, resized or cropped after it was made (p_laundered {:.2f}): the compression history "
                  "this engine reads is gone")


def scoring_loader(loader: str, device: str) -> str:
    """The loader scoring uses: "dali" or "torch". `auto` is DALI on a GPU (when installed) and the
    torchvision loader on the CPU, where PIL's draft mode (JPEG DCT scaling) makes it the cheaper decoder
    for small model inputs: DALI's CPU decoder decodes at full size."""
    if loader == "auto":
        return "dali" if str(device).startswith("cuda") and dali_installed() else "torch"
    return "dali" if resolve_backend(loader, device).startswith("dali") else "torch"


def _other_engine_message(what: Path, found: set[str], engine_id: str, engine_dir: Path) -> str:
    return (f"{what} holds scores of engine {', '.join(sorted(found))}, but this run uses engine {engine_id} "
            f"({engine_dir}): score into another --out (one output never mixes engines), "
            "or pass --no-resume to replace it")


class Scorer:
    """One scoring run of `engine` into an opened output: the walk, the loaders and the engine, with the
    counts and errors they produce. `run(folders)` scores; `summary()` says what happened."""

    def __init__(self, engine: Engine, engine_dir: Path, out_file: Path, *, resume: bool, batch_size: int,
                 loader: str, num_workers: int, engine_threads: int, shard: str | None, progress: bool,
                 on_progress: Callable[[int], None] | None = None):
        self.engine, self.engine_dir, self.out_file = engine, engine_dir, out_file
        self.on_progress = on_progress  # called with the files each batch settled (what the bar counts)
        self.err_file = errors_path(out_file)
        self.batch_size, self.num_workers, self.shard = batch_size, num_workers, shard
        self.device = str(engine.device)
        # Reference (pil) ghost maps: by PIL in the loader's workers unless DALI is asked for (`auto` keeps PIL:
        # on a CPU its re-saves are faster than the same maps as tensor math); dct maps from either decoder.
        pil_on_host = engine.ghost_maps == "pil" and loader != "dali"
        self.decoder = "torch" if pil_on_host else scoring_loader(loader, self.device)
        self.check_headers = self.decoder == "dali" and DALI_HEADER_CHECK
        self.engine_threads = choose_engine_threads(self.device, num_workers, engine_threads)
        self.counts = WalkCounts()
        self.scored = self.errors = 0
        self.reference_maps = 0  # files of a dct engine whose maps came from the PIL reference
        self.decisions = dict.fromkeys(DECISIONS, 0)
        self.backends_used: set[str] = set()
        self._pending_errors: list[dict] = []
        self._errors_lock = threading.Lock()  # errors come from the walk thread and from the loaders
        self._open_outputs(resume)
        self.bar = tqdm(desc=f"score{f' {shard}' if shard else ''}", unit="img", disable=not progress,
                        dynamic_ncols=True, smoothing=0.1)

    def _open_outputs(self, resume: bool) -> None:
        """Read OUT and its errors file back first (cutting off a torn last line), so that an output of
        another engine is refused before anything is written; the errors file then starts afresh."""
        engine_id = self.engine.engine_id
        previous = read_existing(self.err_file, ERROR_COLUMNS) if resume else None
        if previous is not None and previous.engine_ids - {engine_id}:
            raise ValueError(_other_engine_message(self.err_file, previous.engine_ids - {engine_id}, engine_id,
                                                   self.engine_dir))
        self.retried_errors = len(previous.paths) if previous is not None else 0
        self.writer = open_writer(self.out_file, RESULT_COLUMNS, resume=resume)
        existing = self.writer.existing
        if existing.engine_ids - {engine_id}:
            self.writer.close()
            raise ValueError(_other_engine_message(self.out_file, existing.engine_ids - {engine_id}, engine_id,
                                                   self.engine_dir))
        if existing.repaired_bytes:
            log.warning("%s: cut off a partial last line (%d bytes) left by an interrupted run",
                        self.out_file, existing.repaired_bytes)
        self.errors_writer = open_writer(self.err_file, ERROR_COLUMNS, resume=False)

    def add_error(self, path: str, reason: str) -> None:
        with self._errors_lock:
            self._pending_errors.append({"path": path, "reason": reason, "engine_id": self.engine.engine_id})
            self.errors += 1

    def flush_errors(self) -> None:
        with self._errors_lock:
            rows, self._pending_errors = self._pending_errors, []
        self.errors_writer.write(rows)

    def _loaders(self, chunks: Iterable[Sequence[tuple[str, int, str]]], ready: threading.Semaphore,
                 stopping: threading.Event):
        """(chunk, its loader) for each chunk; runs in the prepare thread. A DALI loader is prepared there
        (header screen, pipeline build, first batches decoding) while the previous chunk is scored, but
        only one ahead: `ready` counts the loaders alive."""
        for chunk in chunks:
            while not ready.acquire(timeout=0.1):
                if stopping.is_set():
                    return
            if stopping.is_set():
                return
            data = get_loader([item[0] for item in chunk], None, train=False, backend=self.decoder,
                              image_size=self.engine.image_size, batch_size=self.batch_size,
                              num_workers=self.num_workers, device=self.device, draft=True, input=self.engine.input,
                              ghost_maps=self.engine.ghost_maps or "pil")
            if self.decoder == "dali":
                data.prepare()
            yield chunk, data

    def _score_chunk(self, items: Sequence[tuple[str, int, str]], data, engine_slices: MicroBatches) -> None:
        self.backends_used.add(data.backend)
        threshold, engine_id = self.engine.threshold, self.engine.engine_id
        for batch in data:
            for index, reason in batch.errors:
                self.add_error(items[index][0], reason)
            self.reference_maps += len(batch.fallbacks)
            n = len(batch.indices)
            if n:
                # The engine moves the batch to its device, in channels_last where its backend wants it.
                p_fake = engine_slices(batch.images).tolist()
                gate = self.engine.gate
                p_laundered = gate.p_laundered(batch.images).tolist() if gate is not None else [None] * n
                rows = []
                for index, p, q in zip(batch.indices.tolist(), p_fake, p_laundered, strict=True):
                    path, size, mtime = items[index]
                    label = "fake" if p >= threshold else "real"
                    decision, reason = label, ""
                    if q is not None and q >= gate.threshold:
                        decision, reason = "unknown", UNKNOWN_REASON.format(q)
                    self.decisions[decision] += 1
                    rows.append({"path": path, "size": size, "mtime": mtime, "p_fake": p, "label": label,
                                 "decision": decision, "reason": reason, "threshold": threshold,
                                 "engine_id": engine_id})
                self.writer.write(rows)
                self.scored += n
            self.flush_errors()
            self.bar.update(n + len(batch.errors))
            self.bar.set_postfix(errors=self.errors, refresh=False)
            if self.on_progress is not None:
                self.on_progress(n + len(batch.errors))

    def run(self, folders: Sequence[str], recursive: bool) -> float:
        """Score `folders` into the output; returns the seconds it took (walk, decode and engine)."""
        # Import the decoder's module now, so that img/s measures scoring, not a first import.
        import_module("realfake.pipelines.dali_loader" if self.decoder == "dali" else "realfake.pipelines.torch_loader")
        engine_slices = MicroBatches(self.engine.predict, self.batch_size, self.device)
        threads_before = torch.get_num_threads()
        torch.set_num_threads(self.engine_threads)
        started = time.perf_counter()
        done = set(self.writer.existing.paths)
        walk = Ahead(files_to_score(folders, recursive=recursive, shard=parse_shard(self.shard), done=done,
                                    on_error=self.add_error, counts=self.counts,
                                    utf8_names=output_format(self.out_file) == "parquet",
                                    check_headers=self.check_headers),
                     depth=CHUNK_FILES, name="score-walk")
        # A small first chunk only where header checks delay it; each chunk restarts the loader's workers.
        first_chunk = min(FIRST_CHUNK_FILES, CHUNK_FILES) if self.check_headers else CHUNK_FILES
        ready, stopping = threading.Semaphore(2), threading.Event()  # the loader in use and the next
        prepared = Ahead(self._loaders(chunked(walk, (first_chunk, CHUNK_FILES)), ready, stopping), depth=1,
                         name="score-prepare")
        try:
            for chunk, data in prepared:
                self.flush_errors()
                self._score_chunk(chunk, data, engine_slices)
                del data  # its pipeline / workers go before the slot is given back
                ready.release()
            self.flush_errors()
        finally:
            torch.set_num_threads(threads_before)
            stopping.set()
            walk.close()  # first: the prepare thread may be waiting for the walk
            prepared.close()
            self.bar.close()
            self.writer.close()  # Parquet: combines the part files, also after an error or Ctrl-C
            self.errors_writer.close()
        return time.perf_counter() - started

    def summary(self, seconds: float, folders: Sequence[str], recursive: bool) -> dict:
        return {
            "out": str(self.out_file), "errors_file": str(self.err_file), "engine": str(self.engine_dir),
            "engine_id": self.engine.engine_id, "threshold": self.engine.threshold,
            "image_size": self.engine.image_size, "loader": ",".join(sorted(self.backends_used)) or None,
            "ghost_maps": self.engine.ghost_maps, "reference_maps": self.reference_maps,
            "device": self.device, "engine_threads": self.engine_threads, "shard": self.shard,
            "folders": list(folders), "recursive": recursive,
            "files": self.counts.files, "scored": self.scored, "skipped": self.counts.skipped,
            "decisions": dict(self.decisions),
            "errors": self.errors, "retried_errors": self.retried_errors,
            "repaired_bytes": self.writer.existing.repaired_bytes,
            "seconds": round(seconds, 3),
            "img_per_s": round(self.scored / seconds, 2) if seconds > 0 else None,
        }


def score_here(folders: Sequence[str], out, *, engine=None, recursive: bool = True, batch_size: int = 64,
               loader: str = "auto", resume: bool = True, shard: str | None = None, num_workers: int = 2,
               engine_threads: int = 0, device: str = "auto", progress: bool = True,
               on_progress: Callable[[int], None] | None = None) -> dict:
    """`run_score` on this machine (a Ray task runs it for its shard), its options already checked there:
    the folders and shard checked, the engine loaded, one `Scorer` run. `on_progress(n)` is called after each batch with the files it settled."""
    folders = [str(f) for f in ([folders] if isinstance(folders, (str, os.PathLike)) else folders)]
    check_folders(folders)
    parse_shard(shard)
    out_file = resolve_output(Path(out).absolute())
    engine_dir = Path(engine) if engine is not None else promoted_engine(realfake_home())
    # auto: the engine runs where it was built for (a CUDA engine on the GPU), and decoding follows it.
    model = load_engine(engine_dir, device=None if device == "auto" else resolve_device(device))
    scorer = Scorer(model, engine_dir, out_file, resume=resume, batch_size=batch_size, loader=loader,
                    num_workers=num_workers, engine_threads=engine_threads, shard=shard, progress=progress,
                    on_progress=on_progress)
    log.info("scoring %s with engine %s (%s, %dpx, threshold %.4g) into %s; %d files already scored",
             ", ".join(folders), model.engine_id, engine_dir, model.image_size, model.threshold, out_file,
             len(scorer.writer.existing.paths))
    seconds = scorer.run(folders, recursive)
    summary = scorer.summary(seconds, folders, recursive)
    log.info("scored %d, skipped %d, errors %d of %d files in %.1f s (%.1f img/s)", summary["scored"],
             summary["skipped"], summary["errors"], summary["files"], seconds, summary["img_per_s"] or 0.0)
    return summary
