"""`realfake score ... --ray [ADDRESS]`: score folders on a Ray cluster, one Ray task per shard.

The files are split into N shards by the path hash of `--shard I/N` (pipelines/walk.py). Each shard is
one Ray task that runs the one-machine scoring (`scorer.score_here(..., shard="i/N")`) into its own part
next to OUT, and the driver (the process that called run_score) merges the parts into OUT with
`merge_outputs`, errors files included:

    OUT.shards/shards.json            N, engine, folders: fixed for OUT (a rerun uses the same N)
    OUT.shards/part-I-of-N.<suffix>   shard I's rows (and part-I-of-N.<suffix>.errors.csv)
    OUT.shards/part-I-of-N.<suffix>.lock, driver.lock   who writes what (see below)

Guarantees, the one-machine ones carried over:
- Resume: a part is a resumable output of its own. A task whose worker process dies (kill -9, OOM) or
  whose node is lost is retried by Ray (TASK_RETRIES times) and the retry resumes its part; rerunning
  the command after the driver died resumes every part. The parts stay after the merge, so the next
  run (a scheduled job) scores only what is new; OUT is rebuilt from them, written aside and renamed.
- Exactly once: the shards are disjoint; N is written down at the first run and a rerun with another
  N is refused, as is an OUT that this path did not write; merge_outputs refuses a path seen twice.
- One writer per part: each task holds an exclusive `fcntl.flock` on its part's lock file for its
  lifetime, so an orphaned task of a killed driver (Ray kills those, but not at once) can never write
  to a part that the rerun's task writes: the rerun's task waits for the lock. `driver.lock` keeps a
  second driver off the same OUT. Both locks go with the process that holds them, even on kill -9.
- One engine per output, the errors file, the summary and the exit codes are those of run_score.
- Files must be readable at the same path on every node (a shared filesystem): a task that cannot
  see a folder, the engine or OUT's shard folder fails at once with one line naming its node (an
  application error: Ray does not retry it).

Tasks, not a Ray Data actor pool: a shard is the unit that resumes, retries and locks, and a task per
shard runs the product's own streaming scoring unchanged (decode workers, engine, fsynced rows); Ray
Data would move decoded images through its object store and need its own bookkeeping of what was
written. See docs/cluster.md.

Ray is imported lazily; without it `--ray` says how to install it (the `cluster` extra). The driver
never imports torch (nor do this module's imports): only the tasks load it, in the processes that score,
so that a run pays the torch import once per task process rather than once more before any task starts.

One module, though long: the driver, the Ray task and the merge share the part-file and lock
protocol that makes a cancelled or restarted run resume exactly.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from realfake.engines.registry import promoted_engine
from realfake.engines.schema import engine_ghost_maps, read_engine_meta
from realfake.jobs.service.store import realfake_home
from realfake.jobs.tasks.outputs.common import ERROR_COLUMNS, errors_path, resolve_output
from realfake.jobs.tasks.outputs.writers import read_existing, remove_output
from realfake.jobs.tasks.score.files import check_folders
from realfake.jobs.tasks.score.merge import merge_outputs
from tqdm import tqdm

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'realfake[cluster]'"
SHARDS_SUFFIX = ".shards"
MANIFEST = "shards.json"
DRIVER_LOCK = "driver.lock"
LOCK_SUFFIX = ".lock"
LOCAL = "local"  # `--ray` without an address: start Ray on this machine
# Retries of a task whose worker process or node died (Ray's max_retries); each retry resumes its part.
TASK_RETRIES = 3
# How long a task waits for its part's lock: the time Ray takes to kill a dead driver's tasks, or a
# shared filesystem to drop the locks of a lost node (NFS leases are about 90 s).
LOCK_WAIT_S = 180.0
# How often the driver reads the progress counter and checks the tasks.
POLL_S = 0.5
# How long the driver waits for cancelled tasks to end before it returns (a job runner's grace is longer).
CANCEL_WAIT_S = 5.0
# Ray raises the niceness of its worker processes by 15 (RAY_worker_niceness) so that its own processes
# stay responsive. A scoring task is the node's main work, as a plain `realfake score` is; at +15 any
# other process on the node, Ray's own included, pre-empts its decoders and engine. So the run's tasks
# keep the niceness of the node's Ray, as a command keeps its shell's: a Ray that the run starts gets it
# as its system config (its prestarted workers have it); on a cluster that is up, the run's job carries
# it in its runtime_env (its first worker starts afresh); on a Ray that the caller initialised, each task.
WORKER_NICENESS = 0
NICE_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": str(WORKER_NICENESS)}}
_ADDRESS = re.compile(r"^(auto|ray://\S+|[\w.\-\[\]:]+:\d+)$")


def import_ray():
    """The ray module, or a ValueError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed in this environment: {INSTALL_HINT} "
                         "(on every node of the cluster too)") from None
    return ray


def check_address(address: str) -> str:
    """"local", "auto", "ray://HOST:PORT" or "HOST:PORT"; anything else is a ValueError."""
    address = str(address).strip()
    if address == LOCAL or _ADDRESS.match(address):
        return address
    raise ValueError(f"--ray {address!r} is not a Ray address: give auto, ray://HOST:PORT or HOST:PORT, or no address "
                     "(a Ray instance on this machine); put --ray after the folders or write --ray local, since "
                     "a word after --ray is taken as its address")


def shards_dir(out_file: Path) -> Path:
    """`OUT.shards/`: the parts of a --ray run (not `OUT.parts/`, which the Parquet writer uses)."""
    return Path(str(out_file) + SHARDS_SUFFIX)


def part_path(out_file: Path, index: int, count: int) -> Path:
    """Shard `index` of `count`'s output, in OUT's format."""
    return shards_dir(out_file) / f"part-{index}-of-{count}{out_file.suffix}"


def node_name() -> str:
    try:
        import ray

        return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    except Exception:  # outside Ray
        return socket.gethostname()


@contextlib.contextmanager
def exclusive_lock(path: Path, *, wait_s: float, busy: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) while the block runs; wait up to `wait_s`
    for it, then raise OSError naming who holds it (written into the file by the holder) and `busy`.
    The kernel drops the lock with the process, however it ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                    raise OSError(f"{path} is locked by {holder}: {busy}") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the task side

class ProgressCounter:
    """Files settled by all tasks (a Ray actor): tasks add, the driver reads and draws the one bar."""

    def __init__(self):
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    def total(self) -> int:
        return self.done


def score_shard(job: dict, index: int, count: int, counter) -> dict:
    """One Ray task: score shard index/count into its part, resumably, holding the part's lock."""
    from realfake.jobs.tasks.score.scorer import score_here

    node = node_name()
    shared = "every node must see it at the same path (a shared filesystem)"
    for folder in job["folders"]:
        if not os.path.exists(folder):
            raise FileNotFoundError(f"node {node} cannot see folder {folder}: {shared}")
    if not os.path.isdir(job["engine"]):
        raise FileNotFoundError(f"node {node} cannot see engine {job['engine']}: {shared}")
    manifest = Path(job["shards_dir"]) / MANIFEST
    try:
        token = json.loads(manifest.read_text()).get("token")
    except (OSError, ValueError):
        token = None
    if token != job["token"]:
        raise FileNotFoundError(f"node {node} does not see {manifest} as the driver wrote it: OUT's folder "
                                f"{Path(job['shards_dir']).parent} must be on the shared filesystem ({shared})")
    part = Path(job["parts"][index])
    busy = (f"an earlier task of shard {index}/{count} still writes its part (an orphan of a killed run, "
            f"or a node lost with its lock): wait for it to end and rerun")
    with exclusive_lock(Path(str(part) + LOCK_SUFFIX), wait_s=job["lock_wait_s"], busy=busy):
        summary = score_here(job["folders"], part, engine=job["engine"], recursive=job["recursive"],
                                 batch_size=job["batch_size"], loader=job["loader"], resume=True,
                                 shard=f"{index}/{count}", num_workers=job["num_workers"],
                                 engine_threads=job["engine_threads"], device=job["device"], progress=False,
                                 on_progress=lambda n: counter.add.remote(n))
    # Wall-clock span of the scoring itself (the summary's seconds), to tell concurrent tasks from sequential ones.
    ended = time.time()
    return {**summary, "node": node, "niceness": os.nice(0), "scoring_from": round(ended - summary["seconds"], 3),
            "scoring_to": round(ended, 3)}


# --------------------------------------------------------------------------- the driver side

def _check_ray_options(shard: str | None, device: str) -> None:
    """What --ray adds to the one-machine option checks, made before Ray starts rather than in every task."""
    if shard is not None:
        raise ValueError("--shard and --ray do not go together: --ray splits the files itself (--ray-shards N); "
                         "drop --shard")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r} with --ray: use auto, cpu or cuda (each task gets its GPU from Ray)")


def task_resources(device_type: str, num_workers: int, engine_threads: int,
                   nodes: Sequence[dict]) -> tuple[float, float, int, int]:
    """(num_cpus, num_gpus, engine threads, task slots of the cluster) for one shard's task.

    A task asks for what one `realfake score` process uses: its decode workers plus the engine's
    threads (the GPU does the engine's work on CUDA: one thread, and num_gpus=1), at most the CPUs of the
    largest node. Slots: how many such tasks the alive nodes run at once, the default shard count.
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    largest = max((int(r.get("CPU", 0)) for r in alive), default=0)
    cuda = device_type == "cuda"
    wanted = num_workers + (1 if cuda else max(1, engine_threads))
    num_cpus = max(1, min(wanted, largest)) if largest else wanted
    num_gpus = 1 if cuda else 0
    threads = engine_threads or (1 if cuda else max(1, num_cpus - num_workers))
    slots = 0
    for resources in alive:
        fit = int(resources.get("CPU", 0) // num_cpus)
        if num_gpus:
            fit = min(fit, int(resources.get("GPU", 0) // num_gpus))
        slots += fit
    return float(num_cpus), float(num_gpus), threads, max(1, slots)


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        int(manifest["num_shards"])
        return manifest
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is damaged: remove {directory} and OUT to start over, or pass --no-resume") from None


def _write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def _clear_shards(directory: Path, out_file: Path, wait_s: float) -> None:
    """--no-resume: remove the parts, their locks, OUT and its errors file, once no task of an old run
    writes a part (each part's lock is taken first)."""
    with contextlib.ExitStack() as locks:
        for lock in sorted(directory.glob(f"*{LOCK_SUFFIX}")):
            if lock.name != DRIVER_LOCK:
                locks.enter_context(exclusive_lock(lock, wait_s=wait_s, busy="a task of an earlier run still writes "
                                                                             "this part: wait for it to end"))
        for entry in directory.iterdir():  # lock files too: no process but this one holds them now
            if entry.name == DRIVER_LOCK:
                continue
            if entry.is_dir():  # a Parquet part's .parts folder
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
    remove_output(out_file)
    errors_path(out_file).unlink(missing_ok=True)


def _check_rerun(manifest: dict | None, out_file: Path, directory: Path, num_shards: int, engine_id: str,
                 folders: list[str], recursive: bool) -> None:
    """Refuse a rerun that could score a file twice or mix engines (see the module docstring)."""
    fresh = "score into another --out, or pass --no-resume to start over"
    if manifest is None:
        if out_file.exists() or errors_path(out_file).exists():
            raise ValueError(f"{out_file} exists but was not written by `score --ray` (no {directory / MANIFEST}): {fresh}")
        return
    if num_shards and num_shards != int(manifest["num_shards"]):
        raise ValueError(f"{directory} holds {manifest['num_shards']} shards of an earlier run of this OUT: rerun with "
                         f"--ray-shards {manifest['num_shards']} (or 0) to resume it, or {fresh}")
    if manifest.get("engine_id") != engine_id:
        raise ValueError(f"{directory} holds scores of engine {manifest.get('engine_id')}, but this run uses engine "
                         f"{engine_id}: {fresh} (one output never mixes engines)")
    if manifest.get("folders") != folders or manifest.get("recursive") != recursive:
        raise ValueError(f"{directory} holds shards of folders {', '.join(manifest.get('folders', []))} "
                         f"(recursive: {manifest.get('recursive')}); a file's shard depends on the folder it is found "
                         f"under, so a --ray rerun must score the same folders: {fresh}")


def _asks_for_a_token(exc: BaseException) -> bool:
    """Whether a failed ray.init was refused for a missing or wrong token. Ray reports it as a
    ConnectionError caused by an error whose text names the refusal, not as an exception of its own."""
    while exc is not None:
        if any(word in str(exc) for word in ("InvalidAuthToken", "AuthenticationError", "Unauthenticated")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _Connection:
    """ray.init for the run, and what undoes it: a Ray that this run started (or joined) is shut down at
    the end; one that the caller had initialised is left as it was."""

    def __init__(self, ray, address: str):
        self.ray = ray
        self.started = not ray.is_initialized()
        self.seconds = 0.0
        self.task_runtime_env = None if self.started else NICE_RUNTIME_ENV
        if not self.started:
            log.info("Ray is already initialised in this process: scoring on it (--ray %s not used)", address)
            return
        start = time.perf_counter()
        # ray.init makes SIGTERM exit the process; a job runner's handler (JobTerminated) must stay.
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            # log_to_driver off: the tasks' and Ray's own lines would cut through the progress bar and the
            # --json summary on stdout; they stay in each node's Ray logs (/tmp/ray/session_*/logs).
            if address == LOCAL:
                ray.init(address="local", include_dashboard=False, log_to_driver=False,
                         _system_config={"worker_niceness": WORKER_NICENESS})
            else:
                ray.init(address=address, log_to_driver=False, runtime_env=NICE_RUNTIME_ENV)
        except ConnectionError as exc:
            if _asks_for_a_token(exc):
                raise ConnectionError(
                    f"the Ray cluster at {address} asks for an authentication token: set RAY_AUTH_MODE=token where "
                    "this command runs, with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
                    "(`ray get-auth-token` on its head node prints it); see docs/cluster.md") from None
            raise ConnectionError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}: start it "
                                  "(`ray start --head`) or give its address") from None
        finally:
            if sigterm is not None and signal.getsignal(signal.SIGTERM) is not sigterm:
                with contextlib.suppress(ValueError):  # not the main thread: ray.init left it alone too
                    signal.signal(signal.SIGTERM, sigterm)
        self.seconds = time.perf_counter() - start

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


@contextlib.contextmanager
def _signals_raised_as_they_are() -> Iterator[None]:
    """An exception that a signal handler raises while Ray's compiled code waits (a job's JobTerminated on
    SIGTERM, KeyboardInterrupt on Ctrl-C) comes out of Ray as a SystemError caused by it: raise the cause,
    so that the caller's `except JobTerminated` / `except KeyboardInterrupt` sees it."""
    try:
        yield
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, BaseException) and not isinstance(cause, Exception):
            raise cause.with_traceback(cause.__traceback__) from None
        raise


def _task_error(ray, exc: BaseException, index: int, count: int) -> BaseException:
    """The error the driver raises for a failed task: a task's ValueError/OSError as it is (one line, it
    names the node or the file), anything else with the shard named."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, (ValueError, OSError)):
        return cause
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.TaskUnschedulableError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RuntimeError(f"shard {index}/{count} failed after {TASK_RETRIES} retries ({first}): the rows written "
                            "are kept; rerun the same command to resume")
    return RuntimeError(f"shard {index}/{count} failed: {type(cause or exc).__name__}: {cause or exc}")


def run_score_ray(folders: list, out, *, address: str, num_shards: int = 0, engine=None, recursive: bool = True,
                  batch_size: int = 64, loader: str = "auto", resume: bool = True, shard: str | None = None,
                  num_workers: int = 2, engine_threads: int = 0, device: str = "auto",
                  progress: bool = True) -> dict:
    """run_score(..., ray=address): one Ray task per shard, parts merged into OUT (see the module docstring).
    Returns run_score's summary over all shards, plus ray, ray_shards, shards_dir, nodes, startup_s
    (connecting to or starting Ray), merge_s and tasks (each last attempt's shard, node, scored, errors,
    seconds and img_per_s, counted as run_score counts them, the niceness its process scored at, and
    scoring_from/scoring_to, the Unix times of that scoring on its node's clock); seconds runs from the
    tasks' submission to the merge's end.
    """
    address = check_address(address)
    folders = [os.path.abspath(str(f)) for f in ([folders] if isinstance(folders, (str, os.PathLike)) else folders)]
    check_folders(folders)
    _check_ray_options(shard, device)
    out_file = resolve_output(Path(out).absolute())
    engine_dir = Path(os.path.abspath(engine if engine is not None else promoted_engine(realfake_home())))
    meta = read_engine_meta(engine_dir, verify_artifact=False)  # each task checks it fully when it loads it
    engine_id = str(meta["engine_id"])
    device_type = "cuda" if device == "cuda" or (device == "auto" and meta["device"] == "cuda") else "cpu"
    ray = import_ray()

    directory = shards_dir(out_file)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive_lock(directory / DRIVER_LOCK, wait_s=0, busy=(
            f"another `realfake score --ray` run is scoring into {out_file}: wait for it to end (or stop it)")))
        if not resume:
            _clear_shards(directory, out_file, LOCK_WAIT_S)
        manifest = _read_manifest(directory)
        _check_rerun(manifest, out_file, directory, num_shards, engine_id, folders, recursive)

        # Ray prints its own messages (a worker died, ...) on stdout from a thread of its own: to stderr with
        # them while Ray is up, so that stdout holds only the summary (--json).
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        connection = _Connection(ray, address)
        stack.callback(connection.close)
        num_cpus, num_gpus, threads, slots = task_resources(device_type, num_workers, engine_threads, ray.nodes())
        count = int(manifest["num_shards"]) if manifest else (num_shards or slots)
        token = uuid.uuid4().hex
        _write_manifest(directory, {"num_shards": count, "engine_id": engine_id, "engine": str(engine_dir),
                                    "folders": folders, "recursive": recursive, "token": token})
        parts = [part_path(out_file, i, count) for i in range(count)]
        rows_before = sum(read_existing(p).rows for p in parts)
        errors_before = sum(read_existing(errors_path(p), ERROR_COLUMNS).rows for p in parts)
        log.info("scoring %s with engine %s on Ray: %d shards, tasks of %g CPUs%s, into %s",
                 ", ".join(folders), engine_id, count, num_cpus, f" and {num_gpus:g} GPU" if num_gpus else "", directory)
        job = {"folders": folders, "engine": str(engine_dir), "recursive": recursive, "batch_size": batch_size,
               "loader": loader, "num_workers": num_workers, "engine_threads": threads, "device": device,
               "parts": [str(p) for p in parts], "shards_dir": str(directory), "token": token,
               "lock_wait_s": LOCK_WAIT_S}

        started = time.perf_counter()
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        task = ray.remote(score_shard)
        options = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=TASK_RETRIES, retry_exceptions=False,
                       runtime_env=connection.task_runtime_env)
        pending = {task.options(name=f"realfake-score-{i}-of-{count}", **options).remote(job, i, count, counter): i
                   for i in range(count)}
        bar = stack.enter_context(tqdm(desc=f"score on ray ({count} shards)", unit="img", disable=not progress,
                                       dynamic_ncols=True, smoothing=0.1))
        summaries: dict[int, dict] = {}
        try:
            while pending:
                with _signals_raised_as_they_are():
                    done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S, fetch_local=True)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        with _signals_raised_as_they_are():
                            summaries[index] = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        raise _task_error(ray, exc, index, count) from None
                with contextlib.suppress(ray.exceptions.RayError), _signals_raised_as_they_are():
                    bar.update(ray.get(counter.total.remote(), timeout=POLL_S * 4) - bar.n)
                bar.set_postfix(shards=f"{len(summaries)}/{count}",
                                errors=sum(s["errors"] for s in summaries.values()), refresh=False)
        except BaseException:
            # A failed task, Ctrl-C, or a job's cancel (JobTerminated): stop every task before returning,
            # so that none writes on after this run has ended.
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            raise
        finally:
            with contextlib.suppress(Exception):
                ray.kill(counter)
        connection.close()
        merge_start = time.perf_counter()
        merged = merge_outputs(out_file, [str(p) for p in parts])
        merge_s = time.perf_counter() - merge_start
        seconds = time.perf_counter() - started
    return _summary(summaries, merged, meta, engine_dir, folders, recursive, address, count, directory,
                    rows_before, errors_before, seconds, connection.seconds, merge_s)


def _summary(summaries: dict[int, dict], merged: dict, meta: dict, engine_dir: Path, folders: list[str],
             recursive: bool, address: str, count: int, directory: Path, rows_before: int, errors_before: int,
             seconds: float, startup_s: float, merge_s: float) -> dict:
    """run_score's summary over all shards. A retried task's last attempt counts the rows of the attempt
    that died as skipped; they are new rows of this run, so scored is taken from the parts themselves."""
    each = list(summaries.values())
    total = {key: sum(s[key] for s in each) for key in ("files", "scored", "skipped", "errors", "repaired_bytes")}
    scored = merged["rows"] - rows_before
    skipped = total["skipped"] + total["scored"] - scored
    return {
        "out": merged["out"], "errors_file": merged["errors_file"], "engine": str(engine_dir),
        "engine_id": str(meta["engine_id"]), "threshold": float(meta["threshold"]),
        "image_size": int(meta["image_size"]),
        "loader": ",".join(sorted({p for s in each if s["loader"] for p in s["loader"].split(",")})) or None,
        "ghost_maps": engine_ghost_maps(meta), "reference_maps": sum(s.get("reference_maps", 0) for s in each),
        "device": ",".join(sorted({s["device"] for s in each})),
        "engine_threads": max((s["engine_threads"] for s in each), default=0),
        "shard": None, "folders": folders, "recursive": recursive,
        "files": total["files"], "scored": scored, "skipped": skipped, "errors": total["errors"],
        # Each shard's last attempt: rows an attempt that died had written count as skipped there.
        "decisions": {d: sum(s["decisions"][d] for s in each) for d in (each[0]["decisions"] if each else {})},
        "retried_errors": errors_before, "repaired_bytes": total["repaired_bytes"],
        "seconds": round(seconds, 3), "img_per_s": round(scored / seconds, 2) if seconds > 0 else None,
        "ray": address, "ray_shards": count, "shards_dir": str(directory),
        "nodes": sorted({s["node"] for s in each}), "startup_s": round(startup_s, 3), "merge_s": round(merge_s, 3),
        "tasks": [{"shard": f"{i}/{count}", "node": s["node"], "scored": s["scored"], "errors": s["errors"],
                   "seconds": s["seconds"], "img_per_s": s["img_per_s"], "niceness": s["niceness"],
                   "scoring_from": s["scoring_from"], "scoring_to": s["scoring_to"]} for i, s in sorted(summaries.items())],
    }
