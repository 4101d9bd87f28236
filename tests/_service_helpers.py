"""Cheap job kinds for the job-service tests (registered through REALFAKE_EXTRA_KINDS).

Each writes what it did into files the tests read, so a test can tell how many times, and by which
process, a job ran.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated, Literal

from realfake.jobs.service.options import Bounds, check_arguments
from realfake.jobs.service.params import InputPath, OutputPath


def sleep_job(*, seconds: float = 0.0, out: OutputPath, tag: str = "", retry_seconds: float | None = None) -> dict:
    """Sleep, then record one run.

    Args:
        seconds: how long to sleep.
        out: folder that receives pid (of the latest attempt) and one line per finished run in runs.txt.
        tag: copied into the result.
        retry_seconds: sleep this long instead when an earlier attempt already started here.
    """
    out.mkdir(parents=True, exist_ok=True)
    if retry_seconds is not None and (out / "pid").exists():
        seconds = retry_seconds
    (out / "pid").write_text(str(os.getpid()))
    time.sleep(seconds)
    with open(out / "runs.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"slept": seconds, "tag": tag, "out": out}


def stubborn_job(*, out: OutputPath) -> dict:
    """Ignores SIGTERM: only the worker's SIGKILL after the grace period stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pid").write_text(str(os.getpid()))
    time.sleep(60)
    return {}


def fail_job(*, message: str = "boom") -> dict:
    raise RuntimeError(message)


def crash_job() -> dict:
    """Dies the hard way: no exception, no cleanup, nothing recorded by the runner."""
    os._exit(9)


def typed_job(folder: InputPath, *, count: int, ratio: Annotated[float, Bounds(min=0, max=1)] = 0.5,
              name: str = "x", flag: bool = False, tags: list[str] | None = None, mode: Literal["fast", "slow"] = "fast",
              limit: Annotated[int, Bounds(min=1)] | None = None, out: OutputPath) -> dict:
    """A job with one parameter of every supported type, for spec validation."""
    check_arguments(typed_job, locals())
    return {"folder": folder, "count": count, "ratio": ratio, "name": name, "flag": flag, "tags": tags,
            "mode": mode, "limit": limit}


def resume_job(*, folder: InputPath, out: OutputPath) -> dict:
    """A stand-in for score's resume: handles only the files of `folder` not listed in out/done.txt."""
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "done.txt"
    done = set(done_file.read_text().split()) if done_file.exists() else set()
    new = sorted(p.name for p in folder.iterdir() if p.name not in done)
    with open(done_file, "a") as f:
        f.writelines(f"{name}\n" for name in new)
    return {"new": new, "skipped": len(done)}


EXTRA_KINDS = ",".join([
    "sleep=_service_helpers:sleep_job",
    "fail=_service_helpers:fail_job",
    "crash=_service_helpers:crash_job",
    "typed=_service_helpers:typed_job",
    "resume=_service_helpers:resume_job",
    "stubborn=_service_helpers:stubborn_job",
])


def service_env(home: Path) -> dict[str, str]:
    """Environment for a worker/submitter subprocess on `home` with the test kinds importable."""
    env = dict(os.environ)
    tests_dir = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, env.get("PYTHONPATH", "")]))
    env["REALFAKE_HOME"] = str(home)
    env["REALFAKE_EXTRA_KINDS"] = EXTRA_KINDS
    return env


def wait_for(predicate, timeout_s: float = 20.0, poll_s: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a true value (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def pid_gone(pid: int) -> bool:
    from realfake.jobs.service.store import pid_alive

    return not pid_alive(pid)


def use_service_home(monkeypatch, tmp_path: Path) -> Path:
    """Point this process (and the workers and runners it starts) at a fresh store with the test kinds."""
    home = tmp_path / "rfhome"
    for key, value in service_env(home).items():
        if key in ("PYTHONPATH", "REALFAKE_HOME", "REALFAKE_EXTRA_KINDS"):
            monkeypatch.setenv(key, value)
    return home


def realfake(*args: str, env: dict | None = None, timeout: float = 60, check: bool = False):
    """Run the `realfake` CLI in a subprocess (a separate process, as a user would)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "realfake.jobs.cli", *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"realfake {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result
