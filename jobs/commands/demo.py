"""`realfake demo`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True,
              help="Working folder (synthetic images, prepared data, the run, the engine, the scores); a rerun "
                   "replaces the demo's own outputs in it.")
@click.option("--n", default=400, show_default=True, help="Synthetic images to train and test on (half fake).")
@click.option("--epochs", default=12, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic set, the split and the training; "
              "the scored new images use seed + 1.")
@click.option("--image-size", default=128, show_default=True,
              help="Side of the synthetic faces in pixels (the ghost maps have one cell per 8x8 block).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "aot", "compile", "eager"]), default="aot",
              show_default=True, help="Engine backend; where it cannot build here, what auto gives.")
def demo(**options):
    """The whole product path on a small synthetic set, with the product's best model (ghost_cnn):
    synth -> prepare -> train -> evaluate -> engine build -> score a folder of new images holding one
    damaged file. Prints where every output is and the commands that do the same on the real data
    set. A few minutes on 2 CPU cores; nothing is downloaded."""
    from realfake.jobs.demo import run_demo, summary_lines

    result = run_demo(**options)
    click.echo("")
    for line in summary_lines(result):
        click.echo(line)
