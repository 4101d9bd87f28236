"""`realfake sweep`."""
from __future__ import annotations

from pathlib import Path

import click
from realfake.jobs.tasks import sweep_presets

PRESET_NAMES = sweep_presets.names()


@click.command()
@click.argument("spec", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="A built-in spec instead of SPEC: report-baselines (the report's Model 1, Model 2.2, ResNet18), "
                   "pseudo-fakes (ResNet18@224 recipe with/without pseudo-fakes, blur, TTA, pretraining), "
                   "resolution (128 / 224 / native-resolution crops), jpeg-ghosts (ghost_cnn on JPEG ghost maps, "
                   "sized for 2 CPU cores), cpu-short (the pixel models, sized for 2 CPU cores).")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=False,
              help="Prepared data directory (`realfake data prepare`). Required unless --show-preset.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("sweeps/sweep"),
              show_default=True, help="Sweep folder; running the same command again resumes it.")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: the spec's, 0,1,2 in every preset).")
@click.option("--only", multiple=True, help="Run only this configuration (repeatable).")
@click.option("--device", default=None, help="auto, cpu or cuda[:N] for every configuration (default: the spec's, auto).")
@click.option("--cache", type=click.Choice(["none", "memory", "gpu"]), default=None,
              help="Decode cache for every configuration; gpu decodes the set once onto the GPU and augments there.")
@click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE",
              help="Train option for every configuration, e.g. --set amp=true --set compile=false (repeatable).")
@click.option("--dry-run", is_flag=True, help="Check the spec and write results.md with the commands; train nothing.")
@click.option("--finished-only", is_flag=True,
              help="Train nothing: tabulate the runs that finished training (evaluating them if needed) and "
                   "leave out the others, e.g. after a sweep was stopped at a time limit.")
@click.option("--show-preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Print a preset as a TOML spec to copy and edit, and exit.")
def sweep(spec, preset, show_preset, only, set_options, **options):
    """Train and evaluate configurations over seeds; report mean ± std of test AUC, accuracy and
    recall per difficulty group.

    SPEC is a TOML file (see --show-preset for the format). Each configuration is trained once per
    seed with `realfake train`, evaluated on the test split with `realfake evaluate`, and summarized
    in OUT/results.json and OUT/results.md: a Markdown table whose rows carry the exact commands
    that reproduce them. On a GPU, `--cache gpu` keeps the decoded set on the device for the whole
    sweep.

    \b
    Examples:
      realfake sweep --preset cpu-short --data data/ciplab --out sweeps/cpu
      realfake sweep --preset pseudo-fakes --data data/ciplab --cache gpu --set amp=true --out sweeps/sbi
      realfake sweep --show-preset pseudo-fakes > my-sweep.toml
    """
    if show_preset:
        click.echo(sweep_presets.text(show_preset), nl=False)
        return
    from realfake.jobs.tasks.sweep import run_sweep  # torch loads when a sweep runs, not for --help

    summary = run_sweep(spec=spec, preset=preset, only=list(only) or None, set_options=list(set_options) or None,
                        **options)
    if summary["dry_run"]:
        click.echo(Path(summary["table"]).read_text())
    else:
        click.echo(Path(summary["table"]).read_text().split("\nPer seed:")[0])
    click.echo(f"Results: {summary['results']} and {summary['table']}")
