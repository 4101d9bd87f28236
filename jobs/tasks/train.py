"""`realfake train`: train one model on a prepared data set into a run directory.

Like torchvision's references/classification/train.py `main`: load data, build model, optimizer and
scheduler, then `engines.trainer.fit`. The run directory holds everything needed to evaluate, compare,
resume or build an engine from it.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from pathlib import Path

from realfake.jobs.service.params import InputPath, OutputPath

log = logging.getLogger(__name__)

# Options added after the first runs were saved: a resumed older run gets these (the old behaviour).
RECIPE_DEFAULTS = dict(pseudo_fakes=0.0, real_only=False, schedule=None, warmup_epochs=0.0, label_smoothing=0.0,
                       ema=0.0, blur=True, train_crop=0, cache="none", ghost_shift=0, region_loss=0.0, width=None)
CACHE_CHOICES = ("none", "memory", "gpu")


def versions() -> dict:
    import torch
    import torchvision

    try:
        from importlib.metadata import version

        dali = version("nvidia-dali-cuda130")
    except Exception:
        dali = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "dali": dali}


def _new_run_dir(out: Path, name: str | None, model: str) -> Path:
    out = Path(out)
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


def _resolved_schedule(args: dict) -> str:
    """--schedule, defaulting as before it existed: StepLR when --step-size is given, else constant."""
    return args.get("schedule") or ("step" if args.get("step_size", 0) > 0 else "constant")


def _check_recipe(args: dict) -> None:
    """One-line errors for recipe options out of range, before any data is read."""
    from realfake.engines.recipes import SCHEDULES

    if not 0.0 <= args["pseudo_fakes"] <= 1.0:
        raise ValueError(f"--pseudo-fakes {args['pseudo_fakes']} must be a fraction between 0 and 1 (e.g. 0.5)")
    if args["real_only"] and not args["pseudo_fakes"]:
        raise ValueError("--real-only trains on real images alone: give --pseudo-fakes RATE to make the fakes")
    if args["schedule"] is not None and args["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {args['schedule']!r}: choose one of {', '.join(SCHEDULES)}")
    if not 0.0 <= args["label_smoothing"] < 1.0:
        raise ValueError(f"--label-smoothing {args['label_smoothing']} must be in [0, 1) (e.g. 0.1)")
    if args["ema"] and not 0.0 < args["ema"] < 1.0:
        raise ValueError(f"--ema {args['ema']} must be a decay between 0 and 1 (e.g. 0.999), or 0 for off")
    if args["cache"] not in CACHE_CHOICES:
        raise ValueError(f"unknown cache {args['cache']!r}: choose one of {', '.join(CACHE_CHOICES)}")
    if args["train_crop"] < 0 or args["train_crop"] > args["image_size"]:
        raise ValueError(f"--train-crop {args['train_crop']} must be between 1 and --image-size "
                         f"{args['image_size']} (0 = off)")


def _check_ghost_recipe(args: dict) -> None:
    """Options that act on pixels mean nothing for a model that reads JPEG ghost maps."""
    pixel_only = {"pseudo_fakes": "--pseudo-fakes", "real_only": "--real-only", "train_crop": "--train-crop"}
    given = [flag for key, flag in pixel_only.items() if args[key]]
    if args["cache"] != "none":
        given.append(f"--cache {args['cache']}")
    if given:
        raise ValueError(f"{args['model']} reads JPEG ghost maps, not pixels, so {', '.join(given)} do not apply "
                         "(its maps are always kept in memory and cached on disk): drop them")


def _edited_regions(rows) -> list:
    """Per train row, which regions were edited (`prepare.edited_regions`; None where the name does not say).
    A region loss with no fake to learn from is refused rather than trained on reals alone."""
    from realfake.pipelines.prepare import edited_regions

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


def _check_any_size(model: str, image_size: int, crop: int, build_model) -> None:
    """Crops need a model that takes any input size: one whose weights do not depend on it."""
    full = {k: v.shape for k, v in build_model(model, image_size=image_size).state_dict().items()}
    try:
        cropped = {k: v.shape for k, v in build_model(model, image_size=crop).state_dict().items()}
    except ValueError:
        cropped = None
    if full != cropped:
        raise ValueError(f"{model} is built for one input size, so it cannot train on {crop} px crops and "
                         f"evaluate at {image_size}: use --train-crop with resnet18 or another torchvision net")


def run_train(
    data_dir: InputPath,
    model: str = "simple_cnn",
    epochs: int = 10,
    batch_size: int = 32,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    step_size: int = 0,
    gamma: float = 0.1,
    dropout: float | None = None,
    image_size: int | None = None,
    augment: bool = True,
    compile: bool | None = None,
    amp: bool = False,
    channels_last: bool = False,
    patience: int | None = None,
    seed: int = 0,
    out: OutputPath = Path("runs"),
    name: str | None = None,
    resume: InputPath | None = None,
    loader: str = "auto",
    num_workers: int = 2,
    weights: InputPath | None = None,
    freeze_backbone: bool = False,
    device: str = "auto",
    progress: bool = True,
    pseudo_fakes: float = 0.0,
    real_only: bool = False,
    schedule: str | None = None,
    warmup_epochs: float = 0.0,
    label_smoothing: float = 0.0,
    ema: float = 0.0,
    blur: bool = True,
    train_crop: int = 0,
    cache: str = "none",
    ghost_shift: int = 0,
    region_loss: float = 0.0,
    width: int | None = None,
) -> dict:
    """Train `model` on DATA_DIR's train split, validating on its valid split each epoch.

    image_size None is the model's own default (the report's 128; 600 for ghost_cnn). ghost_cnn reads
    JPEG ghost maps, not pixels (`pipelines/jpeg_ghosts.py`): they are computed once per file into
    DATA_DIR/cache; `augment` flips them horizontally and `ghost_shift` moves them (nothing else applies).

    Recipe options (all off by default, so the default run is the report's):

    Args:
        pseudo_fakes: Fraction of each train batch's real images turned into extra self-blended fakes (label fake), made on the device after the loader.
        real_only: Train on the real images only; pseudo-fakes are the fake class (what `realfake pretrain` runs).
        schedule: LR schedule: constant, step, cosine or onecycle (default: step when step_size > 0, else constant).
        warmup_epochs: Linear LR warm-up length in epochs (fractions allowed).
        label_smoothing: Label smoothing of the training loss (validation loss stays plain cross-entropy).
        ema: Decay of an exponential moving average of the weights (e.g. 0.999); the EMA is validated and saved. 0 = off.
        blur: Keep the report's Gaussian blur in the augmentation (False = AugmentSpec(blur_p=0)).
        train_crop: Train on random crops of this size of the image_size images; validate and evaluate on the full image (any-size models only). 0 = off.
        cache: Decode the data once into a uint8 cache: none, memory (host) or gpu; augmentation then runs on that device.
        ghost_shift: ghost_cnn only: move each train batch's maps by up to this many cells (8 px) each way. 0 = off.
        region_loss: ghost_cnn only: weight of an auxiliary loss asking its feature map to point at the regions the fake file names say were edited (CIPLAB's ..._CCCC.jpg; `engines.recipes.RegionLoss`). 0 = off.
        width: ghost_cnn only: channels of its first blocks (later blocks 2x and 4x; default 32). None = the model's own.
    """
    import torch
    from realfake.engines import recipes, trainer
    from realfake.engines.devices import resolve_device
    from realfake.engines.metrics import save_curves_png
    from realfake.models import build_model, default_image_size, model_input
    from realfake.pipelines.loaders import get_loader, manifest_loader_options
    from realfake.pipelines.manifest import manifest_sha256, read_manifest
    from realfake.pipelines.pseudo_fakes import DEFAULT_SPEC, train_batch_transform
    from realfake.pipelines.spec import CLASS_NAMES, MEAN, STD, AugmentSpec

    data_dir = Path(data_dir).resolve()
    if image_size is None:
        image_size = default_image_size(model)
    args = dict(model=model, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                weight_decay=weight_decay, step_size=step_size, gamma=gamma, dropout=dropout,
                image_size=image_size, augment=augment, compile=compile, amp=amp, channels_last=channels_last,
                patience=patience, seed=seed, loader=loader, num_workers=num_workers,
                weights=str(weights) if weights else None, freeze_backbone=freeze_backbone, device=device,
                pseudo_fakes=pseudo_fakes, real_only=real_only, schedule=schedule, warmup_epochs=warmup_epochs,
                label_smoothing=label_smoothing, ema=ema, blur=blur, train_crop=train_crop, cache=cache,
                ghost_shift=ghost_shift, region_loss=region_loss, width=width)
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = trainer.load_checkpoint(run_dir / "last.pt")
        saved = checkpoint["args"]
        # Resume continues the saved run exactly: only the epoch budget may grow.
        args = {**RECIPE_DEFAULTS, **saved, "epochs": max(epochs, checkpoint["epoch"])}
        if _resolved_schedule(args) in ("cosine", "onecycle") and args["epochs"] != saved["epochs"]:
            raise ValueError(f"{run_dir} uses a {_resolved_schedule(args)} schedule fixed to {saved['epochs']} "
                             f"epochs: resume with --epochs {saved['epochs']}, or train a new run")
        config = trainer.read_run_config(run_dir)
        if config["manifest_sha256"] != manifest_sha256(data_dir):
            raise ValueError(f"{data_dir} is not the data set {run_dir} was trained on (manifest differs): "
                             f"resume with --data {config['data_dir']}")
    if args["optimizer"] not in trainer.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {args['optimizer']!r}: choose one of {', '.join(trainer.OPTIMIZERS)}")
    if args["epochs"] < 1:
        raise ValueError("--epochs must be at least 1")
    _check_recipe(args)
    input_kind = model_input(args["model"])
    if input_kind == "ghosts":
        _check_ghost_recipe(args)
    elif args["ghost_shift"]:
        raise ValueError(f"--ghost-shift moves JPEG ghost maps; {args['model']} reads pixels: use --model ghost_cnn")
    if args["ghost_shift"] < 0:
        raise ValueError(f"--ghost-shift {args['ghost_shift']} must be 0 (off) or a number of cells")
    if args["region_loss"] and input_kind != "ghosts":
        raise ValueError(f"--region-loss is measured and wired for ghost_cnn; {args['model']} reads pixels: "
                         "use --model ghost_cnn or drop it")
    if args["region_loss"] < 0:
        raise ValueError(f"--region-loss {args['region_loss']} must be 0 (off) or a positive weight (e.g. 1)")

    train_rows = read_manifest(data_dir, "train")
    if args["real_only"]:
        train_rows = [r for r in train_rows if r.label == CLASS_NAMES.index("real")]
    valid_rows = read_manifest(data_dir, "valid")
    if not train_rows or not valid_rows:
        raise ValueError(f"{data_dir} has {len(train_rows)} train and {len(valid_rows)} valid files: "
                         "prepare it with non-zero train and valid fractions")
    train_regions = _edited_regions(train_rows) if args["region_loss"] else None
    run_device = resolve_device(args["device"])
    device_obj = torch.device(run_device)
    use_compile = args["compile"] if args["compile"] is not None else run_device.startswith("cuda")
    if args["amp"] and not run_device.startswith("cuda"):
        log.warning("--amp on a CPU uses bf16 autocast, which is many times slower on CPUs without bf16 units")

    torch.manual_seed(args["seed"])
    net = build_model(args["model"], image_size=args["image_size"], dropout=args["dropout"], width=args["width"],
                      weights=Path(args["weights"]) if args["weights"] else None,
                      freeze_backbone=args["freeze_backbone"]).to(device_obj)
    if args["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    if args["train_crop"]:
        _check_any_size(args["model"], args["image_size"], args["train_crop"], build_model)
    # The EMA copy is made before the region loss hooks the model, so it never carries the hook.
    ema_model = recipes.make_ema(net, args["ema"]) if args["ema"] else None
    region_loss = recipes.RegionLoss(net, args["region_loss"]).to(device_obj) if args["region_loss"] else None
    trained = [p for p in net.parameters() if p.requires_grad] + (list(region_loss.parameters()) if region_loss else [])
    opt = trainer.make_optimizer(args["optimizer"], trained, lr=args["lr"], momentum=args["momentum"],
                                 weight_decay=args["weight_decay"])
    scaler = torch.amp.GradScaler("cuda") if args["amp"] and run_device.startswith("cuda") else None

    augment_spec = (AugmentSpec() if args["blur"] else AugmentSpec(blur_p=0.0)) if args["augment"] else None
    train_files, valid_files = [r.path for r in train_rows], [r.path for r in valid_rows]
    if input_kind == "ghosts":
        ghost_kw = dict(image_size=args["image_size"], batch_size=args["batch_size"], num_workers=args["num_workers"],
                        seed=args["seed"], progress=progress)
        train_loader = get_loader(train_files, [r.label for r in train_rows], train=True, augment=augment_spec,
                                  ghost_shift=args["ghost_shift"], regions=train_regions, **ghost_kw,
                                  **manifest_loader_options("ghosts", data_dir, args["image_size"], train_rows))
        valid_loader = get_loader(valid_files, [r.label for r in valid_rows], train=False, **ghost_kw,
                                  **manifest_loader_options("ghosts", data_dir, args["image_size"], valid_rows))
    elif args["cache"] == "none":
        loader_kw = dict(backend=args["loader"], image_size=args["image_size"], batch_size=args["batch_size"],
                         num_workers=args["num_workers"], seed=args["seed"], device=run_device)
        train_loader = get_loader(train_files, [r.label for r in train_rows], train=True, augment=augment_spec,
                                  **loader_kw)
        valid_loader = get_loader(valid_files, [r.label for r in valid_rows], train=False, **loader_kw)
    else:
        from realfake.pipelines.gpu_cache import make_cached_loader

        if args["cache"] == "gpu" and not run_device.startswith("cuda"):
            raise ValueError(f"--cache gpu needs a CUDA device but the run is on {run_device}: use --cache memory")
        # The report's blur was specified for the decoded (600 px) images: scale it to the cache's size.
        decoded = sorted(r.width for r in train_rows)[len(train_rows) // 2]
        cache_kw = dict(image_size=args["image_size"], batch_size=args["batch_size"], seed=args["seed"],
                        device=run_device if args["cache"] == "gpu" else "cpu", decode_backend=args["loader"],
                        num_workers=args["num_workers"], augment_scale=args["image_size"] / max(decoded, 1),
                        progress=progress)
        train_loader = make_cached_loader(train_files, [r.label for r in train_rows], train=True,
                                          augment=augment_spec, **cache_kw)
        valid_loader = make_cached_loader(valid_files, [r.label for r in valid_rows], train=False, **cache_kw)
    sched, per_batch = recipes.make_scheduler(
        opt, _resolved_schedule(args), epochs=args["epochs"], steps_per_epoch=len(train_loader),
        warmup_epochs=args["warmup_epochs"], step_size=args["step_size"], gamma=args["gamma"], lr=args["lr"])
    batch_transform = train_batch_transform(seed=args["seed"], pseudo_fakes=args["pseudo_fakes"],
                                            train_crop=args["train_crop"])

    state = None
    if checkpoint is not None:
        state = trainer.restore(checkpoint, net, opt, sched, scaler, ema=ema_model, aux_loss=region_loss)
        config["resumed"] = config.get("resumed", []) + [{"at_epoch": state.epoch,
                                                          "date": dt.datetime.now().isoformat(timespec="seconds")}]
        config["args"] = args
        print(f"Resuming {run_dir} after epoch {state.epoch} of {args['epochs']}", flush=True)
    else:
        run_dir = _new_run_dir(Path(out), name, args["model"])
        config = {
            "model": args["model"], "input": input_kind, "image_size": args["image_size"], "dropout": args["dropout"],
            "width": args["width"],
            "mean": list(MEAN), "std": list(STD), "class_names": list(CLASS_NAMES),
            "data_dir": str(data_dir), "manifest_sha256": manifest_sha256(data_dir),
            "n_train": len(train_rows), "n_valid": len(valid_rows),
            # Ghost maps are only flipped and shifted (see jpeg_ghosts.InMemoryGhostLoader).
            "augment_spec": ({"hflip_p": 0.5 if augment_spec else 0.0, "shift_cells": args["ghost_shift"]}
                             if input_kind == "ghosts" else augment_spec.to_dict() if augment_spec else None),
            "schedule": _resolved_schedule(args),
            "pseudo_fake_spec": DEFAULT_SPEC.to_dict() if args["pseudo_fakes"] else None,
            "args": args, "created": dt.datetime.now().isoformat(timespec="seconds"),
        }
    config.update(loader=train_loader.backend, device=run_device, compiled=use_compile, versions=versions())
    (run_dir / trainer.RUN_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    log.info("run %s: %s on %s, loader %s, compile %s", run_dir, args["model"], run_device,
             train_loader.backend, use_compile)

    compiled = torch.compile(net) if use_compile else None
    state = trainer.fit(net, train_loader=train_loader, valid_loader=valid_loader, optimizer=opt, scheduler=sched,
                        device=device_obj, run_dir=run_dir, epochs=args["epochs"], args=args, state=state,
                        compiled_model=compiled, patience=args["patience"], amp=args["amp"],
                        channels_last=args["channels_last"], scaler=scaler, progress=progress,
                        echo=lambda line: print(line, flush=True), per_batch_scheduler=per_batch,
                        label_smoothing=args["label_smoothing"], ema=ema_model, batch_transform=batch_transform,
                        aux_loss=region_loss)
    save_curves_png(state.history, run_dir / "curves.png", title=f"{args['model']} @ {args['image_size']}px")
    last = state.history[-1]
    return {"run_dir": str(run_dir), "model": args["model"], "epochs_run": state.epoch,
            "best_epoch": state.best_epoch, "best_valid_loss": state.best_valid_loss,
            "valid_acc": last["valid_acc"], "train_acc": last["train_acc"], "loader": train_loader.backend,
            "device": run_device, "compiled": use_compile}
