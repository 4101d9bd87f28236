"""The training loop, after torchvision's references/classification/train.py: `train_one_epoch`,
`evaluate`, checkpoints that hold model, optimizer, scheduler, epoch, args and RNG state, and `fit`,
which runs epochs with history, best/last checkpoints, early stopping and exact resume.

Optional recipe pieces (see `engines/recipes.py`): a batch transform applied on the device after the
loader (pseudo-fakes, training crops), a per-batch LR schedule, label smoothing, and a weight EMA
that is what gets validated and saved (the raw weights stay in last.pt for resume).

In a data-parallel run (`engines/distributed.py`) the same loop runs in every process on its share of
the data: the epoch's sums are all-reduced, BatchNorm statistics averaged, and rank 0 alone prints and
writes the run directory; in a single process those steps change nothing."""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from realfake.engines import distributed
from realfake.engines.recipes import tta_views
from realfake.models import Ensemble, build_model
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
CHECKPOINTS = ("best", "last")  # best.pt: lowest valid loss; last.pt: the last epoch (and resume state)
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr")


def make_optimizer(name: str, params, *, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":  # decoupled weight decay (Loshchilov & Hutter), not Adam's L2 term
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    # fp16 on GPUs (with a GradScaler); bf16 on CPUs, which have no fp16 matmul units.
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch, device, channels_last: bool, transform=None):
    images = batch.images.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    if transform is not None:
        images, labels = transform(images, labels)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def _check_errors(batch) -> None:
    # Prepared data is validated; a file that fails now (deleted or changed since prepare) must not
    # silently shrink the epoch.
    if batch.errors:
        index, reason = batch.errors[0]
        raise ValueError(f"file #{index} of the data set could not be decoded ({reason}): "
                         "run `realfake data prepare` again")


def train_one_epoch(model, criterion, optimizer, loader, device, epoch: int, *, scaler=None, amp=False,
                    channels_last=False, progress=True, batch_transform=None, scheduler=None,
                    ema=None, aux_loss=None) -> tuple[float, float]:
    """One pass over the training loader; returns (mean loss, accuracy).

    batch_transform(images, labels, epoch, step) -> (images, labels) runs on the device after the
    loader (pseudo-fakes, crops); `scheduler` is stepped after every batch when given (per-batch
    schedules); `ema` (an AveragedModel) is updated after every optimizer step; `aux_loss(regions)`
    (a `recipes.RegionLoss`) is added to the loss of every batch, from the batch's `regions`.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=None if progress else True, unit="batch")
    for step, batch in enumerate(bar):
        _check_errors(batch)
        transform = None
        if batch_transform is not None:
            def transform(x, y, step=step):
                return batch_transform(x, y, epoch, step)
        images, labels = _to_device(batch, device, channels_last, transform)
        with autocast(device, amp):
            logits = model(images)
            loss = criterion(logits, labels)
            objective = loss  # what is minimized; `loss` (the classification part) is what the epoch line reports
            if aux_loss is not None:
                if batch.regions is None:
                    raise ValueError("this training loader gives no edited-region targets for --region-loss")
                objective = loss + aux_loss(batch.regions.to(device))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            objective.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(_unwrap(model))
        n = labels.numel()
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.2%}")
    total_loss, correct, seen = distributed.sum_all([total_loss, correct, seen])  # over every process's share
    if seen == 0:
        raise ValueError("the training split has no batches: use a smaller --batch-size or more data")
    return total_loss / seen, correct / seen


def _unwrap(model):
    """The eager module behind DDP's and torch.compile's wrappers (its weights are the same tensors)."""
    model = distributed.unwrap(model)
    return getattr(model, "_orig_mod", model)


@torch.inference_mode()
def predict(model, loader, device, *, amp=False, channels_last=False, progress=False, desc="predict",
            tta: str = "none"):
    """Probabilities of class 1 (fake), labels and file indices for every file of an eval loader.

    tta: "none", "flip" or "crops" (see `recipes.tta_views`): p_fake is the mean over the views and
    the returned logits are log-probabilities of that mean (so a cross-entropy on them stays right).
    """
    model.eval()
    probs, labels, indices, logits_all = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, unit="batch"):
        _check_errors(batch)
        images, y = _to_device(batch, device, channels_last)
        if tta == "none":
            with autocast(device, amp):
                logits = model(images)
        else:
            mean_prob = 0
            views = tta_views(images, tta)
            for view in views:
                if channels_last:
                    view = view.contiguous(memory_format=torch.channels_last)
                with autocast(device, amp):
                    mean_prob = mean_prob + torch.softmax(model(view).float(), 1)
            logits = torch.log((mean_prob / len(views)).clamp_min(1e-12))
        logits = logits.float()
        logits_all.append(logits.cpu())
        probs.append(torch.softmax(logits, 1)[:, 1].cpu())
        labels.append(y.cpu())
        indices.append(batch.indices.cpu())
    if not probs:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), torch.empty(0, 2)
    return torch.cat(probs), torch.cat(labels), torch.cat(indices), torch.cat(logits_all)


def evaluate(model, criterion, loader, device, *, amp=False, channels_last=False, progress=False):
    """Mean loss and accuracy over an eval loader (every file once; in a data-parallel run, over every
    process's shard: `criterion` is then the plain cross-entropy, summed and all-reduced)."""
    _, labels, _, logits = predict(model, loader, device, amp=amp, channels_last=channels_last,
                                   progress=progress, desc="valid")
    if distributed.world_size() > 1:
        loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum").item() if labels.numel() else 0.0
        correct = (logits.argmax(1) == labels).sum().item()
        loss_sum, correct, n = distributed.sum_all([loss_sum, correct, labels.numel()])
        if n == 0:
            raise ValueError("the validation split is empty: prepare the data with a non-zero valid fraction")
        return loss_sum / n, correct / n
    if labels.numel() == 0:
        raise ValueError("the validation split is empty: prepare the data with a non-zero valid fraction")
    loss = criterion(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return loss, acc


@dataclass
class TrainState:
    """Everything `--resume` needs besides model/optimizer/scheduler weights."""

    epoch: int = 0  # last completed epoch (1-based); 0 = not started
    best_valid_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, args: dict,
                    scaler=None, ema=None, aux_loss=None, rng_ranks: list[dict] | None = None) -> None:
    """The resume checkpoint. With an EMA, "model" holds the EMA weights (what is evaluated and built
    into engines), "train_model" the raw weights and "ema" the averager's state; "aux_loss" holds the
    training-only head of a region loss; "rng_ranks" the random state of every process of a
    data-parallel run ("rng_cpu" and "rng_cuda" are this process's)."""
    aux_loss = _unwrap(aux_loss) if aux_loss is not None else None
    checkpoint = {
        "model": (ema.module if ema is not None else model).state_dict(),
        "train_model": model.state_dict() if ema is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "aux_loss": aux_loss.state_dict() if aux_loss is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": state.epoch,
        "best_valid_loss": state.best_valid_loss,
        "best_epoch": state.best_epoch,
        "epochs_without_improvement": state.epochs_without_improvement,
        "history": state.history,
        "args": args,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if rng_ranks is not None:
        checkpoint["rng_ranks"] = rng_ranks
    tmp = Path(path).with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)  # a crash mid-save never leaves a half-written checkpoint


def save_weights(path: Path, model, state: TrainState, args: dict) -> None:
    """The best checkpoint: weights and args only (what evaluation and engines need); the optimizer
    state would triple its size for nothing."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "epoch": state.epoch, "valid_loss": state.best_valid_loss,
                "args": args}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: is this a run directory of `realfake train`?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable realfake checkpoint ({exc.__class__.__name__}): "
                         "train again or point at another run") from exc


RUN_CONFIG = "config.json"


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory of `realfake train`")
    return json.loads(path.read_text())


def run_ghost_maps(config: dict) -> str | None:
    """The kind of JPEG ghost maps a run's model was trained on ("pil" or "dct"; runs that predate the
    choice trained on "pil"), or None for a model that reads pixels."""
    if config.get("input") != "ghosts":
        return None
    return config.get("ghost_maps") or (config.get("args") or {}).get("ghost_maps") or "pil"


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[nn.Module, dict, dict]:
    """(model in eval mode on the CPU, config.json, checkpoint dict) of a `realfake train` run. The
    config's "ghost_maps" says which kind of ghost maps the model reads (None: pixels)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {checkpoint!r}: choose {' or '.join(CHECKPOINTS)}")
    config = read_run_config(run_dir)
    config["ghost_maps"] = run_ghost_maps(config)
    state = load_checkpoint(Path(run_dir) / f"{checkpoint}.pt")
    model = build_model(config["model"], num_classes=len(config["class_names"]), image_size=config["image_size"],
                        dropout=config["dropout"], width=config["width"])
    model.load_state_dict(state["model"])
    return model.eval(), config, state


def load_runs(run_dirs, checkpoint: str = "best") -> tuple[nn.Module, dict, dict]:
    """load_run of the first run, or with several an Ensemble of their models (the first run's config and
    checkpoint dict). The runs must share model, image size, classes, kind of ghost maps and data set (the
    manifest's sha256): an ensemble is evaluated on, and calibrated with, splits none of its members
    trained on."""
    run_dirs = list(run_dirs)
    model, config, state = load_run(run_dirs[0], checkpoint)
    if len(run_dirs) == 1:
        return model, config, state
    members = [model]
    for other in run_dirs[1:]:
        member, other_config, _ = load_run(other, checkpoint)
        for key in ("model", "width", "image_size", "class_names", "manifest_sha256", "ghost_maps"):
            if other_config.get(key) != config.get(key):
                raise ValueError(f"{other} cannot join an ensemble with {run_dirs[0]}: its {key} differs "
                                 f"({other_config.get(key)!r} vs {config.get(key)!r}); ensemble runs of one model, "
                                 "image size and data set")
        members.append(member)
    return Ensemble(members).eval(), config, state


def restore(checkpoint: dict, model, optimizer, scheduler, scaler=None, ema=None, aux_loss=None) -> TrainState:
    if (ema is not None) != (checkpoint.get("ema") is not None):
        raise ValueError("the checkpoint was saved " + ("without" if ema is not None else "with")
                         + " an EMA of the weights: resume with the run's own options")
    if (aux_loss is not None) != (checkpoint.get("aux_loss") is not None):
        raise ValueError("the checkpoint was saved " + ("without" if aux_loss is not None else "with")
                         + " a region loss: resume with the run's own options")
    model.load_state_dict(checkpoint["train_model"] if ema is not None else checkpoint["model"])
    if ema is not None:
        ema.load_state_dict(checkpoint["ema"])
    if aux_loss is not None:
        aux_loss.load_state_dict(checkpoint["aux_loss"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng_cpu"])
    if checkpoint.get("rng_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])
    if checkpoint.get("rng_ranks"):  # a data-parallel run: each process continues its own stream
        distributed.set_rng_state(checkpoint["rng_ranks"][distributed.rank()])
    return TrainState(
        epoch=checkpoint["epoch"], best_valid_loss=checkpoint["best_valid_loss"],
        best_epoch=checkpoint["best_epoch"], epochs_without_improvement=checkpoint["epochs_without_improvement"],
        history=list(checkpoint["history"]),
    )


def write_history(run_dir: Path, history: list[dict]) -> None:
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    with open(run_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)


def fit(model, *, train_loader, valid_loader, optimizer, scheduler, device, run_dir: Path, epochs: int,
        args: dict, state: TrainState | None = None, compiled_model=None, patience: int | None = None,
        amp=False, channels_last=False, scaler=None, progress=True, echo=print, per_batch_scheduler=False,
        label_smoothing: float = 0.0, ema=None, batch_transform=None, aux_loss=None) -> TrainState:
    """Train from `state.epoch + 1` to `epochs`. `model` is the eager module whose weights are saved;
    `compiled_model` (torch.compile of it, sharing weights) runs the steps when given.

    label_smoothing applies to the training loss only (validation loss stays the plain cross-entropy,
    comparable across runs); with `ema` the EMA weights are validated and saved as best/last "model";
    `aux_loss` (a region loss) adds to the training loss only and is saved in last.pt for resume.

    Data-parallel (`engines.distributed`): `compiled_model` (and `aux_loss`) are the DDP-wrapped modules
    that run the steps, the loaders give this process's shard; after each epoch the BatchNorm statistics
    are averaged and the weights checked to agree, validation runs on the unwrapped module, and rank 0
    alone prints and writes the run directory.
    """
    run_dir = Path(run_dir)
    state = state or TrainState()
    criterion = nn.CrossEntropyLoss()
    train_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing) if label_smoothing else criterion
    runner = compiled_model if compiled_model is not None else model
    for epoch in range(state.epoch + 1, epochs + 1):
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(runner, train_criterion, optimizer, train_loader, device, epoch,
                                                scaler=scaler, amp=amp, channels_last=channels_last,
                                                progress=progress, batch_transform=batch_transform,
                                                scheduler=scheduler if per_batch_scheduler else None, ema=ema,
                                                aux_loss=aux_loss)
        distributed.average_buffers(model)
        if ema is not None:
            distributed.average_buffers(ema)
        distributed.check_same_weights(model, ema, aux_loss, when=f"after epoch {epoch}")
        valid_loss, valid_acc = evaluate(ema.module if ema is not None else distributed.unwrap(runner), criterion,
                                         valid_loader, device, amp=amp, channels_last=channels_last)
        if not per_batch_scheduler:
            scheduler.step()
        main = distributed.is_main()
        if main:  # the report's epoch line
            echo(f"Epoch [{epoch}/{epochs}], Train Loss: {train_loss:.4f}, Train Acc: {train_acc:.2%}, "
                 f"Valid Loss: {valid_loss:.4f}, Valid Acc: {valid_acc:.2%}")
        state.history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                              "valid_loss": valid_loss, "valid_acc": valid_acc, "lr": lr})
        state.epoch = epoch
        if valid_loss < state.best_valid_loss:
            state.best_valid_loss, state.best_epoch, state.epochs_without_improvement = valid_loss, epoch, 0
            if main:
                save_weights(run_dir / "best.pt", ema.module if ema is not None else model, state, args)
        else:
            state.epochs_without_improvement += 1
        rng_ranks = distributed.all_gather_object(distributed.rng_state()) if distributed.world_size() > 1 else None
        if main:
            save_checkpoint(run_dir / "last.pt", model, optimizer, scheduler, state, args, scaler, ema, aux_loss,
                            rng_ranks=rng_ranks)
            write_history(run_dir, state.history)
        if patience and state.epochs_without_improvement >= patience:
            if main:
                echo(f"Early stopping: valid loss has not improved for {patience} epochs "
                     f"(best {state.best_valid_loss:.4f} at epoch {state.best_epoch}).")
            break
    return state
