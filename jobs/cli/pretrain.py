"""`realfake pretrain`: the options are `run_pretrain`'s, i.e. the fields of `PretrainConfig`."""
from __future__ import annotations

import click
from realfake.jobs.cli.options import JobCommand, as_arguments


@click.command(cls=JobCommand, target="realfake.jobs.tasks.pretrain:run_pretrain", arguments=("data_dir",))
def pretrain(**options):
    """Pretrain a backbone on pseudo-fakes alone and save it as a weights file.

    Uses only the real images of DATA_DIR's train split: each batch is real images plus self-blended
    pseudo-fakes made from them, a binary task that needs no labelled fake. The best weights (by
    valid loss) go to OUT; the run is also evaluated on the valid split, real retouches included
    ("zero-shot" AUC). Then fine-tune on the real labels:

    \b
      realfake pretrain data/ciplab --model resnet18 --image-size 224 --epochs 20 --out sbi-r18.pt
      realfake train data/ciplab --model resnet18 --image-size 224 --weights sbi-r18.pt
    """
    from realfake.jobs.tasks.pretrain import run_pretrain  # torch loads when a command runs, not for --help

    summary = run_pretrain(**as_arguments(options))
    auc = summary["zero_shot_valid_auc"]
    click.echo(f"Weights: {summary['weights']} (best epoch {summary['best_epoch']}, run {summary['run_dir']})")
    click.echo("Zero-shot valid AUC (pseudo-fakes only, real retouches): "
               + ("n/a" if auc is None else f"{auc:.4f}"))
    click.echo(f"Fine-tune with: realfake train {options['data_dir']} --model {summary['model']} "
               f"--weights {summary['weights']}")
