"""`realfake evaluate` and `realfake evaluate-scores`: options from `run_evaluate` / `run_evaluate_scores`."""
from __future__ import annotations

from pathlib import Path

import click
from realfake.jobs.cli.options import JobCommand, as_arguments


@click.command(cls=JobCommand, target="realfake.jobs.tasks.evaluate:run_evaluate", arguments=("run_dir",))
def evaluate(**options):
    """Evaluate RUN_DIR on a split of its data: accuracy, per-class precision/recall/F1, confusion
    matrix, ROC AUC, average precision, EER, recall per difficulty group.

    Writes report.json, report.md, confusion.png and roc.png into RUN_DIR.
    """
    from realfake.jobs.tasks.evaluate import run_evaluate  # torch loads when a command runs, not for --help

    summary = run_evaluate(**as_arguments(options))
    click.echo(Path(summary["report"]).read_text())
    stem = Path(summary["report"]).stem  # report, report_valid, report_ensemble, ...
    suffix = stem[len("report"):]
    click.echo(f"Report: {summary['report']} (and {stem}.json, confusion{suffix}.png, roc{suffix}.png beside it)")


@click.command("evaluate-scores", cls=JobCommand, target="realfake.jobs.tasks.evaluate:run_evaluate_scores",
               arguments=("scores", "data_dir"))
def evaluate_scores(**options):
    """How an engine does on a split of a prepared data set, from its `realfake score` output SCORES
    (.csv, .jsonl, .parquet, or a job's output folder): the same report as `evaluate`, with the
    engine's own p_fake and threshold. Every file of the split must be in SCORES.

    Writes SCORES.<split>-report.md/.json, -confusion.png and -roc.png beside SCORES.

    \b
    Example:
      realfake score ../shared/data/real_and_fake_face --engine engines_out/ghosts-regions --out scores.csv
      realfake evaluate-scores scores.csv data --split test
    """
    from realfake.jobs.tasks.evaluate import run_evaluate_scores

    summary = run_evaluate_scores(**as_arguments(options))
    click.echo(Path(summary["report"]).read_text())
    beside = "the .json and .png files" if summary["n"] else "the .json file"  # nothing decided: no plots
    click.echo(f"Report: {summary['report']} (and {beside} beside it)")
