"""The job store: one SQLite file under $REALFAKE_HOME (default ~/.realfake) shared by submitters and workers.

Every state change is one `BEGIN IMMEDIATE` transaction, so two processes never see half a change and
the queue never loses, doubles or strands a job:

    queued --claim--> running --runner--> succeeded | failed
       |                 |  \\--worker died--> queued (attempts < max_attempts) | failed
       |                 \\--cancel--> cancelled
       \\--cancel--> cancelled              failed | cancelled --retry--> queued

Layout of $REALFAKE_HOME:
    jobs.db                  the store (WAL mode: readers never block the writer)
    jobs/<id>/job.log        the job's stdout and stderr, every attempt appended
    jobs/<id>/out/           the output directory when the spec names no `out`
    jobs/<id>/result.json    the summary the job function returned

One module, though long: every state change of a job is one SQLite transaction here, and the state
machine reads best in one place (huey's storage layer is one file for the same reason).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from realfake.jobs.service.spec import JobSpec

HOME_ENV = "REALFAKE_HOME"
DB_NAME = "jobs.db"
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_MAX_ATTEMPTS = 3
# A worker heartbeats every couple of seconds; one silent for this long is taken for dead (the only
# test that works across hosts; on its own host a worker is also dead as soon as its pid is gone).
DEFAULT_STALE_AFTER_S = 60.0
SCHEMA_VERSION = 1

_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never reused
        kind TEXT NOT NULL,
        spec TEXT NOT NULL,                     -- JSON of the validated keyword arguments
        state TEXT NOT NULL CHECK (state IN {STATES!r}),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        worker_id TEXT,
        child_pid INTEGER,
        log_path TEXT NOT NULL,
        out TEXT,
        result TEXT,                            -- JSON summary returned by the job function
        error TEXT,
        schedule TEXT,
        due_at REAL,
        UNIQUE (schedule, due_at)               -- one job per schedule and due time, whoever queues it
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id)",
    """CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        job_id INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS schedules (
        name TEXT PRIMARY KEY,
        cron TEXT NOT NULL,
        tz TEXT NOT NULL,
        kind TEXT NOT NULL,
        spec TEXT NOT NULL,
        default_out INTEGER NOT NULL DEFAULT 0,
        paused INTEGER NOT NULL DEFAULT 0,
        next_due REAL NOT NULL,
        created_at REAL NOT NULL
    )""",
]


class JobNotFound(ValueError):
    pass


class JobStateError(ValueError):
    """An action that the job's current state does not allow (retrying a running job, ...)."""


def realfake_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".realfake").expanduser()


def iso(ts: float | None) -> str | None:
    """Unix time -> ISO 8601 in UTC, as written in --json output."""
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    spec: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    child_pid: int | None
    log_path: str
    out: str | None
    result: dict[str, Any] | None
    error: str | None
    schedule: str | None
    due_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = {key: row[key] for key in row.keys() if key in cls.__dataclass_fields__}
        data["spec"] = json.loads(data["spec"])
        data["result"] = json.loads(data["result"]) if data["result"] is not None else None
        data["cancel_requested"] = bool(data["cancel_requested"])
        return cls(**data)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def job_dir(self) -> Path:
        return Path(self.log_path).parent

    def duration_s(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (now or time.time())
        return max(0.0, end - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of `jobs show --json` / `jobs list --json` (times in ISO 8601 UTC)."""
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "spec": self.spec,
            "attempts": self.attempts, "max_attempts": self.max_attempts,
            "cancel_requested": self.cancel_requested,
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "duration_s": self.duration_s(),
            "worker_id": self.worker_id, "child_pid": self.child_pid, "log_path": self.log_path,
            "out": self.out, "result": self.result, "error": self.error,
            "schedule": self.schedule, "due_at": iso(self.due_at),
        }


@dataclass(frozen=True)
class Worker:
    id: str
    hostname: str
    pid: int
    started_at: float
    heartbeat_at: float
    job_id: int | None


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): kill(0) said it exists


def _kill_orphan_runner(job: Job) -> None:
    """Kill the process group of a dead worker's runner child, if it still runs on this host.

    The runner dies with its worker (PR_SET_PDEATHSIG), but its own children (loader workers) may not.
    The command line is checked first so that a recycled pid is never killed.
    """
    if job.child_pid is None:
        return
    try:
        with open(f"/proc/{job.child_pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        argv = []
    if b"realfake.jobs.service.runner" in argv and str(job.id).encode() in argv:
        try:
            os.killpg(job.child_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class JobStore:
    """The SQLite store. One instance per process (a connection is not shared across processes)."""

    def __init__(self, home: Path | str | None = None, *, timeout_s: float = 30.0):
        self.home = Path(home).expanduser() if home is not None else realfake_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / DB_NAME
        # isolation_level=None: no implicit transactions; every change below opens BEGIN IMMEDIATE itself.
        self.conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._retry_locked(lambda: self.conn.execute("PRAGMA journal_mode = WAL"), timeout_s)
        with self.transaction() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _retry_locked(action: Callable[[], Any], timeout_s: float) -> Any:
        # Switching to WAL needs a moment alone with the file; many processes opening a fresh store at
        # once may see "database is locked" here even with a busy timeout.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so a read-then-write inside it
        cannot interleave with another process's (the claim, the schedule tick and recovery rely on it)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    # -- jobs -------------------------------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.home / "jobs" / str(job_id)

    def insert_job(self, conn: sqlite3.Connection, spec: JobSpec, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                   now: float | None = None, schedule: str | None = None, due_at: float | None = None,
                   state: str = "queued", error: str | None = None) -> int | None:
        """Insert a job inside the caller's transaction. Returns its id, or None when the schedule already
        has a job for `due_at` (the UNIQUE constraint)."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        now = time.time() if now is None else now
        row = conn.execute(
            "INSERT INTO jobs (kind, spec, state, max_attempts, created_at, finished_at, log_path, error,"
            " schedule, due_at) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?)"
            " ON CONFLICT (schedule, due_at) DO NOTHING RETURNING id",
            (spec.kind, json.dumps(spec.args), state, max_attempts, now,
             now if state in TERMINAL_STATES else None, error, schedule, due_at),
        ).fetchone()
        if row is None:
            return None
        job_id = row[0]
        args = dict(spec.args)
        if spec.default_out:
            args[spec.default_out] = str(self.job_dir(job_id) / "out")
        conn.execute(
            "UPDATE jobs SET spec = ?, log_path = ?, out = ? WHERE id = ?",
            (json.dumps(args), str(self.job_dir(job_id) / "job.log"), args.get("out"), job_id),
        )
        return job_id

    def submit(self, spec: JobSpec, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, now: float | None = None) -> Job:
        """Queue a validated spec; returns the job (its id is unique and never reused)."""
        with self.transaction() as conn:
            job_id = self.insert_job(conn, spec, max_attempts=max_attempts, now=now)
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id} in {self.path}: list jobs with `realfake jobs list`")
        return Job.from_row(row)

    def list_jobs(self, state: str | None = None, *, schedule: str | None = None,
                  limit: int | None = None) -> list[Job]:
        """Jobs oldest first; with `limit`, the newest `limit` of them."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}: choose one of {', '.join(STATES)}")
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if schedule is not None:
            where.append("schedule = ?")
            params.append(schedule)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Job.from_row(r) for r in reversed(self.conn.execute(sql, params).fetchall())]

    def claim(self, worker_id: str, *, now: float | None = None) -> Job | None:
        """Atomically take the oldest queued job for `worker_id` (None when the queue is empty).

        The inner SELECT and the UPDATE run under one write lock, and `AND state = 'queued'` re-checks
        the row, so two workers can never take one job."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, started_at = ?,"
                " finished_at = NULL, child_pid = NULL"
                " WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1)"
                " AND state = 'queued' RETURNING *",
                (worker_id, now),
            ).fetchone()
            if row is not None:
                conn.execute("UPDATE workers SET job_id = ? WHERE id = ?", (row["id"], worker_id))
        return Job.from_row(row) if row is not None else None

    def set_child_pid(self, job_id: int, attempt: int, pid: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE jobs SET child_pid = ? WHERE id = ? AND attempts = ? AND state = 'running'",
                         (pid, job_id, attempt))

    def finish(self, job_id: int, attempt: int, state: str, *, result: dict | None = None,
               error: str | None = None, now: float | None = None) -> bool:
        """End attempt `attempt` of a running job. False (nothing changed) when that attempt is no longer
        the running one — e.g. the job was recovered and re-run meanwhile — so a late writer cannot
        overwrite a newer attempt."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish() takes a final state, not {state!r}")
        now = time.time() if now is None else now
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?"
                " WHERE id = ? AND attempts = ? AND state = 'running'",
                (state, json.dumps(result) if result is not None else None, error, now, job_id, attempt),
            ).rowcount
            conn.execute("UPDATE workers SET job_id = NULL WHERE job_id = ?", (job_id,))
        return changed == 1

    def requeue(self, job_id: int, attempt: int, *, note: str) -> bool:
        """Give a running job back to the queue without counting the attempt (worker shutting down).
        A job whose cancel was requested ends cancelled instead."""
        now = time.time()
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET"
                " state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,"
                " attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END,"
                " finished_at = CASE WHEN cancel_requested THEN ? ELSE NULL END,"
                " error = CASE WHEN cancel_requested THEN 'cancelled by request' ELSE NULL END,"
                " started_at = CASE WHEN cancel_requested THEN started_at ELSE NULL END,"
                " worker_id = NULL, child_pid = NULL"
                " WHERE id = ? AND attempts = ? AND state = 'running'",
                (now, job_id, attempt),
            ).rowcount
            conn.execute("UPDATE workers SET job_id = NULL WHERE job_id = ?", (job_id,))
        if changed:
            append_log(self.get(job_id), note)
        return changed == 1

    def request_cancel(self, job_id: int, *, now: float | None = None) -> Job:
        """A queued job is cancelled at once; a running one is flagged and its worker stops it
        (SIGTERM, then SIGKILL after a grace period) within seconds."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            job = self.get(job_id)
            if job.terminal:
                raise JobStateError(f"job {job_id} already {job.state}: nothing to cancel")
            if job.state == "queued":
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?,"
                    " error = 'cancelled before it started' WHERE id = ?", (now, job_id))
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def retry(self, job_id: int) -> Job:
        """Queue a failed or cancelled job again under the same id: same spec, same output directory (so a
        resumable job such as score resumes), log appended, attempts counted from zero."""
        with self.transaction() as conn:
            job = self.get(job_id)
            if job.state not in ("failed", "cancelled"):
                raise JobStateError(
                    f"job {job_id} is {job.state}: only failed or cancelled jobs can be retried"
                )
            conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, cancel_requested = 0, started_at = NULL,"
                " finished_at = NULL, worker_id = NULL, child_pid = NULL, result = NULL, error = NULL"
                " WHERE id = ?", (job_id,))
        append_log(job, f"retry requested (was {job.state}: {job.error})")
        return self.get(job_id)

    # -- workers ----------------------------------------------------------------------------------

    def register_worker(self, worker_id: str, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (id, hostname, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                (worker_id, socket.gethostname(), os.getpid(), now, now))

    def heartbeat(self, worker_id: str, *, now: float | None = None) -> bool:
        """False when the worker's row is gone (another worker took it for dead and recovered its jobs)."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return conn.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ?", (now, worker_id)).rowcount == 1

    def remove_worker(self, worker_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[Worker]:
        return [Worker(**dict(r)) for r in self.conn.execute("SELECT * FROM workers ORDER BY started_at")]

    def live_workers(self, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None) -> list[Worker]:
        now = time.time() if now is None else now
        return [w for w in self.workers() if not self._worker_dead(w, stale_after_s, now)]

    @staticmethod
    def _worker_dead(worker: Worker, stale_after_s: float, now: float) -> bool:
        if worker.heartbeat_at < now - stale_after_s:
            return True
        return worker.hostname == socket.gethostname() and not pid_alive(worker.pid)

    def recover(self, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None) -> list[Job]:
        """Put back the jobs of dead workers; returns them in their new state.

        A worker is dead when its heartbeat is older than `stale_after_s`, or, on this host, when its pid
        is gone. Its running jobs go back to the queue while attempts < max_attempts, else fail with
        "worker died (N attempts)"; a job whose cancel was requested ends cancelled."""
        now = time.time() if now is None else now
        recovered = []
        with self.transaction() as conn:
            dead = {w.id for w in self.workers() if self._worker_dead(w, stale_after_s, now)}
            known = {w.id for w in self.workers()}
            for row in conn.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                job = Job.from_row(row)
                if job.worker_id in known and job.worker_id not in dead:
                    continue
                if job.child_pid is not None:
                    _kill_orphan_runner(job)
                if job.cancel_requested:
                    state, error = "cancelled", "cancelled by request (its worker died)"
                elif job.attempts < job.max_attempts:
                    state, error = "queued", None
                else:
                    state, error = "failed", f"worker died ({job.attempts} attempts)"
                conn.execute(
                    "UPDATE jobs SET state = ?, error = ?, worker_id = NULL, child_pid = NULL,"
                    " started_at = CASE WHEN ? = 'queued' THEN NULL ELSE started_at END,"
                    " finished_at = CASE WHEN ? = 'queued' THEN NULL ELSE ? END WHERE id = ?",
                    (state, error, state, state, now, job.id))
                recovered.append(job.id)
            conn.executemany("DELETE FROM workers WHERE id = ?", [(w,) for w in dead])
        jobs = [self.get(job_id) for job_id in recovered]
        for job in jobs:
            append_log(job, f"recovered: its worker died during attempt {job.attempts}; now {job.state}"
                       + (f" ({job.error})" if job.error else ""))
        return jobs


def append_log(job: Job, line: str) -> None:
    """A line from the service itself (not the job) in the job's log."""
    path = Path(job.log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"[realfake {datetime.now().astimezone().isoformat(timespec='seconds')}] {line}\n")


def follow_log(store: JobStore, job_id: int, write: Callable[[str], Any], *, poll_s: float = 0.5,
               follow: bool = True) -> Job:
    """Write the job's log through `write`; with `follow`, keep going until the job ends. Returns the job
    as it was when the log was last read to its end."""
    offset = 0
    while True:
        job = store.get(job_id)  # read the state *before* the log, so no line written after it is missed
        path = Path(job.log_path)
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            if chunk:
                write(chunk)
        if not follow or job.terminal:
            return job
        time.sleep(poll_s)
