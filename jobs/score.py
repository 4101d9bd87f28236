"""`realfake score`: score every image under some folders with an inference engine, resumably.

The flow is one stream, so memory stays flat however many files there are:

    walk (sorted, symlinks once) -> shard filter -> skip what OUT holds -> chunks of CHUNK_FILES files
    -> loader (decode in worker processes / DALI threads, overlapped with the model; a DALI loader is
       prepared, header screen and pipeline build, while the chunk before it is scored) -> engine
    -> one row per file, appended and fsynced batch by batch (see score_writers.py)

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
  `merge_outputs` joins the outputs of the n shards. `ray=ADDRESS` runs the n shards as Ray tasks and
  merges them (see score_ray.py and docs/cluster.md).
- A resumed output is never rescored: a file that changed since it was scored keeps its row (its size
  and mtime in OUT tell), and a file that disappeared keeps its row too.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import import_module
from pathlib import Path

from realfake.jobs.params import InputPath, OutputPath
from realfake.jobs.score_writers import (
    ERROR_COLUMNS,
    RESULT_COLUMNS,
    errors_path,
    open_writer,
    output_format,
    parts_dir,
    read_existing,
    read_rows,
    remove_output,
    resolve_output,
)

log = logging.getLogger(__name__)

# Files handed to one loader: bounds the memory of file lists (a million files = 100 loaders) while
# keeping the cost of starting a loader (worker processes, a DALI pipeline) small. With DALI the first
# chunk is smaller, so that decoding starts while the header checks of the next files go on.
FIRST_CHUNK_FILES = 2_048
CHUNK_FILES = 10_000
# Check file headers before DALI sees the files (see images.sniff_problem); off only to measure its cost.
DALI_HEADER_CHECK = True
# Slice sizes tried for the engine on the CPU (see MicroBatches), besides the batch size itself.
CPU_SLICE_CANDIDATES = (8, 16, 32)
LOADER_CHOICES = ("auto", "dali", "torch")
# Rows per write when merging shard outputs.
MERGE_BATCH_ROWS = 10_000


def mtime_iso(st_mtime: float) -> str:
    """A file's mtime as ISO 8601 in UTC with microseconds (what the mtime column holds)."""
    return dt.datetime.fromtimestamp(st_mtime, tz=dt.timezone.utc).isoformat(timespec="microseconds")


def _other_engine_message(what: Path, found: set[str], engine_id: str, engine_dir: Path) -> str:
    return (f"{what} holds scores of engine {', '.join(sorted(found))}, but this run uses engine {engine_id} "
            f"({engine_dir}): score into another --out (one output never mixes engines), "
            "or pass --no-resume to replace it")


def scoring_loader(loader: str, device: str) -> str:
    """The loader scoring uses: "dali" or "torch". `auto` is DALI on a GPU (when installed) and the
    torchvision loader on the CPU: for scoring, PIL's draft mode (JPEG DCT scaling) makes it the cheaper
    CPU decoder -- on the CIPLAB progressive JPEGs at 128 px, 6.7-7.3 ms of CPU per image against
    9.3-11.1 ms for DALI's CPU decoder, which decodes at full size (2 cores, 2 threads each).
    """
    from realfake.pipelines.loaders import dali_installed, resolve_backend

    if loader == "auto":
        return "dali" if str(device).startswith("cuda") and dali_installed() else "torch"
    return "dali" if resolve_backend(loader, device).startswith("dali") else "torch"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_engine_threads(device: str, decode_workers: int, requested: int = 0) -> int:
    """torch's intra-op threads for the engine while scoring: `requested`, or (0) the cores the decoders
    leave free, at least one.

    Decoding and the model share the CPU cores. torch's default (one thread per core) oversubscribes
    them, and its OpenMP threads spin while they wait for work. On 2 cores with 2 decode workers and the
    CIPLAB files (900 files, three runs each), 1 engine thread beat 2 for Model 1 bf16 (237-263 img/s
    against 223-243) and ResNet18 bf16 (138-154 against 130-137). ResNet18 fp32 costs so much more than
    decoding that with 1 thread the decoders wait (1.4 of 2 cores busy): there 2 threads won, 94-99
    img/s against 78-83 (`--engine-threads 2`). On a GPU the engine needs one thread to launch kernels.
    """
    if str(device).startswith("cuda"):
        return 1
    if requested:
        return requested
    return max(1, min(torch_default_threads(), usable_cores() - decode_workers))


def torch_default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _chunked(items: Iterable, sizes: Iterable[int]):
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


class _Ahead:
    """Runs a generator in a background thread, up to `depth` items ahead of its consumer.

    Two of them feed scoring: the walk (stats and header checks: Python work that would otherwise
    stall the decoder between chunks), and the loaders' preparation (a DALI pipeline is built and
    starts decoding while the previous chunk is scored). The decoders (DALI's C++ threads,
    DataLoader processes) and the engine release the GIL while they work, so these threads' work
    overlaps theirs. An exception in the thread is raised in the consumer; `close()` stops the thread
    early.
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


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class MicroBatches:
    """Runs the engine on slices of each loader batch, of the size found fastest on the first batches.

    On a CPU the best size depends on the model and the caches, not on the loader: the report's Model 1
    at 128 px took 2.9 ms an image in slices of 8 and 5.2 ms in one batch of 64 (its activations
    stay in L2), ResNet18 the reverse (13.4 at 8, 11.2 at 64). So the first batch warms up, each of the
    next ones is scored with one candidate size, and the fastest per image is kept for the rest: the
    tuning scores real images, it costs nothing extra. On a GPU, whole batches (candidates = [batch]).
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


def run_score(
    folders: list[InputPath],
    out: OutputPath,
    engine: InputPath | None = None,
    recursive: bool = True,
    batch_size: int = 64,
    loader: str = "auto",
    resume: bool = True,
    shard: str | None = None,
    num_workers: int = 2,
    engine_threads: int = 0,
    device: str = "auto",
    progress: bool = True,
    ray: str | None = None,
    ray_shards: int = 0,
) -> dict:
    """Score every image under FOLDERS with an engine; one row per file in OUT, errors beside it.

    Args:
        folders: Folders to score (files named directly are scored too).
        out: Results file (.csv, .parquet or .jsonl); a folder or a path without suffix gets scores.csv inside.
        engine: Engine directory (`realfake engine build`); default: the promoted engine.
        recursive: Score the folders' subfolders too.
        batch_size: Images per batch through the loader and the engine.
        loader: auto (DALI on a GPU when installed, else torchvision with PIL draft mode), dali or torch.
        resume: Skip the files OUT already holds; false replaces OUT and its errors file.
        shard: I/N: score only the fixed 1/N of the files whose relative path hashes to I.
        num_workers: Decoding processes (torchvision) or threads (DALI).
        engine_threads: torch threads for the engine on a CPU; 0: the cores the decoders leave free
            (see choose_engine_threads). On a GPU, one.
        device: auto, cpu or cuda[:N] for decoding (DALI) and the engine.
        progress: Show a progress bar.
        ray: Score on a Ray cluster, one task per shard (see score_ray.py): "local" starts Ray on this
            machine, "auto" or ray://HOST:PORT joins a running cluster. Every node must see the folders,
            the engine and OUT at the same paths (a shared filesystem).
        ray_shards: With ray, how many shards (tasks); 0: the number an earlier run of OUT used, else one
            per task slot of the cluster.

    Returns a summary: files (found in this shard), scored (new rows), skipped (already in OUT), errors,
    seconds (walking, decoding and scoring: not loading the engine), img_per_s (scored / seconds), and
    where everything went.
    """
    options = dict(engine=engine, recursive=recursive, batch_size=batch_size, loader=loader, resume=resume,
                   shard=shard, num_workers=num_workers, engine_threads=engine_threads, device=device,
                   progress=progress)
    if ray is not None:
        from realfake.jobs.score_ray import run_score_ray

        return run_score_ray(folders, out, address=ray, num_shards=ray_shards, **options)
    if ray_shards:
        raise ValueError(f"--ray-shards {ray_shards} needs --ray: pass --ray [ADDRESS], or drop --ray-shards")
    return run_score_here(folders, out, **options)


def run_score_here(
    folders: list[InputPath],
    out: OutputPath,
    engine: InputPath | None = None,
    recursive: bool = True,
    batch_size: int = 64,
    loader: str = "auto",
    resume: bool = True,
    shard: str | None = None,
    num_workers: int = 2,
    engine_threads: int = 0,
    device: str = "auto",
    progress: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """run_score on this machine (each Ray task runs it for its shard). `on_progress(n)` is called after
    each batch with the number of files it settled (scored or failed): what the progress bar counts."""
    import torch
    from realfake.engines.inference import load_engine, resolve_device
    from realfake.pipelines.images import sniff_problem
    from realfake.pipelines.loaders import get_loader
    from realfake.pipelines.walk import parse_shard, select_shard, walk_images
    from tqdm import tqdm

    folders = [str(f) for f in ([folders] if isinstance(folders, (str, os.PathLike)) else folders)]
    if not folders:
        raise ValueError("no folder to score: pass at least one FOLDER")
    for folder in folders:
        if not os.path.exists(folder):
            raise FileNotFoundError(f"{folder} does not exist: pass existing folders to score")
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be at least 1")
    if num_workers < 0:
        raise ValueError(f"--num-workers {num_workers} must be 0 or more")
    if engine_threads < 0:
        raise ValueError(f"--engine-threads {engine_threads} must be 0 (auto) or more")
    if loader not in LOADER_CHOICES:
        raise ValueError(f"unknown loader {loader!r}: choose one of {', '.join(LOADER_CHOICES)}")
    shard_range = parse_shard(shard)
    out_file = resolve_output(Path(out).absolute())
    err_file = errors_path(out_file)
    parquet = output_format(out_file) == "parquet"

    if engine is None:
        from realfake.engines.inference import promoted_engine

        engine = promoted_engine()
    engine_dir = Path(engine)
    # auto: the engine runs where it was built for (a CUDA engine on the GPU), and decoding follows it.
    model = load_engine(engine_dir, device=None if device == "auto" else resolve_device(device))
    run_device = str(model.device)
    engine_id, threshold, image_size = str(model.engine_id), float(model.threshold), int(model.image_size)
    if model.input == "ghosts" and loader == "dali":
        raise ValueError(f"engine {engine_id} reads JPEG ghost maps, which PIL computes; DALI decodes pixels only: "
                         "use --loader auto or torch")

    # Open the outputs. Reading them back (and cutting off a torn last line) comes first, so that an
    # output of another engine is refused before anything is written.
    previous_errors = read_existing(err_file, ERROR_COLUMNS) if resume else None
    if previous_errors is not None and previous_errors.engine_ids - {engine_id}:
        raise ValueError(_other_engine_message(err_file, previous_errors.engine_ids - {engine_id}, engine_id,
                                               engine_dir))
    writer = open_writer(out_file, RESULT_COLUMNS, resume=resume)
    if writer.existing.engine_ids - {engine_id}:
        writer.close()
        raise ValueError(_other_engine_message(out_file, writer.existing.engine_ids - {engine_id}, engine_id,
                                               engine_dir))
    if writer.existing.repaired_bytes:
        log.warning("%s: cut off a partial last line (%d bytes) left by an interrupted run",
                    out_file, writer.existing.repaired_bytes)
    # The errors of the last run are retried: the errors file starts afresh (see the module docstring).
    errors_writer = open_writer(err_file, ERROR_COLUMNS, resume=False)
    done = writer.existing.paths  # and every path met in this run (see candidates)
    log.info("scoring %s with engine %s (%s, %dpx, threshold %.4g) into %s; %d files already scored",
             ", ".join(folders), engine_id, engine_dir, image_size, threshold, out_file, len(done))

    counts = {"files": 0, "scored": 0, "skipped": 0, "errors": 0}
    pending_errors: list[dict] = []
    errors_lock = threading.Lock()  # errors come from the walk thread and from the loaders
    backend_used: set[str] = set()
    bar = tqdm(desc=f"score{f' {shard}' if shard else ''}", unit="img", disable=not progress, dynamic_ncols=True,
               smoothing=0.1)

    def add_error(path: str, reason: str) -> None:
        with errors_lock:
            pending_errors.append({"path": path, "reason": reason, "engine_id": engine_id})
            counts["errors"] += 1

    def flush_errors() -> None:
        with errors_lock:
            rows = pending_errors[:]
            pending_errors.clear()
        errors_writer.write(rows)

    def candidates():
        """(path, size, mtime) of the files still to score; what cannot be scored is recorded on the
        way. Runs in the walk thread (see _Ahead)."""
        for found in select_shard(walk_images(folders, recursive=recursive), shard_range):
            is_file = found.error is None or not found.error.startswith("unreadable directory")
            counts["files"] += is_file
            if found.path in done:
                counts["skipped"] += is_file
                continue
            done.add(found.path)  # a file met twice in one run (named and in a folder named) is scored once
            if found.error is not None:
                add_error(found.path, found.error)
                continue
            try:
                st = os.stat(found.path)
            except OSError as exc:
                add_error(found.path, f"unreadable: {exc.strerror or exc}")
                continue
            if st.st_size == 0:
                add_error(found.path, "empty file")
                continue
            if parquet:
                try:
                    found.path.encode("utf-8")
                except UnicodeEncodeError:
                    add_error(found.path, "file name is not valid UTF-8, which Parquet needs: rename it, "
                                          "or score into .csv or .jsonl")
                    continue
            if check_headers:  # files DALI should not see (see images.sniff_problem)
                problem = sniff_problem(found.path)
                if problem is not None:
                    add_error(found.path, problem)
                    continue
            yield found.path, st.st_size, mtime_iso(st.st_mtime)

    def loaders(chunks: Iterable[Sequence[tuple[str, int, str]]]):
        """(chunk, its loader) for each chunk; runs in the prepare thread (see _Ahead). A DALI loader is
        prepared there (header screen, pipeline build, first batches decoding) while the previous
        chunk is scored, but only one ahead: `ready_slots` counts the loaders alive."""
        for chunk in chunks:
            while not ready_slots.acquire(timeout=0.1):
                if stopping.is_set():
                    return
            if stopping.is_set():
                return
            data = get_loader([item[0] for item in chunk], None, train=False, backend=decoder,
                              image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                              device=run_device, draft=True, input=model.input)
            if dali:
                data.prepare()
            yield chunk, data

    def score_chunk(items: Sequence[tuple[str, int, str]], data) -> None:
        backend_used.add(data.backend)
        for batch in data:
            for index, reason in batch.errors:
                add_error(items[index][0], reason)
            n = len(batch.indices)
            if n:
                # The engine moves the batch to its device, in channels_last where its backend wants it.
                p_fake = engine_slices(batch.images).tolist()
                rows = []
                for index, p in zip(batch.indices.tolist(), p_fake, strict=True):
                    path, size, mtime = items[index]
                    rows.append({"path": path, "size": size, "mtime": mtime, "p_fake": p,
                                 "label": "fake" if p >= threshold else "real", "threshold": threshold,
                                 "engine_id": engine_id})
                writer.write(rows)
                counts["scored"] += n
            flush_errors()
            bar.update(n + len(batch.errors))
            if on_progress is not None:
                on_progress(n + len(batch.errors))
            bar.set_postfix(errors=counts["errors"], refresh=False)

    # Ghost maps are computed with PIL in the loader's worker processes (0.17 s of CPU a 600 px JPEG).
    decoder = "torch" if model.input == "ghosts" else scoring_loader(loader, run_device)
    dali = decoder == "dali"
    check_headers = dali and DALI_HEADER_CHECK
    # Import the decoder's module now, so that img/s measures scoring, not a first import of torchvision.
    import_module("realfake.pipelines.dali_loader" if dali else "realfake.pipelines.torch_loader")
    engine_slices = MicroBatches(model.predict, batch_size, run_device)
    threads_before = torch.get_num_threads()
    model_threads = choose_engine_threads(run_device, num_workers, engine_threads)
    torch.set_num_threads(model_threads)
    started = time.perf_counter()
    ahead = _Ahead(candidates(), depth=CHUNK_FILES, name="score-walk")
    # A small first chunk only where header checks delay it; each chunk restarts the loader's workers.
    first_chunk = min(FIRST_CHUNK_FILES, CHUNK_FILES) if check_headers else CHUNK_FILES
    ready_slots, stopping = threading.Semaphore(2), threading.Event()  # the loader in use and the next
    prepared = _Ahead(loaders(_chunked(ahead, (first_chunk, CHUNK_FILES))), depth=1, name="score-prepare")
    try:
        for chunk, data in prepared:
            flush_errors()
            score_chunk(chunk, data)
            del data  # its pipeline / workers go before the slot is given back
            ready_slots.release()
        flush_errors()
    finally:
        torch.set_num_threads(threads_before)
        stopping.set()
        ahead.close()  # first: the prepare thread may be waiting for the walk
        prepared.close()
        bar.close()
        writer.close()  # Parquet: combines the part files, also after an error or Ctrl-C
        errors_writer.close()
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out_file), "errors_file": str(err_file), "engine": str(engine_dir), "engine_id": engine_id,
        "threshold": threshold, "image_size": image_size, "loader": ",".join(sorted(backend_used)) or None,
        "device": run_device, "engine_threads": model_threads, "shard": shard, "folders": folders,
        "recursive": recursive,
        "files": counts["files"], "scored": counts["scored"], "skipped": counts["skipped"],
        "errors": counts["errors"],
        "retried_errors": len(previous_errors.paths) if previous_errors is not None else 0,
        "repaired_bytes": writer.existing.repaired_bytes,
        "seconds": round(seconds, 3),
        "img_per_s": round(counts["scored"] / seconds, 2) if seconds > 0 else None,
    }
    log.info("scored %d, skipped %d, errors %d of %d files in %.1f s (%.1f img/s)", summary["scored"],
             summary["skipped"], summary["errors"], summary["files"], seconds, summary["img_per_s"] or 0.0)
    return summary


def merge_outputs(out: OutputPath, shard_outputs: list[InputPath]) -> dict:
    """Join the outputs of `realfake score --shard i/n` runs into OUT (any format, from its suffix), and
    their errors files into OUT's errors file. All must hold the same engine's rows and no path may
    appear twice (shards are disjoint). OUT is written aside and renamed: it is replaced whole.
    """
    out_file = resolve_output(out)
    sources = [resolve_output(s) for s in shard_outputs]
    if not sources:
        raise ValueError("nothing to merge: pass the shard outputs after OUT")
    for source in sources:
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist: pass the --out of each shard's run")
        if source.resolve() == out_file.resolve():
            raise ValueError(f"{source} is both an input and OUT: merge into a new file")
    seen: dict[str, int] = {}  # path -> index of the source that holds it
    engine_ids: dict[str, Path] = {}

    def check(row: dict, k: int, what: Path) -> None:
        engine_ids.setdefault(row["engine_id"], what)
        if len(engine_ids) > 1:
            a, b = list(engine_ids.items())[:2]
            raise ValueError(f"{a[1]} holds scores of engine {a[0]} but {b[1]} of engine {b[0]}: "
                             "merge only the shards of one engine")
        if row["path"] in seen:
            raise ValueError(f"{row['path']} is in both {sources[seen[row['path']]]} and {what}: the shard outputs "
                             "overlap (the same shard twice, or shards of different --shard I/N?)")
        seen[row["path"]] = k

    def merge(columns, files: list[tuple[int, Path]], target: Path) -> int:
        tmp = target.with_name(f".{target.name}.merging{target.suffix}")
        remove_output(tmp)
        n = 0
        writer = open_writer(tmp, columns, resume=False)
        try:
            batch = []
            for k, path in files:
                for row in read_rows(path, columns):
                    check(row, k, path)
                    batch.append(row)
                    if len(batch) >= MERGE_BATCH_ROWS:
                        writer.write(batch)
                        n += len(batch)
                        batch = []
            writer.write(batch)
            n += len(batch)
            writer.close()
        except BaseException:
            writer.close()
            remove_output(tmp)
            raise
        # OUT is replaced whole: parts left by an old Parquet run there would count as rows of the new one.
        shutil.rmtree(parts_dir(target), ignore_errors=True)
        os.replace(tmp, target)
        return n

    out_file.parent.mkdir(parents=True, exist_ok=True)
    rows = merge(RESULT_COLUMNS, list(enumerate(sources)), out_file)
    error_sources = [(k, errors_path(s)) for k, s in enumerate(sources) if errors_path(s).exists()]
    errors = merge(ERROR_COLUMNS, error_sources, errors_path(out_file))
    return {"out": str(out_file), "errors_file": str(errors_path(out_file)), "inputs": [str(s) for s in sources],
            "rows": rows, "errors": errors, "engine_id": next(iter(engine_ids), None)}
