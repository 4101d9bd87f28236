"""`realfake evaluate`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--threshold", default=0.5, show_default=True, help="p_fake at or above it is called fake.")
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--num-workers", default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--tta", type=click.Choice(["none", "flip", "crops"]), default="none", show_default=True,
              help="Test-time augmentation, p_fake averaged over views: flip = image + mirror; crops = the image "
                   "and its 4 corner + centre crops of 7/8 side resized back, each also mirrored (12 views).")
@click.option("--calibrate", is_flag=True,
              help="Use the valid split's equal-error-rate threshold instead of --threshold (same checkpoint and "
                   "TTA): training with pseudo-fakes shifts the class prior, so 0.5 is no longer the balanced point.")
@click.option("--ensemble", "ensemble", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another run of the same model and data set (repeatable, e.g. other seeds): p_fake is the mean "
                   "over RUN_DIR and these; the report files get an _ensemble suffix.")
def evaluate(run_dir, ensemble, **options):
    """Evaluate RUN_DIR on a split of its data: accuracy, per-class precision/recall/F1, confusion
    matrix, ROC AUC, average precision, EER, recall per difficulty group.

    Writes report.json, report.md, confusion.png and roc.png into RUN_DIR.
    """
    from realfake.jobs.tasks.evaluate import run_evaluate

    summary = run_evaluate(run_dir=run_dir, ensemble=list(ensemble), **options)
    click.echo(Path(summary["report"]).read_text())
    stem = Path(summary["report"]).stem  # report, report_valid, report_ensemble, ...
    suffix = stem[len("report"):]
    click.echo(f"Report: {summary['report']} (and {stem}.json, confusion{suffix}.png, roc{suffix}.png beside it)")


@click.command("evaluate-scores")
@click.argument("scores", type=click.Path(exists=True, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
def evaluate_scores(scores, data_dir, split):
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

    summary = run_evaluate_scores(scores, data_dir, split)
    click.echo(Path(summary["report"]).read_text())
    click.echo(f"Report: {summary['report']} (and the .json and .png files beside it)")
