"""`realfake submit`, `jobs`, `worker`, `schedule`: the job service (`realfake.jobs.service`) on the command
line. Only click and the standard library load here: a kind's function (and torch) is imported only by
`submit KIND`, to build its flags.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import click
from realfake.jobs.cli.options import click_param, spec_help
from realfake.jobs.service.schedules import (
    add_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from realfake.jobs.service.spec import KIND_HELP, available_kinds, kind_params, load_spec_file, validate_spec
from realfake.jobs.service.store import JobStore, follow_log
from realfake.jobs.service.tables import format_table
from realfake.jobs.service.worker import run_worker

# `submit --wait` and `jobs logs --follow` exit codes by final state.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
_COMMON_OPTIONS = ("wait", "max_attempts")


def _local(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _store():

    return JobStore()


def _queue(spec, max_attempts: int, wait: bool) -> None:
    """Queue a validated spec, print its id; with `wait`, follow its log and exit with its outcome."""
    store = _store()
    job = store.submit(spec, max_attempts=max_attempts)
    click.echo(job.id)
    click.echo(f"queued job {job.id} ({job.kind}); follow it with: realfake jobs logs {job.id} --follow", err=True)
    if wait:
        _follow_and_exit(store, job.id)


def _follow_and_exit(store, job_id: int) -> None:

    if store.get(job_id).state == "queued" and not store.live_workers():
        click.echo("no worker is running: start one with `realfake worker` (waiting...)", err=True)
    job = follow_log(store, job_id, lambda text: click.echo(text, nl=False))
    click.echo(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""), err=True)
    sys.exit(EXIT_CODES[job.state])


# ---------------------------------------------------------------------------------------------------
# submit: `submit SPEC.toml` or `submit KIND ARG --flag ...`, flags generated from the kind's signature


def _kind_params(kind: str) -> list[click.Parameter]:
    """click parameters for a kind: its first required argument is positional, the rest are options.
    Every option defaults to "not given" (None), so the function's own defaults apply."""
    params = kind_params(kind)
    clashes = [p.name for p in params if p.name in _COMMON_OPTIONS]
    if clashes:
        raise ValueError(f"kind {kind!r} has a parameter named {clashes[0]!r}, which `submit` uses itself: rename it")
    return [click_param(p, argument=index == 0 and p.required, unset_default=True, check_exists=False,
                        help=spec_help(p))
            for index, p in enumerate(params)]


_wait_option = click.Option(["--wait"], is_flag=True,
                            help="Follow the job's log until it ends; exit 0 succeeded, 1 failed, 3 cancelled.")
_attempts_option = click.Option(["--max-attempts"], type=click.IntRange(min=1), default=3, show_default=True,
                                help="Runs allowed when a worker dies under the job (the job's own errors are not retried).")


class KindCommand(click.Command):
    """`submit KIND ...`: parameters are built from the kind's signature only when it is used, so that
    `realfake submit --help` lists the kinds without importing them."""
    def __init__(self, kind: str, short_help: str):
        super().__init__(name=kind, short_help=short_help,
                         help=f"{short_help}\n\nQueues a {kind} job and prints its id. The flags are the keyword "
                              f"arguments of the {kind} function; a spec file takes the same keys, with "
                              f"underscores (kind = \"{kind}\").")
        self.kind = kind
        self._generated: list[click.Parameter] | None = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._generated is None:
            self._generated = _kind_params(self.kind)
            self.params = [*self._generated, _wait_option, _attempts_option]
        return super().get_params(ctx)

    def invoke(self, ctx: click.Context) -> None:
        args = {}
        for name, value in ctx.params.items():
            if name in _COMMON_OPTIONS or value is None or value == ():
                continue
            args[name] = list(value) if isinstance(value, tuple) else value
        positional = next((p.name for p in self._generated or [] if isinstance(p, click.Argument)), None)
        spec = validate_spec(self.kind, args, base_dir=Path.cwd(), source=f"submit {self.kind}", cli=True,
                             positional=positional)
        _queue(spec, ctx.params["max_attempts"], ctx.params["wait"])


@click.command("", params=[click.Argument(["spec_file"], metavar="SPEC.toml", type=click.Path(dir_okay=False)),
                                    _wait_option, _attempts_option])
def _submit_file(spec_file: str, wait: bool, max_attempts: int) -> None:
    """Queue the job described by a TOML spec file."""
    _queue(load_spec_file(Path(spec_file)), max_attempts, wait)


class SubmitGroup(click.Group):
    """Dispatches `submit SPEC.toml` to the file command and `submit KIND ...` to a generated one."""
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(available_kinds())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in available_kinds():
            return KindCommand(cmd_name, KIND_HELP.get(cmd_name, f"Queue a {cmd_name} job."))
        return None

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.list_commands(ctx) and not args[0].startswith("-"):
            return "", _submit_file, args
        return super().resolve_command(ctx, args)


@click.group(cls=SubmitGroup, subcommand_metavar="SPEC.toml | KIND ARGS...")
def submit() -> None:
    """Queue a job from a TOML spec file or from flags; prints the job id.

    \b
      realfake submit nightly.toml
      realfake submit score incoming/ --engine engines_out/m1 --wait
      realfake submit score --help         (the flags of one kind)

    The whole spec is checked before anything is queued: unknown keys, wrong types and input paths
    that do not exist are errors (exit 2). A spec file is `kind = "..."` plus the function's keyword
    arguments; relative paths in it are relative to the file's folder, on the command line to the
    current directory. A worker (`realfake worker`) runs queued jobs.
    """


# ---------------------------------------------------------------------------------------------------
# jobs


@click.group()
def jobs() -> None:
    """List, inspect, follow, cancel and retry queued jobs."""


@jobs.command("list", short_help="List jobs (table or --json).")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
              help="Only jobs in this state.")
@click.option("--schedule", "schedule_name", metavar="NAME", help="Only jobs queued by this schedule.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True,
              help="Show the newest N jobs (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def jobs_list(state: str | None, schedule_name: str | None, limit: int, as_json: bool) -> None:
    """Jobs, oldest first: id, kind, state, attempts, created, duration, error."""
    found = _store().list_jobs(state, schedule=schedule_name, limit=limit or None)
    if as_json:
        click.echo(json.dumps([j.to_dict() for j in found], indent=2))
        return
    now = time.time()
    rows = [[str(j.id), j.kind, j.state + ("*" if j.cancel_requested and not j.terminal else ""),
             f"{j.attempts}/{j.max_attempts}", _local(j.created_at), _duration(j.duration_s(now)),
             (j.error or "").split("\n")[0][:70]] for j in found]
    click.echo(format_table(["ID", "KIND", "STATE", "ATTEMPTS", "CREATED", "DURATION", "ERROR"], rows, rule=False))
    if any(j.cancel_requested and not j.terminal for j in found):
        click.echo("* cancel requested", err=True)


@jobs.command("show", short_help="Show one job: spec, state, result, error.")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def jobs_show(job_id: int, as_json: bool) -> None:
    """Everything about one job: spec, state, attempts, times, log, output, result, error."""
    job = _store().get(job_id)
    if as_json:
        click.echo(json.dumps(job.to_dict(), indent=2))
        return
    fields = [
        ("id", job.id), ("kind", job.kind), ("state", job.state + (" (cancel requested)" if job.cancel_requested
                                                                    and not job.terminal else "")),
        ("attempts", f"{job.attempts}/{job.max_attempts}"), ("created", _local(job.created_at)),
        ("started", _local(job.started_at)), ("finished", _local(job.finished_at)),
        ("duration", _duration(job.duration_s())), ("worker", job.worker_id or "-"),
        ("log", job.log_path), ("out", job.out or "-"),
    ]
    if job.schedule:
        fields.append(("schedule", f"{job.schedule} (due {_local(job.due_at)})"))
    fields.append(("error", job.error or "-"))
    for key, value in fields:
        click.echo(f"{key + ':':<10} {value}")
    click.echo("spec:      " + json.dumps(job.spec, indent=2).replace("\n", "\n           "))
    if job.result is not None:
        click.echo("result:    " + json.dumps(job.result, indent=2).replace("\n", "\n           "))


@jobs.command("logs", short_help="Print or follow a job's log.")
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing until the job ends; exit 0 succeeded, 1 failed, 3 cancelled.")
def jobs_logs(job_id: int, follow: bool) -> None:
    """Print a job's log (stdout and stderr of every attempt)."""
    store = _store()
    if follow:
        _follow_and_exit(store, job_id)
    follow_log(store, job_id, lambda text: click.echo(text, nl=False), follow=False)


@jobs.command("cancel", short_help="Cancel a queued or running job.")
@click.argument("job_id", type=int)
def jobs_cancel(job_id: int) -> None:
    """Cancel a job: a queued one at once, a running one within seconds (SIGTERM, then SIGKILL)."""
    job = _store().request_cancel(job_id)
    if job.state == "cancelled":
        click.echo(f"job {job.id} cancelled")
    else:
        click.echo(f"job {job.id}: cancel requested; its worker stops it within seconds "
                   f"(watch: realfake jobs show {job.id})")


@jobs.command("retry", short_help="Queue a failed or cancelled job again.")
@click.argument("job_id", type=int)
def jobs_retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (same id, spec and output folder; attempts from zero)."""
    job = _store().retry(job_id)
    click.echo(f"job {job.id} queued again")


# ---------------------------------------------------------------------------------------------------
# worker


@click.command()
@click.option("--once", is_flag=True, help="Exit when the queue is empty instead of waiting for more jobs.")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Exit after running N jobs.")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Seconds between looks at the queue, the running job's cancel flag and the schedules.")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when a job is cancelled or the worker stops.")
@click.option("--stale-after", "stale_after_s", type=click.FloatRange(min=10), default=60.0, show_default=True,
              help="A worker silent this long is dead and its jobs are recovered (on this host, a worker "
                   "whose process is gone is dead at once).")
def worker(once: bool, max_jobs: int | None, poll_s: float, grace_s: float, stale_after_s: float) -> None:
    """Run queued jobs, one at a time, each in a child process; queue due schedules.

    Start as many workers as you like on one $REALFAKE_HOME: a job is claimed by exactly one. At start
    a worker puts back the jobs of dead workers (queued again up to their attempt limit, else failed).
    SIGTERM or Ctrl-C: the running job is stopped and queued again, then the worker exits.
    """
    run_worker(once=once, max_jobs=max_jobs, poll_s=poll_s, grace_s=grace_s, stale_after_s=stale_after_s)


# ---------------------------------------------------------------------------------------------------
# schedule


@click.group()
def schedule() -> None:
    """Cron schedules that a worker turns into jobs (one per due time, however many workers run)."""


@schedule.command("add")
@click.argument("name")
@click.argument("spec_file", metavar="SPEC.toml", type=click.Path(exists=True, dir_okay=False))
@click.option("--cron", required=True, metavar="EXPR",
              help='Five cron fields: minute hour day month weekday, e.g. "0 2 * * *" (02:00 daily).')
@click.option("--tz", metavar="ZONE", help="IANA time zone of the cron times [default: this machine's].")
def schedule_add(name: str, spec_file: str, cron: str, tz: str | None) -> None:
    """Queue SPEC.toml at every due time of --cron.

    A score (or bench) schedule without `out` gets a fixed one ($REALFAKE_HOME/schedules/NAME/out), so
    each run scores only the files not scored before. Runs missed while no worker ran collapse into
    one; a worker must be running for anything to be queued.
    """
    spec = load_spec_file(Path(spec_file))
    added = add_schedule(_store(), name, cron, spec, tz=tz)
    click.echo(f"schedule {added.name}: {added.kind} at {added.cron!r} ({added.tz}); "
               f"next run {_local(added.next_due)}")
    if added.spec.get("out"):
        click.echo(f"output: {added.spec['out']}")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def schedule_list(as_json: bool) -> None:
    """Schedules with their next due time and last job."""
    store = _store()
    found = list_schedules(store)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=2))
        return
    rows = []
    for s in found:
        last = store.list_jobs(schedule=s.name, limit=1)
        rows.append([s.name, s.cron, s.tz, s.kind, "paused" if s.paused else "active",
                     "-" if s.paused else _local(s.next_due), f"{last[0].id} {last[0].state}" if last else "-"])
    click.echo(format_table(["NAME", "CRON", "TZ", "KIND", "STATE", "NEXT RUN", "LAST JOB"], rows, rule=False))


@schedule.command("remove")
@click.argument("name")
def schedule_remove(name: str) -> None:
    """Delete a schedule (the jobs it queued stay)."""
    remove_schedule(_store(), name)
    click.echo(f"schedule {name} removed")


@schedule.command("pause")
@click.argument("name")
def schedule_pause(name: str) -> None:
    """Stop queueing runs of a schedule until it is resumed."""
    pause_schedule(_store(), name)
    click.echo(f"schedule {name} paused")


@schedule.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Queue runs again, from the next due time on (runs missed while paused are not made up)."""
    resumed = resume_schedule(_store(), name)
    click.echo(f"schedule {name} resumed; next run {_local(resumed.next_due)}")
