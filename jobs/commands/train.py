"""`realfake train`."""
from __future__ import annotations

from pathlib import Path

import click

MODEL_HELP = "simple_cnn (report's Model 1), deep_cnn (Model 2), resnet18, efficientnet_b0, mobilenet_v3_small."


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default="simple_cnn", show_default=True, help=MODEL_HELP)
@click.option("--epochs", default=10, show_default=True, help="Epochs to train (with --resume: the new total).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adadelta"]), default="adam", show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate (the report: Adam 0.001, Adadelta 0.1).")
@click.option("--momentum", default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--step-size", default=0, show_default=True, help="StepLR period in epochs; 0 keeps the LR constant.")
@click.option("--gamma", default=0.1, show_default=True, help="StepLR decay factor.")
@click.option("--dropout", type=float, default=None, help="Dropout probability (default: the model's own, 0.5 for the report's CNNs).")
@click.option("--image-size", default=128, show_default=True, help="Images are resized to SIZE x SIZE (the report: 128).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="The report's augmentation on the train split only: rotation ±15°, flip, brightness/contrast ±0.2, Gaussian blur.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the model. Default: on a GPU yes; on a CPU no (a cold compile costs more than it saves on short runs).")
@click.option("--amp", is_flag=True, help="Mixed precision (fp16 on GPU; bf16 on CPU, slow without bf16 units).")
@click.option("--channels-last", is_flag=True, help="Use channels_last memory format.")
@click.option("--patience", type=int, default=None, help="Stop after N epochs without a better valid loss.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Folder that receives the run directory.")
@click.option("--name", default=None, help="Run directory name (default: MODEL-TIMESTAMP).")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue RUN_DIR exactly from its last checkpoint (model, optimizer, scheduler, epoch, RNG).")
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True,
              help="auto = DALI on the GPU if there is one, DALI on the CPU where installed, torchvision otherwise.")
@click.option("--num-workers", default=2, show_default=True, help="Loader worker threads/processes.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Local state dict to start from (e.g. ImageNet weights for resnet18). Nothing is downloaded.")
@click.option("--freeze-backbone", is_flag=True, help="Train only the new head (torchvision models).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def train(data_dir, compile_, **options):
    """Train a model on a prepared DATA_DIR (see `realfake data prepare`).

    Prints the report's line per epoch, keeps best (by valid loss) and last checkpoints, history
    (JSON, CSV) and curves.png in the run directory.

    \b
    Example:
      realfake train data/ciplab --model resnet18 --epochs 5 --out runs
    """
    from realfake.jobs.train import run_train

    summary = run_train(data_dir=data_dir, compile=compile_, **options)
    click.echo(f"Run directory: {summary['run_dir']}")
    click.echo(f"Best epoch {summary['best_epoch']} (valid loss {summary['best_valid_loss']:.4f}); "
               f"evaluate it with: realfake evaluate {summary['run_dir']}")
