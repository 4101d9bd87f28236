"""`realfake train`: train one model on a prepared data set into a run directory.

Like torchvision's references/classification/train.py `main`, a short sequence of named steps: the
run's config (new, or the resumed run's), the data loaders, the model and its optimizer, the run
directory, `engines.trainer.fit`, the curves. The run directory holds everything needed to evaluate,
compare, resume or build an engine from it. Every option is a field of `TrainConfig`.

Data-parallel: with --nproc N the function starts N processes (`launch.py`) that each run it as one
process of a torch.distributed group, as `torchrun ... -m realfake.jobs.cli train` starts them across
machines. Each process reads its shard of the data, trains a DDP copy of the model, and rank 0 alone
writes the run directory (`engines/distributed.py` says what is kept in step and how).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from realfake.engines import distributed, recipes, trainer
from realfake.engines.devices import native_bf16, resolve_device
from realfake.engines.metrics import save_curves_png
from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.tasks.launch import launch
from realfake.jobs.tasks.train_config import TrainConfig
from realfake.models import build_model
from realfake.pipelines.ghost_loaders import GhostMapLoader
from realfake.pipelines.loaders import get_loader, manifest_loader_options
from realfake.pipelines.manifest import ManifestRow, manifest_sha256, read_manifest
from realfake.pipelines.prepare import edited_regions
from realfake.pipelines.provenance import versions
from realfake.pipelines.pseudo_fakes import DEFAULT_SPEC, train_batch_transform
from realfake.pipelines.spec import CLASS_NAMES, MEAN, STD, AugmentSpec
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    train_rows: list[ManifestRow]
    valid_rows: list[ManifestRow]
    train_loader: object
    valid_loader: object
    augment_spec: AugmentSpec | None


@dataclass
class TrainingParts:
    """The model and what trains it, built for one config on one device."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_batch_scheduler: bool
    scaler: torch.amp.GradScaler | None
    ema: torch.nn.Module | None
    region_loss: recipes.RegionLoss | None
    batch_transform: object
    amp: bool  # mixed precision as it runs: --amp where the device computes it natively


def run_train(data_dir: InputPath, out: OutputPath = Path("runs"), name: str | None = None,
              resume: InputPath | None = None, progress: bool = True, **options) -> dict:
    """Train a model on DATA_DIR's train split, validating on its valid split each epoch.

    Args:
        data_dir: Prepared data directory (`realfake data prepare`).
        out: Folder that receives the run directory.
        name: Run directory name (default: MODEL-TIMESTAMP).
        resume: Continue this run directory exactly from its last checkpoint (model, optimizer, scheduler,
            epoch, RNG); of the options only --epochs (the new total) applies.
        progress: Show progress bars.

    The options are the fields of `TrainConfig` (`realfake train --help`). Returns a summary: the run
    directory, epochs run, best epoch and valid loss, last accuracies, loader, device. With --nproc N it
    starts N processes, each of which runs this function as one process of the group, and returns the
    summary of process 0.
    """
    data_dir = Path(data_dir).resolve()
    config, checkpoint, run_dir = _config_to_run(data_dir, resume, options)
    if config.nproc > 1 and not distributed.launched():
        return _launch(config, data_dir, Path(out), name, resume, progress, options)
    device = resolve_device(config.device)
    if not distributed.launched():
        return _train(config, checkpoint, run_dir, data_dir, device, out, name, progress)
    device = distributed.init(device)
    try:
        return _train(config, checkpoint, run_dir, data_dir, device, out, name, progress and distributed.is_main())
    finally:
        distributed.shutdown()


run_train.options = TrainConfig


def _train(config: TrainConfig, checkpoint: dict | None, run_dir: Path | None, data_dir: Path, device: str,
           out: Path, name: str | None, progress: bool) -> dict:
    """The steps of a run in this process (the only one, or one process of a group)."""
    data = load_data(config, data_dir, device, progress)
    parts = build_training(config, data, device)
    state = None
    if checkpoint is not None:
        state = trainer.restore(checkpoint, parts.model, parts.optimizer, parts.scheduler, parts.scaler,
                                ema=parts.ema, aux_loss=parts.region_loss)
        if distributed.is_main():
            print(f"Resuming {run_dir} after epoch {state.epoch} of {config.epochs}", flush=True)
    run_dir = write_run_config(config, data, data_dir, device, out, name, resumed=(run_dir, state), amp=parts.amp)
    state = fit(config, data, parts, device, run_dir, state, progress)
    if distributed.is_main():
        save_curves_png(state.history, run_dir / "curves.png", title=f"{config.model} @ {config.image_size}px")
    last = state.history[-1]
    return {"run_dir": str(run_dir), "model": config.model, "epochs_run": state.epoch,
            "best_epoch": state.best_epoch, "best_valid_loss": state.best_valid_loss,
            "valid_acc": last["valid_acc"], "train_acc": last["train_acc"], "loader": data.train_loader.backend,
            "device": device, "compiled": _uses_compile(config, device)}


def _launch(config: TrainConfig, data_dir: Path, out: Path, name: str | None, resume: Path | None, progress: bool,
            options: dict) -> dict:
    """--nproc N: start N processes on this machine that each run `run_train` as one process of the group
    (what is wrong with the options or the devices is said here first, once)."""
    distributed.check_devices(resolve_device(config.device), config.nproc)
    if resume is None and name and (out / name).exists():
        raise ValueError(f"run directory {out / name} already exists: choose another --name or --resume it")
    return launch(config.nproc, _process, data_dir, out, name, resume, progress, {**options, "nproc": config.nproc})


def _process(data_dir: Path, out: Path, name: str | None, resume: Path | None, progress: bool, options: dict) -> dict:
    """One process of `_launch`: run_train with the launcher's environment (RANK, WORLD_SIZE, ...)."""
    return run_train(data_dir, out=out, name=name, resume=resume, progress=progress, **options)


def _processes(options: dict) -> int:
    """How many processes train: --nproc, or under torchrun its world size (--nproc left at 1, or equal)."""
    asked = options.get("nproc", 1)
    if not distributed.launched():
        return asked
    world = distributed.launched_world_size()
    if asked not in (1, world):
        raise ValueError(f"--nproc {asked}, but this is one of {world} processes started by torchrun: leave --nproc "
                         "out under torchrun (its --nproc-per-node and --nnodes decide)")
    return world


def _config_to_run(data_dir: Path, resume: Path | None, options: dict) -> tuple[TrainConfig, dict | None, Path | None]:
    """(config, checkpoint, run directory): a new run's config from the options, or the resumed run's own,
    of which only the epoch budget may grow. Checked before any data is read."""
    processes = _processes(options)
    if resume is None:
        unknown = sorted(set(options) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training option {unknown[0]!r}: see `realfake train --help`")
        config = TrainConfig(**{**options, "nproc": processes})
        config.validate()
        return config.resolved(), None, None
    run_dir = Path(resume)
    checkpoint = trainer.load_checkpoint(run_dir / "last.pt")
    saved = TrainConfig.from_args(checkpoint["args"])
    if processes != saved.nproc:
        # Shards, batches and random streams are per process: another count is another run.
        raise ValueError(f"{run_dir} was trained by {saved.nproc} process(es) and resumes exactly only so, not by "
                         f"{processes}: resume with --nproc {saved.nproc}")
    config = TrainConfig.from_args({**checkpoint["args"],
                                    "epochs": max(options.get("epochs", TrainConfig.epochs), checkpoint["epoch"])})
    if config.schedule_name in ("cosine", "onecycle") and config.epochs != saved.epochs:
        raise ValueError(f"{run_dir} uses a {config.schedule_name} schedule fixed to {saved.epochs} epochs: resume "
                         f"with --epochs {saved.epochs}, or train a new run")
    run_config = trainer.read_run_config(run_dir)
    if run_config["manifest_sha256"] != manifest_sha256(data_dir):
        raise ValueError(f"{data_dir} is not the data set {run_dir} was trained on (manifest differs): "
                         f"resume with --data {run_config['data_dir']}")
    config.validate()
    return config, checkpoint, run_dir


def load_data(config: TrainConfig, data_dir: Path, device: str, progress: bool) -> TrainingData:
    """The train and valid rows of the manifest and their loaders (pixels, cached pixels or ghost maps:
    `pipelines.loaders.get_loader` decides from the config)."""
    train_rows = read_manifest(data_dir, "train")
    if config.real_only:
        train_rows = [r for r in train_rows if r.label == CLASS_NAMES.index("real")]
    valid_rows = read_manifest(data_dir, "valid")
    if not train_rows or not valid_rows:
        raise ValueError(f"{data_dir} has {len(train_rows)} train and {len(valid_rows)} valid files: "
                         "prepare it with non-zero train and valid fractions")
    augment = (AugmentSpec() if config.blur else AugmentSpec(blur_p=0.0)) if config.augment else None
    # One process of several reads its shard: of each epoch's permutation (train), of the files (valid).
    common = dict(backend=config.loader, image_size=config.image_size, batch_size=config.batch_size,
                  num_workers=config.num_workers, seed=config.seed, device=device, progress=progress,
                  cache=config.cache, shard_id=distributed.rank(), num_shards=distributed.world_size(),
                  source_size=sorted(r.width for r in train_rows)[len(train_rows) // 2])
    if config.input == "ghosts" and distributed.world_size() > 1:
        _share_ghost_maps(config, data_dir, train_rows, progress)
    regions = _edited_regions(train_rows) if config.region_loss else None
    train_loader = get_loader([r.path for r in train_rows], [r.label for r in train_rows], train=True,
                              augment=augment, ghost_shift=config.ghost_shift, regions=regions, launder=config.launder,
                              **common, **manifest_loader_options(config.input, data_dir, config.image_size, train_rows,
                                                                  config.ghost_maps))
    valid_loader = get_loader([r.path for r in valid_rows], [r.label for r in valid_rows], train=False, **common,
                              **manifest_loader_options(config.input, data_dir, config.image_size, valid_rows,
                                                        config.ghost_maps))
    return TrainingData(train_rows, valid_rows, train_loader, valid_loader, augment)


def _share_ghost_maps(config: TrainConfig, data_dir: Path, rows: list[ManifestRow], progress: bool) -> None:
    """Compute this process's share of the train files' JPEG ghost maps into the data set's cache, then wait
    for the others: every process holds all the maps (its shard changes each epoch), and reads them back
    from the cache rather than computing them all. Files without maps are named by the loader after."""
    options = manifest_loader_options(config.input, data_dir, config.image_size, rows, config.ghost_maps)
    share = GhostMapLoader([r.path for r in rows], None, image_size=config.image_size, batch_size=16,
                           num_workers=config.num_workers, shard_id=distributed.rank(),
                           num_shards=distributed.world_size(), cache_paths=options["cache_paths"],
                           kind=config.ghost_maps)
    for _ in tqdm(share, desc="JPEG ghost maps, this process's share", unit="batch", leave=False,
                  disable=None if progress else True):
        pass
    distributed.barrier()


def build_training(config: TrainConfig, data: TrainingData, device: str) -> TrainingParts:
    """The model (seeded), its EMA and region loss where asked, the optimizer, the LR schedule, the AMP
    scaler and the on-device batch transform (pseudo-fakes, crops)."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, image_size=config.image_size, dropout=config.dropout, width=config.width,
                        weights=Path(config.weights) if config.weights else None,
                        freeze_backbone=config.freeze_backbone).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.train_crop:
        _check_any_size(config.model, config.image_size, config.train_crop)
    amp = config.amp and (device.startswith("cuda") or native_bf16(device))
    if config.amp and not amp:
        log.warning("--amp: this CPU has no bf16 units (AVX512-BF16/AMX), where bf16 runs many times slower than "
                    "fp32: training in fp32")
    # The EMA copy is made before the region loss hooks the model, so it never carries the hook.
    ema = recipes.make_ema(model, config.ema) if config.ema else None
    region_loss = recipes.RegionLoss(model, config.region_loss).to(device) if config.region_loss else None
    trained = [p for p in model.parameters() if p.requires_grad] + (list(region_loss.parameters()) if region_loss else [])
    optimizer = trainer.make_optimizer(config.optimizer, trained, lr=config.lr, momentum=config.momentum,
                                       weight_decay=config.weight_decay)
    scheduler, per_batch = recipes.make_scheduler(
        optimizer, config.schedule_name, epochs=config.epochs, steps_per_epoch=len(data.train_loader),
        warmup_epochs=config.warmup_epochs, step_size=config.step_size, gamma=config.gamma, lr=config.lr)
    scaler = torch.amp.GradScaler("cuda") if amp and device.startswith("cuda") else None
    transform = train_batch_transform(seed=config.seed, pseudo_fakes=config.pseudo_fakes, train_crop=config.train_crop,
                                      rank=distributed.rank())
    distributed.seed_process(config.seed)  # the same initial weights everywhere, then dropout of its own
    return TrainingParts(model, optimizer, scheduler, per_batch, scaler, ema, region_loss, transform, amp)


def write_run_config(config: TrainConfig, data: TrainingData, data_dir: Path, device: str, out: Path,
                     name: str | None, resumed: tuple[Path | None, trainer.TrainState | None], amp: bool) -> Path:
    """config.json of a new run directory (made here), or of the resumed one (`resumed`: its directory and
    restored state) with this resume noted. Written by process 0 of a group, which tells the others where."""
    run_dir = _write_run_config(config, data, data_dir, device, out, name, resumed, amp) if distributed.is_main() \
        else None
    return distributed.broadcast_object(run_dir)


def _write_run_config(config: TrainConfig, data: TrainingData, data_dir: Path, device: str, out: Path,
                      name: str | None, resumed: tuple[Path | None, trainer.TrainState | None], amp: bool) -> Path:
    """write_run_config in the process that writes."""
    run_dir, state = resumed
    if run_dir is not None:
        record = trainer.read_run_config(run_dir)
        record["resumed"] = record.get("resumed", []) + [{"at_epoch": state.epoch,
                                                          "date": dt.datetime.now().isoformat(timespec="seconds")}]
        record["args"] = config.to_args()
    else:
        run_dir = _new_run_dir(Path(out), name, config.model)
        augment = data.augment_spec
        record = {
            "model": config.model, "input": config.input, "image_size": config.image_size,
            "dropout": config.dropout, "width": config.width,
            "mean": list(MEAN), "std": list(STD), "class_names": list(CLASS_NAMES),
            "data_dir": str(data_dir), "manifest_sha256": manifest_sha256(data_dir),
            "n_train": len(data.train_rows), "n_valid": len(data.valid_rows),
            "ghost_maps": config.ghost_maps if config.input == "ghosts" else None,
            # Ghost maps are only flipped and shifted (see ghost_loaders.InMemoryGhostLoader).
            "augment_spec": ({"hflip_p": 0.5 if augment else 0.0, "shift_cells": config.ghost_shift}
                             if config.input == "ghosts" else augment.to_dict() if augment else None),
            # The share of train images laundered each epoch (pipelines/launder.py: drawn per seed, epoch, image).
            "launder": config.launder,
            "schedule": config.schedule_name,
            "pseudo_fake_spec": DEFAULT_SPEC.to_dict() if config.pseudo_fakes else None,
            "args": config.to_args(), "created": dt.datetime.now().isoformat(timespec="seconds"),
        }
    record.update(loader=data.train_loader.backend, device=device, compiled=_uses_compile(config, device),
                  mixed_precision=amp, nproc=config.nproc, global_batch_size=config.batch_size * config.nproc,
                  versions=versions())
    (run_dir / trainer.RUN_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    log.info("run %s: %s on %s, loader %s, compile %s", run_dir, config.model, device, data.train_loader.backend,
             _uses_compile(config, device))
    return run_dir


def fit(config: TrainConfig, data: TrainingData, parts: TrainingParts, device: str, run_dir: Path,
        state: trainer.TrainState | None, progress: bool) -> trainer.TrainState:
    """trainer.fit of the parts; in a group, the model (compiled or not) and the region loss's head run
    their steps wrapped in DDP."""
    compiled = torch.compile(parts.model) if _uses_compile(config, device) else None
    region_loss = parts.region_loss
    if distributed.world_size() > 1:
        compiled = distributed.wrap(compiled if compiled is not None else parts.model, device)
        region_loss = distributed.wrap(region_loss, device) if region_loss is not None else None
    return trainer.fit(parts.model, train_loader=data.train_loader, valid_loader=data.valid_loader,
                       optimizer=parts.optimizer, scheduler=parts.scheduler, device=torch.device(device),
                       run_dir=run_dir, epochs=config.epochs, args=config.to_args(), state=state,
                       compiled_model=compiled, patience=config.patience, amp=parts.amp,
                       channels_last=config.channels_last, scaler=parts.scaler, progress=progress,
                       echo=lambda line: print(line, flush=True), per_batch_scheduler=parts.per_batch_scheduler,
                       label_smoothing=config.label_smoothing, ema=parts.ema, batch_transform=parts.batch_transform,
                       aux_loss=region_loss)


def _uses_compile(config: TrainConfig, device: str) -> bool:
    return config.compile if config.compile is not None else device.startswith("cuda")


def _new_run_dir(out: Path, name: str | None, model: str) -> Path:
    if name:
        run_dir = out / name
        if run_dir.exists():
            raise ValueError(f"run directory {run_dir} already exists: choose another --name or --resume it")
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir, k = out / f"{model}-{stamp}", 1
        while run_dir.exists():
            run_dir, k = out / f"{model}-{stamp}-{k}", k + 1
    run_dir.mkdir(parents=True)
    return run_dir


def _edited_regions(rows) -> list:
    """Per train row, which regions were edited (`prepare.edited_regions`; None where the name does not say).
    A region loss with no fake to learn from is refused rather than trained on reals alone."""
    regions = [edited_regions(r.path, r.label) for r in rows]
    fakes = [bits for bits, r in zip(regions, rows, strict=True) if r.label != 0]
    unknown = sum(bits is None for bits in fakes)
    if fakes and unknown == len(fakes):
        raise ValueError(f"--region-loss needs the edited regions of the fakes, which CIPLAB file names carry "
                         f"(mid_103_0011.jpg: nose and mouth), but none of the {len(fakes)} train fakes has such a "
                         "name: drop --region-loss for this data set")
    if unknown:
        log.warning("--region-loss: %d of %d train fakes have no region code in their name; they train the "
                    "real/fake head only", unknown, len(fakes))
    return regions


def _check_any_size(model: str, image_size: int, crop: int) -> None:
    """Crops need a model that takes any input size: one whose weights do not depend on it."""
    full = {k: v.shape for k, v in build_model(model, image_size=image_size).state_dict().items()}
    try:
        cropped = {k: v.shape for k, v in build_model(model, image_size=crop).state_dict().items()}
    except ValueError:
        cropped = None
    if full != cropped:
        raise ValueError(f"{model} is built for one input size, so it cannot train on {crop} px crops and "
                         f"evaluate at {image_size}: use --train-crop with resnet18 or another torchvision net")
