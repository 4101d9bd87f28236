"""`realfake train`."""
from __future__ import annotations

from pathlib import Path

import click

MODEL_HELP = ("simple_cnn (report's Model 1), deep_cnn (Model 2), resnet18, efficientnet_b0, mobilenet_v3_small "
              "(pixels); ghost_cnn (JPEG ghost maps: how each 8x8 block changes when the file is re-saved at 11 qualities).")


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default="simple_cnn", show_default=True, help=MODEL_HELP)
@click.option("--epochs", default=10, show_default=True, help="Epochs to train (with --resume: the new total).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw", "adadelta"]), default="adam", show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate (the report: Adam 0.001, Adadelta 0.1).")
@click.option("--momentum", default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--step-size", default=0, show_default=True, help="StepLR period in epochs; 0 keeps the LR constant.")
@click.option("--gamma", default=0.1, show_default=True, help="StepLR decay factor.")
@click.option("--dropout", type=float, default=None, help="Dropout probability (default: the model's own, 0.5 for the report's CNNs).")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="ghost_cnn only: channels of its first blocks, later ones 2x and 4x (default 32; 48 costs ~1.8x).")
@click.option("--image-size", type=int, default=None,
              help="Images are resized to SIZE x SIZE. Default: the model's own, the report's 128 (600 for ghost_cnn, "
                   "whose JPEG ghost maps cover a centre crop of SIZE x SIZE pixels at native resolution).")
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
@click.option("--pseudo-fakes", "pseudo_fakes", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Self-blended pseudo-fakes: this fraction of each train batch's real images is copied, a face "
                   "region (eyes/nose/mouth/face/random blob) blended with a colour-, scale- and position-jittered "
                   "copy of itself or another real face, and added to the batch as an extra fake. Made on the "
                   "training device from de-normalized images, after the loader. 0 = off.")
@click.option("--real-only", is_flag=True,
              help="Train on the real images only; the pseudo-fakes are the fake class (needs --pseudo-fakes).")
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine", "onecycle"]), default=None,
              help="LR schedule. Default: step when --step-size is given, else constant (the report's). "
                   "cosine and onecycle step per batch.")
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True,
              help="Linear LR warm-up over this many epochs (fractions allowed); for onecycle, its rising part.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True,
              help="Label smoothing of the training loss (e.g. 0.1); validation loss stays plain cross-entropy.")
@click.option("--ema", type=float, default=0.0, show_default=True,
              help="Keep an exponential moving average of the weights with this decay (e.g. 0.999; warmed up "
                   "on short runs). The EMA is what is validated and saved in best.pt/last.pt. 0 = off.")
@click.option("--blur/--no-blur", default=True, show_default=True,
              help="Keep the report's strong Gaussian blur (sigma 6-7) in --augment; it may erase the retouching traces.")
@click.option("--train-crop", type=int, default=0, show_default=True,
              help="Train on random SIZE x SIZE crops of the --image-size images, validate and evaluate on the full "
                   "image (e.g. --image-size 600 --train-crop 384 keeps native resolution). Any-size models only. 0 = off.")
@click.option("--cache", type=click.Choice(["none", "memory", "gpu"]), default="none", show_default=True,
              help="Decode the data once into a uint8 cache (host memory or GPU; the --loader backend decodes) and "
                   "augment each epoch on that device with batched tensor ops: epochs then cost the model, not the decoder.")
@click.option("--ghost-shift", type=click.IntRange(0), default=0, show_default=True,
              help="ghost_cnn only: move each training batch's JPEG ghost maps by up to N cells (8 px) each way, "
                   "edges repeated (faces are not all centred alike). 0 = off.")
@click.option("--region-loss", type=click.FloatRange(0), default=0.0, show_default=True,
              help="ghost_cnn only: weight of an auxiliary loss that asks the network's feature map to point at the "
                   "regions each fake's file name says were edited (CIPLAB's ..._CCCC.jpg: left eye, right eye, nose, "
                   "mouth); training only, the saved model is unchanged. 0 = off.")
def train(data_dir, compile_, **options):
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
    """
    from realfake.jobs.tasks.train import run_train

    summary = run_train(data_dir=data_dir, compile=compile_, **options)
    click.echo(f"Run directory: {summary['run_dir']}")
    click.echo(f"Best epoch {summary['best_epoch']} (valid loss {summary['best_valid_loss']:.4f}); "
               f"evaluate it with: realfake evaluate {summary['run_dir']}")
