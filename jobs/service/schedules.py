"""Cron schedules: a named spec that the worker queues as a job at every due time.

Rules (documented in docs/jobs.md):
- A due time is queued at most once, whoever looks: each worker loop queues the job and advances the
  schedule's `next_due` in ONE transaction, and the jobs table has UNIQUE(schedule, due_at), so several
  workers, restarts or a crash between the two never queue the same due time twice.
- After downtime with several missed due times, ONE run is queued (for the latest missed time), not a
  burst. A paused schedule queues nothing; resuming it starts from the next due time after "now".
- Cron times are read in the schedule's time zone (IANA name, default the machine's own).
- A scheduled `score` job must resume where the last run stopped, so it needs one fixed output: when the
  spec names no `out`, the schedule gets $REALFAKE_HOME/schedules/<name>/out, and each run scores only
  the files not scored before. `bench` is treated the same (its history.jsonl collects every run).
  Other kinds without `out` write to their job's own directory (a nightly train keeps every run).
- The spec is validated when the schedule is added and again at each due time; if it no longer holds
  (its input folder was removed, ...), the run is recorded as a failed job with the reason, never skipped.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from realfake.jobs.service.spec import DEFAULT_OUT_PARAM, JobSpec, SpecError, validate_spec
from realfake.jobs.service.store import DEFAULT_MAX_ATTEMPTS, JobStore, iso

# Kinds whose output carries over from run to run, so a schedule gives them one fixed `out` (see the
# module docstring): score resumes from its output (only new files are scored); bench appends to the
# history.jsonl that `realfake bench compare` reads.
FIXED_OUT_KINDS = frozenset({"score", "bench"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ScheduleNotFound(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    tz: str
    kind: str
    spec: dict[str, Any]
    default_out: bool
    paused: bool
    next_due: float
    created_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Schedule:
        data = dict(row)
        data["spec"] = json.loads(data["spec"])
        data["default_out"] = bool(data["default_out"])
        data["paused"] = bool(data["paused"])
        return cls(**data)

    @property
    def job_spec(self) -> JobSpec:
        return JobSpec(self.kind, dict(self.spec), DEFAULT_OUT_PARAM if self.default_out else None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cron": self.cron, "tz": self.tz, "kind": self.kind, "spec": self.spec,
                "paused": self.paused, "next_due": None if self.paused else iso(self.next_due),
                "created_at": iso(self.created_at)}


def schedule_out(store: JobStore, name: str) -> Path:
    """The fixed output of a FIXED_OUT_KINDS schedule whose spec names no `out`."""
    return store.home / "schedules" / name / "out"


def local_tz_name() -> str:
    """The machine's IANA time zone name ($TZ, else /etc/localtime's target), "UTC" when unknown."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}: give an IANA name such as Europe/Madrid or UTC") from None


def check_cron(cron: str) -> str:
    cron = " ".join(cron.split())
    if not croniter.is_valid(cron):
        raise ValueError(
            f"invalid cron expression {cron!r}: give five fields (minute hour day month weekday), "
            'e.g. "0 2 * * *" for 02:00 every day'
        )
    return cron


def next_due_after(cron: str, tz: str, ts: float) -> float:
    """The first due time strictly after `ts` (unix seconds)."""
    return croniter(cron, datetime.fromtimestamp(ts, _zone(tz))).get_next(float)


def latest_due_at_or_before(cron: str, tz: str, ts: float) -> float:
    # croniter's get_prev is strict; a millisecond past `ts` makes a due time equal to `ts` count.
    return croniter(cron, datetime.fromtimestamp(ts + 1e-3, _zone(tz))).get_prev(float)


def add_schedule(store: JobStore, name: str, cron: str, spec: JobSpec, *, tz: str | None = None,
                 now: float | None = None) -> Schedule:
    """Register `spec` to be queued at every due time of `cron`; the first is the next one after now."""
    if not _NAME.match(name):
        raise ValueError(f"invalid schedule name {name!r}: use letters, digits, '.', '_' or '-' (up to 64)")
    cron = check_cron(cron)
    tz = tz or local_tz_name()
    _zone(tz)
    now = time.time() if now is None else now
    args, default_out = dict(spec.args), spec.default_out is not None
    if spec.kind in FIXED_OUT_KINDS and DEFAULT_OUT_PARAM not in args:
        args[DEFAULT_OUT_PARAM] = str(schedule_out(store, name))
        default_out = False
    try:
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO schedules (name, cron, tz, kind, spec, default_out, paused, next_due, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (name, cron, tz, spec.kind, json.dumps(args), int(default_out), next_due_after(cron, tz, now), now),
            )
    except sqlite3.IntegrityError:
        raise ValueError(
            f"schedule {name!r} already exists: remove it first (`realfake schedule remove {name}`) or pick another name"
        ) from None
    return get_schedule(store, name)


def get_schedule(store: JobStore, name: str) -> Schedule:
    row = store.conn.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise ScheduleNotFound(f"no schedule {name!r}: list them with `realfake schedule list`")
    return Schedule.from_row(row)


def list_schedules(store: JobStore) -> list[Schedule]:
    return [Schedule.from_row(r) for r in store.conn.execute("SELECT * FROM schedules ORDER BY name")]


def remove_schedule(store: JobStore, name: str) -> None:
    """Delete the schedule; the jobs it queued stay (they keep its name)."""
    with store.transaction() as conn:
        if conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 0:
            raise ScheduleNotFound(f"no schedule {name!r}: list them with `realfake schedule list`")


def pause_schedule(store: JobStore, name: str) -> Schedule:
    with store.transaction() as conn:
        if conn.execute("UPDATE schedules SET paused = 1 WHERE name = ?", (name,)).rowcount == 0:
            raise ScheduleNotFound(f"no schedule {name!r}: list them with `realfake schedule list`")
    return get_schedule(store, name)


def resume_schedule(store: JobStore, name: str, *, now: float | None = None) -> Schedule:
    """Unpause; due times that passed while paused are not made up for."""
    now = time.time() if now is None else now
    with store.transaction() as conn:
        row = conn.execute("SELECT cron, tz FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ScheduleNotFound(f"no schedule {name!r}: list them with `realfake schedule list`")
        conn.execute("UPDATE schedules SET paused = 0, next_due = ? WHERE name = ?",
                     (next_due_after(row["cron"], row["tz"], now), name))
    return get_schedule(store, name)


def queue_due(store: JobStore, *, now: float | None = None,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[int]:
    """Queue one job for every schedule that is due at `now` (the injectable clock); returns the job ids.

    Safe to call from any number of workers at once: see the module docstring."""
    now = time.time() if now is None else now
    queued = []
    due = store.conn.execute(
        "SELECT * FROM schedules WHERE paused = 0 AND next_due <= ? ORDER BY next_due", (now,)).fetchall()
    for row in due:
        schedule = Schedule.from_row(row)
        # Validate outside the write lock: importing a kind's module can take seconds.
        try:
            spec = validate_spec(schedule.kind, schedule.spec, source=f"schedule {schedule.name!r}")
            spec = JobSpec(spec.kind, spec.args, schedule.job_spec.default_out)
            state, error = "queued", None
        except SpecError as exc:
            spec, state, error = schedule.job_spec, "failed", str(exc)
        with store.transaction() as conn:
            current = conn.execute("SELECT * FROM schedules WHERE name = ? AND paused = 0 AND next_due <= ?",
                                   (schedule.name, now)).fetchone()
            if current is None or Schedule.from_row(current) != schedule:
                continue  # another worker queued this due time, or the schedule changed meanwhile
            fire_at = max(schedule.next_due, latest_due_at_or_before(schedule.cron, schedule.tz, now))
            job_id = store.insert_job(conn, spec, max_attempts=max_attempts, now=now, schedule=schedule.name,
                                      due_at=fire_at, state=state, error=error)
            conn.execute("UPDATE schedules SET next_due = ? WHERE name = ?",
                         (next_due_after(schedule.cron, schedule.tz, max(now, fire_at)), schedule.name))
        if job_id is not None:
            queued.append(job_id)
    return queued
