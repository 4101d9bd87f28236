"""`realfake runs list|compare`."""
from __future__ import annotations

import json
from pathlib import Path

import click
from realfake.jobs.service.tables import format_table
from realfake.jobs.tasks.runs import COLUMNS, collect_runs, rank_runs

RUNS_DIR = click.argument("runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.001 or value >= 10 else f"{value:.4f}"
    return str(value)


def _runs_table(rows: list[dict], columns) -> str:
    return format_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows])


@click.group()
def runs():
    """Tables over the run directories under RUNS_DIR (default: runs)."""


@runs.command("list")
@RUNS_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def list_(runs_dir, as_json):
    """One row per run: model, optimizer, lr, augment, epochs, image size, test accuracy/F1/AUC."""
    rows = collect_runs(runs_dir)
    click.echo(json.dumps(rows, indent=2) if as_json else _runs_table(rows, COLUMNS) if rows else f"no runs in {runs_dir}")


@runs.command()
@RUNS_DIR
@click.option("--by", default="test_auc", show_default=True, help="Column to rank by.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
def compare(runs_dir, by, as_json):
    """Runs ranked best first by a test metric, with each run's gap to the best (the report's comparison)."""
    rows = rank_runs(collect_runs(runs_dir), by)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_runs_table(rows, (*COLUMNS, f"{by}_gap")) if rows else f"no runs in {runs_dir}")
