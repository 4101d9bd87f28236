"""`realfake pretrain`."""
from __future__ import annotations

from pathlib import Path

import click
from realfake.jobs.cli.train import MODEL_HELP


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Weights file to write (.pt), for `realfake train --weights`.")
@click.option("--model", default="resnet18", show_default=True, help=MODEL_HELP)
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True, help="Real images per batch (the pseudo-fakes come on top).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw", "adadelta"]), default="adam", show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--image-size", default=128, show_default=True)
@click.option("--pseudo-fakes", "pseudo_fakes", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True, help="Pseudo-fakes per real image of a batch (1.0 = one each, balanced).")
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine", "onecycle"]), default="cosine",
              show_default=True)
@click.option("--warmup-epochs", type=float, default=1.0, show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--ema", type=float, default=0.0, show_default=True, help="EMA decay of the weights (0 = off).")
@click.option("--augment/--no-augment", default=True, show_default=True, help="The report's augmentation.")
@click.option("--blur/--no-blur", default=False, show_default=True,
              help="Keep the report's Gaussian blur (off by default here: it blurs the blending traces away).")
@click.option("--train-crop", type=int, default=0, show_default=True, help="Random crops of this size (0 = off).")
@click.option("--cache", type=click.Choice(["none", "memory", "gpu"]), default="none", show_default=True,
              help="Decode once into a uint8 cache and augment on that device.")
@click.option("--amp", is_flag=True, help="Mixed precision.")
@click.option("--channels-last", is_flag=True)
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile (default: on a GPU).")
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True)
@click.option("--num-workers", default=2, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory of the pretraining (default: OUT.run beside OUT).")
def pretrain(data_dir, compile_, **options):
    """Pretrain a backbone on pseudo-fakes alone and save it as a weights file.

    Uses only the real images of DATA_DIR's train split: each batch is real images plus self-blended
    pseudo-fakes made from them, a binary task that needs no labelled fake. The best weights (by
    valid loss) go to OUT; the run is also evaluated on the valid split, real retouches included
    ("zero-shot" AUC). Then fine-tune on the real labels:

    \b
      realfake pretrain data/ciplab --model resnet18 --image-size 224 --epochs 20 --out sbi-r18.pt
      realfake train data/ciplab --model resnet18 --image-size 224 --weights sbi-r18.pt
    """
    from realfake.jobs.tasks.pretrain import run_pretrain

    summary = run_pretrain(data_dir=data_dir, compile=compile_, **options)
    auc = summary["zero_shot_valid_auc"]
    click.echo(f"Weights: {summary['weights']} (best epoch {summary['best_epoch']}, run {summary['run_dir']})")
    click.echo("Zero-shot valid AUC (pseudo-fakes only, real retouches): "
               + ("n/a" if auc is None else f"{auc:.4f}"))
    click.echo(f"Fine-tune with: realfake train {data_dir} --model {summary['model']} --weights {summary['weights']}")
