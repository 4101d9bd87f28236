"""`realfake demo`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True,
              help="Working folder (synthetic images, prepared data, the run).")
@click.option("--n", default=400, show_default=True, help="Synthetic images to generate (half fake).")
@click.option("--epochs", default=8, show_default=True)
@click.option("--model", default="simple_cnn", show_default=True)
@click.option("--image-size", default=128, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True)
def demo(**options):
    """Generate a small synthetic set, prepare it, train briefly, evaluate, and say where the report
    and pictures are. A few minutes on 2 CPU cores; nothing is downloaded."""
    from realfake.jobs.tasks.demo import run_demo

    result = run_demo(**options)
    click.echo("")
    click.echo(f"Test accuracy {result['accuracy']:.3f}, ROC AUC {result['roc_auc']:.3f} on {result['n']} images "
               f"(loader: {result['loader']}).")
    click.echo(f"Report:   {result['report']}")
    for key in ("curves", "confusion", "roc"):
        click.echo(f"{key.capitalize() + ':':9} {result[key]}")
