"""The child process that runs one job attempt: `python -m realfake.jobs.service.runner JOB_ID ATTEMPT`.

The worker starts it in its own process group with stdout and stderr appended to the job's log. It
calls the kind's function with the job's stored arguments and records the outcome itself, fenced by
the attempt number (a late runner can never overwrite a newer attempt):
- the function returns -> the summary goes to the store and to jobs/<id>/result.json; exit 0, succeeded;
- the function raises -> traceback in the log, its last line as the job's error; exit 1, failed;
- SIGTERM (cancel or worker shutdown) -> nothing recorded, exit 143; the worker decides the state.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from realfake.jobs.service.spec import call_kwargs, load_kind
from realfake.jobs.service.store import JobStore

WORKER_PID_ENV = "REALFAKE_WORKER_PID"
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a SIGTERM'd process


class JobTerminated(BaseException):
    """Raised in the job by SIGTERM. A BaseException, so a job's `except Exception` does not swallow it."""


def _die_with_worker() -> None:
    """Have the kernel SIGKILL this process when the worker that started it dies (even by kill -9), so a
    job is never left running unowned while recovery queues it again."""
    worker_pid = os.environ.get(WORKER_PID_ENV)
    if not worker_pid or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(worker_pid):  # the worker died before prctl took effect
        os._exit(EXIT_TERMINATED)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def run(job_id: int, attempt: int) -> int:
    signalled = False  # a SIGTERM arrived
    bookkeeping = False  # the function has returned: record its result even if a SIGTERM comes now

    def on_sigterm(signum, frame):
        nonlocal signalled
        first, signalled = not signalled, True
        if first and not bookkeeping:
            raise JobTerminated("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    store = JobStore()
    job = store.get(job_id)
    if job.state != "running" or job.attempts != attempt:
        print(f"job {job_id} attempt {attempt} is not the running attempt ({job.state}, attempt {job.attempts}): "
              "nothing to do", file=sys.stderr)
        return 4
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"[realfake {stamp}] job {job.id} ({job.kind}) attempt {attempt}/{job.max_attempts} "
          f"on {socket.gethostname()} pid {os.getpid()}\n[realfake] spec: {json.dumps(job.spec)}", flush=True)
    started = time.monotonic()
    try:
        function = load_kind(job.kind)
        result = function(**call_kwargs(job.kind, job.spec))
        bookkeeping = True
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise TypeError(f"the {job.kind} function returned {type(result).__name__}, not a dict summary")
        summary = json.loads(json.dumps(result, default=_json_default))
        job.job_dir.mkdir(parents=True, exist_ok=True)
        (job.job_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
        store.finish(job_id, attempt, "succeeded", result=summary)
        print(f"[realfake] succeeded in {time.monotonic() - started:.1f}s; result: {job.job_dir / 'result.json'}",
              flush=True)
        return 0
    except JobTerminated:
        print("[realfake] terminated by SIGTERM", file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    except BaseException as exc:  # noqa: B036 - a SystemExit from a job is a failure too
        traceback.print_exc()
        if signalled and not bookkeeping:
            # e.g. a loader subprocess killed by the same SIGTERM raised first: the worker decides.
            return EXIT_TERMINATED
        error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        store.finish(job_id, attempt, "failed", error=error)
        print(f"[realfake] failed after {time.monotonic() - started:.1f}s: {error}", file=sys.stderr, flush=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m realfake.jobs.service.runner JOB_ID ATTEMPT (started by `realfake worker`)", file=sys.stderr)
        return 2
    _die_with_worker()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run(int(argv[0]), int(argv[1]))


if __name__ == "__main__":
    exit_code = main()
    # The outcome is recorded: skip the interpreter's teardown, which takes seconds after a torch/DALI
    # job and would hold the worker that long. What the job left in
    # its process group is killed by the worker.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
