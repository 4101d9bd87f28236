"""`realfake runs list|compare`."""
from __future__ import annotations

import json
from pathlib import Path

import click

RUNS_DIR = click.argument("runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"))


@click.group()
def runs():
    """Tables over the run directories under RUNS_DIR (default: runs)."""


@runs.command("list")
@RUNS_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def list_(runs_dir, as_json):
    """One row per run: model, optimizer, lr, augment, epochs, image size, test accuracy/F1/AUC."""
    from realfake.jobs.tasks.runs import COLUMNS, collect_runs, format_table

    rows = collect_runs(runs_dir)
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows, COLUMNS) if rows else f"no runs in {runs_dir}")


@runs.command()
@RUNS_DIR
@click.option("--by", default="test_auc", show_default=True, help="Column to rank by.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def compare(runs_dir, by, as_json):
    """Runs ranked best first by a test metric, with each run's gap to the best (the report's comparison)."""
    from realfake.jobs.tasks.runs import COLUMNS, collect_runs, format_table, rank_runs

    rows = rank_runs(collect_runs(runs_dir), by)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(format_table(rows, (*COLUMNS, f"{by}_gap")) if rows else f"no runs in {runs_dir}")
