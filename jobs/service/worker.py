"""The worker: claims queued jobs one at a time and runs each in a child process.

- Claiming is atomic in the store: any number of workers can share one queue, no job runs twice.
- Each attempt runs as `python -m realfake.jobs.service.runner ID ATTEMPT` in its own process group, output
  appended to the job's log: a crashing job (segfault, OOM kill) cannot take the worker down.
- The worker heartbeats into the store; at start and every `recover_every_s` it puts back the jobs of
  dead workers (see JobStore.recover), and it queues the due runs of cron schedules.
- Cancel: the worker polls the job's cancel flag, sends SIGTERM to the child's process group, then
  SIGKILL after `grace_s`; the job ends cancelled.
- SIGTERM / SIGINT to the worker: it takes no new job, stops the running one the same way and puts it
  back in the queue without counting the attempt, removes its heartbeat row and exits 0. Nothing is
  left half-claimed: a job is either still `running` under this worker's live row or back to `queued`.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from realfake.jobs.service import schedules
from realfake.jobs.service.runner import WORKER_PID_ENV
from realfake.jobs.service.store import DEFAULT_STALE_AFTER_S, HOME_ENV, Job, JobStore, append_log

log = logging.getLogger(__name__)


@dataclass
class WorkerOptions:
    once: bool = False  # exit when the queue is empty instead of waiting for more
    max_jobs: int | None = None  # exit after this many jobs
    poll_s: float = 0.5  # how often the queue, the running job's cancel flag and the schedules are read
    heartbeat_s: float = 2.0
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    recover_every_s: float = 10.0
    grace_s: float = 10.0  # SIGTERM -> SIGKILL delay when cancelling or shutting down


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    def __init__(self, store: JobStore, options: WorkerOptions | None = None, *,
                 clock: Callable[[], float] = time.time, worker_id: str | None = None):
        self.store = store
        self.options = options or WorkerOptions()
        self.clock = clock  # injectable for schedule tests
        self.id = worker_id or new_worker_id()
        self.stopping = False
        self.jobs_run = 0
        self._last_heartbeat = self._last_recover = float("-inf")

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal, --once with an empty queue, --max-jobs); returns the jobs run."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.store.register_worker(self.id)
        log.info("worker %s started (store %s)", self.id, self.store.path)
        try:
            while not self.stopping:
                self._housekeeping()
                if self.options.max_jobs is not None and self.jobs_run >= self.options.max_jobs:
                    break
                job = self.store.claim(self.id)
                if job is None:
                    if self.options.once:
                        break
                    time.sleep(self.options.poll_s)
                    continue
                self._run_job(job)
                self.jobs_run += 1
        finally:
            self.store.remove_worker(self.id)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("worker %s stopped after %d job(s)", self.id, self.jobs_run)
        return self.jobs_run

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("worker %s: %s received, stopping", self.id, signal.Signals(signum).name)
        self.stopping = True

    def _housekeeping(self) -> None:
        # Heartbeats and recovery use the real clock (other processes compare against it); only the
        # schedules read the injectable one.
        if time.monotonic() - self._last_heartbeat >= self.options.heartbeat_s:
            if not self.store.heartbeat(self.id):
                log.warning("worker %s was taken for dead by another worker: registering again", self.id)
                self.store.register_worker(self.id)
            self._last_heartbeat = time.monotonic()
        if time.monotonic() - self._last_recover >= self.options.recover_every_s:
            for job in self.store.recover(stale_after_s=self.options.stale_after_s):
                log.warning("job %d recovered from a dead worker: now %s%s", job.id, job.state,
                            f" ({job.error})" if job.error else "")
            self._last_recover = time.monotonic()
        for job_id in schedules.queue_due(self.store, now=self.clock()):
            job = self.store.get(job_id)
            log.info("schedule %s: queued job %d (%s)%s", job.schedule, job.id, job.state,
                     f": {job.error}" if job.error else "")

    # -- one job ----------------------------------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        attempt = job.attempts
        if self.stopping:  # the signal came between the claim and here
            self.store.requeue(job.id, attempt, note=f"worker {self.id} shutting down before the job started")
            return
        log.info("job %d (%s) attempt %d/%d started", job.id, job.kind, attempt, job.max_attempts)
        env = dict(os.environ)
        env.update({
            HOME_ENV: str(self.store.home),
            WORKER_PID_ENV: str(os.getpid()),
            "PYTHONUNBUFFERED": "1",  # log lines reach the file (and `jobs logs --follow`) as they happen
            "TQDM_MININTERVAL": env.get("TQDM_MININTERVAL", "5"),  # progress bars: a line every 5 s, not 10/s
        })
        try:
            job.job_dir.mkdir(parents=True, exist_ok=True)
            (job.job_dir / "result.json").unlink(missing_ok=True)  # a retry's result is its own
            with open(job.log_path, "ab") as log_file:
                child = subprocess.Popen(
                    [sys.executable, "-m", "realfake.jobs.service.runner", str(job.id), str(attempt)],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,  # its own process group: signals reach the job and its loaders
                )
        except OSError as exc:  # e.g. the job's folder is not writable: fail the job, keep the worker
            self.store.finish(job.id, attempt, "failed", error=f"could not start the job: {exc}")
            log.error("job %d: could not start: %s", job.id, exc)
            return
        self.store.set_child_pid(job.id, attempt, child.pid)
        started = time.monotonic()
        reason, term_sent_at, killed = None, None, False
        while child.poll() is None:
            self._housekeeping()
            if term_sent_at is None:
                current = self.store.get(job.id)
                if current.attempts != attempt or current.worker_id != self.id:
                    # Taken for dead (a heartbeat stalled past --stale-after) and recovered meanwhile:
                    # this attempt no longer owns the job, so stop it rather than run it twice.
                    reason = "lost"
                elif self.stopping:
                    reason = "shutdown"
                elif current.cancel_requested:
                    reason = "cancel"
                if reason:
                    log.info("job %d: %s, sending SIGTERM", job.id, reason)
                    _signal_group(child.pid, signal.SIGTERM)
                    term_sent_at = time.monotonic()
            elif not killed and time.monotonic() - term_sent_at > self.options.grace_s:
                log.warning("job %d still running %.0fs after SIGTERM: SIGKILL", job.id, self.options.grace_s)
                _signal_group(child.pid, signal.SIGKILL)
                killed = True
            try:
                child.wait(timeout=self.options.poll_s)  # returns as soon as the job ends
            except subprocess.TimeoutExpired:
                pass
        _signal_group(child.pid, signal.SIGKILL)  # leftovers of the job (loader workers) die with it
        final = self._finalize(job, child.returncode, reason)
        log.info("job %d %s in %.1fs%s", job.id, final.state, time.monotonic() - started,
                 f": {final.error}" if final.error else "")

    def _finalize(self, job: Job, returncode: int, reason: str | None) -> Job:
        """Record the outcome when the runner could not (signal, crash); the runner's own record wins."""
        current = self.store.get(job.id)
        if current.state != "running" or current.attempts != job.attempts:
            return current
        if reason == "shutdown":
            self.store.requeue(job.id, job.attempts,
                               note=f"worker {self.id} shut down during attempt {job.attempts}: job queued again")
        elif reason == "cancel" or current.cancel_requested:
            self.store.finish(job.id, job.attempts, "cancelled", error="cancelled by request")
            append_log(current, "cancelled by request")
        else:
            error = _describe_exit(returncode, Path(job.log_path))
            self.store.finish(job.id, job.attempts, "failed", error=error)
            append_log(current, f"failed: {error}")
        return self.store.get(job.id)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _describe_exit(returncode: int, log_path: Path) -> str:
    if returncode < 0:
        return f"runner killed by {signal.Signals(-returncode).name}"
    return f"runner exited with code {returncode} without recording a result (see {log_path})"


def run_worker(store: JobStore | None = None, *, clock: Callable[[], float] = time.time, **options) -> int:
    """Run a worker on `store` (default: the one under $REALFAKE_HOME); returns the number of jobs run."""
    return Worker(store or JobStore(), WorkerOptions(**options), clock=clock).run()
