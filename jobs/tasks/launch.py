"""Start a function in N processes of one torch.distributed group on this machine: `realfake train
--nproc N`.

It is torchrun's own machinery, called in process: torch.distributed's elastic launcher
(`elastic_launch`, what `torchrun --standalone --nproc-per-node N` runs) with a c10d rendezvous on a
free local port. So a `--nproc` process sees exactly the environment a torchrun process sees (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) and runs the same code; the launcher
hands back each process's return value, and when one process fails it stops the others at once and
names the first failure, with its traceback logged, where torch.multiprocessing.spawn would leave
return values and the rendezvous port to us.

The processes are forked from multiprocessing's forkserver, a clean process that imported the training
code once (it never touches CUDA or runs a thread pool, so forking it is safe): a launch then costs a
fork rather than an interpreter start and a torch import per process, which on a small machine is most
of the time of a short run, and later launches of the same process (a sweep) reuse it. Each process
gets this process's environment of the moment of the launch, as a spawned one would.
"""
from __future__ import annotations

import builtins
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

log = logging.getLogger(__name__)

# What a training process imports, loaded once by the forkserver.
PRELOAD = ("realfake.jobs.tasks.train",)
# The variables torchrun's launcher sets for each process (its documented ones; TORCHELASTIC_* too).
LAUNCHER_VARIABLES = ("LOCAL_RANK", "RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
                      "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(nproc: int, target: Callable, *args) -> Any:
    """target(*args) in `nproc` processes of one process group on this machine; rank 0's return value.

    A process that raises stops the run, and the first exception raised comes back here: a ValueError or
    OSError as the same exception with its message (and which process it was), anything else as a
    RuntimeError naming the process and the error (the others then fail on the lost connection, which
    is not what went wrong). SIGTERM or SIGINT during the run stop the processes, then reach the
    handler that was in place.
    """
    if nproc < 1:
        raise ValueError(f"--nproc {nproc} must be at least 1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=f"realfake-{uuid.uuid4().hex[:12]}", max_restarts=0,
                          monitor_interval=0.1, start_method="forkserver")
    # Takes effect when the forkserver starts, i.e. at the first launch of this process. The server imports
    # by the installed packages' path, so a target's module it cannot find is imported by each process.
    multiprocessing.set_forkserver_preload([__name__, *PRELOAD, target.__module__])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with tempfile.TemporaryDirectory(prefix="realfake-launch-") as errors:
        try:
            results = elastic_launch(config, _run)(dict(os.environ), errors, target, *args)
        except ChildFailedError as exc:
            raise _failure(Path(errors), exc, nproc) from None
        except SignalException as exc:
            _restore(handlers)
            previous = handlers.get(exc.sigval)
            if callable(previous):
                previous(exc.sigval, None)
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise
        finally:
            _restore(handlers)
    return results[0]


def _run(environment: dict, errors: str, target: Callable, *args) -> Any:
    """One launched process: the launching process's environment with the launcher's variables, then
    target(*args). An exception is noted in ERRORS/RANK.json with the time it was raised, then re-raised."""
    launcher = {key: value for key, value in os.environ.items()
                if key in LAUNCHER_VARIABLES or key.startswith("TORCHELASTIC_")}
    os.environ.update(environment)
    os.environ.update(launcher)
    try:
        return target(*args)
    except BaseException as exc:
        # Bad input comes back as the built-in class it is (a subclass of ours as its built-in base).
        builtin = next((k.__name__ for k in type(exc).__mro__ if k.__module__ == "builtins"
                        and issubclass(k, (ValueError, OSError))), None)
        note = {"time": time.time(), "type": type(exc).__name__, "builtin": builtin, "message": str(exc)}
        (Path(errors) / f"{os.environ['RANK']}.json").write_text(json.dumps(note))
        raise


def _restore(handlers: dict) -> None:
    """The launcher installs its own SIGTERM/SIGINT handlers: put back the caller's."""
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _failure(errors: Path, exc: ChildFailedError, nproc: int) -> Exception:
    """The first exception raised in a launch as one exception: the process's own for bad input
    (ValueError, OSError: a one-line error the CLI prints), a RuntimeError otherwise. A process that
    died without raising (a signal, the OOM killer) is named by the launcher's record of it."""
    notes = {int(path.stem): json.loads(path.read_text()) for path in errors.glob("*.json")}
    if notes:
        rank = min(notes, key=lambda r: notes[r]["time"])
        note = notes[rank]
        if note["builtin"]:
            return getattr(builtins, note["builtin"])(f"{note['message']} (training process {rank} of {nproc})")
        message = f"{note['type']}: {note['message']}"
    else:
        rank, failure = exc.get_first_failure()
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        message = message or (f"killed by {failure.signal_name()}" if failure.exitcode < 0
                              else f"exit code {failure.exitcode}")
    return RuntimeError(f"training process {rank} of {nproc} failed: {message} (its traceback is logged above)")
