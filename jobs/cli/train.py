"""`realfake train`: the options are `run_train`'s, i.e. the fields of `TrainConfig`."""
from __future__ import annotations

import os

import click
from realfake.jobs.cli.options import JobCommand, as_arguments


@click.command(cls=JobCommand, target="realfake.jobs.tasks.train:run_train", arguments=("data_dir",))
def train(**options):
    """Train a model on a prepared DATA_DIR (see `realfake data prepare`).

    Prints the report's line per epoch, keeps best (by valid loss) and last checkpoints, history
    (JSON, CSV) and curves.png in the run directory. Every option is recorded in config.json.

    \b
    Examples:
      realfake train data/ciplab --model resnet18 --epochs 5 --out runs
      realfake train data/ciplab --model resnet18 --image-size 224 --pseudo-fakes 0.5 \\
          --schedule cosine --warmup-epochs 2 --label-smoothing 0.1 --ema 0.999 --cache gpu
      realfake train data/ciplab --model ghost_cnn --optimizer adamw --lr 2e-3 --weight-decay 1e-3 \\
          --schedule onecycle --epochs 40 --ghost-shift 4 --region-loss 1   # then evaluate it with --checkpoint last
      realfake train data/ciplab --nproc 2 --batch-size 16   # 2 processes (DDP), a global batch of 32
      torchrun --nproc-per-node 4 -m realfake.jobs.cli train data/ciplab --device cuda   # or across machines
    """
    from realfake.jobs.tasks.train import run_train  # torch loads when a command runs, not for --help

    summary = run_train(**as_arguments(options))
    if os.environ.get("RANK", "0") != "0":  # one of torchrun's processes: process 0 reports the run
        return
    click.echo(f"Run directory: {summary['run_dir']}")
    click.echo(f"Best epoch {summary['best_epoch']} (valid loss {summary['best_valid_loss']:.4f}); "
               f"evaluate it with: realfake evaluate {summary['run_dir']}")
