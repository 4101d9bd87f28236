"""`realfake demo`: the options are `run_demo`'s."""
from __future__ import annotations

import click
from realfake.jobs.cli.options import JobCommand, as_arguments


@click.command(cls=JobCommand, target="realfake.jobs.tasks.demo:run_demo")
def demo(**options):
    """The whole product path on a small synthetic set, with the product's best model (ghost_cnn):
    synth -> prepare -> train -> evaluate -> engine build -> score a folder of new images holding one
    damaged file, with heat maps of the highest scores and the report page. Prints where every output
    is and the commands that do the same on the real data set. A few minutes on 2 CPU cores; nothing
    is downloaded."""
    from realfake.jobs.tasks.demo import run_demo, summary_lines  # torch and the whole product path

    result = run_demo(**as_arguments(options))
    click.echo("")
    for line in summary_lines(result):
        click.echo(line)
