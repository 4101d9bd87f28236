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

from realfake.jobs.params import InputPath, OutputPath

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for a GPU but torch sees none: use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return device


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


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory of `realfake train`")
    return json.loads(path.read_text())


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
    image_size: int = 128,
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
) -> dict:
    """Train `model` on DATA_DIR's train split, validating on its valid split each epoch."""
    import torch
    from realfake.engines import trainer
    from realfake.engines.metrics import save_curves_png
    from realfake.models import build_model
    from realfake.pipelines.loaders import get_loader
    from realfake.pipelines.manifest import manifest_sha256, read_manifest
    from realfake.pipelines.spec import CLASS_NAMES, MEAN, STD, AugmentSpec

    data_dir = Path(data_dir).resolve()
    args = dict(model=model, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                weight_decay=weight_decay, step_size=step_size, gamma=gamma, dropout=dropout,
                image_size=image_size, augment=augment, compile=compile, amp=amp, channels_last=channels_last,
                patience=patience, seed=seed, loader=loader, num_workers=num_workers,
                weights=str(weights) if weights else None, freeze_backbone=freeze_backbone, device=device)
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = trainer.load_checkpoint(run_dir / "last.pt")
        saved = checkpoint["args"]
        # Resume continues the saved run exactly: only the epoch budget may grow.
        args = {**saved, "epochs": max(epochs, checkpoint["epoch"])}
        config = read_run_config(run_dir)
        if config["manifest_sha256"] != manifest_sha256(data_dir):
            raise ValueError(f"{data_dir} is not the data set {run_dir} was trained on (manifest differs): "
                             f"resume with --data {config['data_dir']}")
    if args["optimizer"] not in trainer.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {args['optimizer']!r}: choose one of {', '.join(trainer.OPTIMIZERS)}")
    if args["epochs"] < 1:
        raise ValueError("--epochs must be at least 1")

    train_rows = read_manifest(data_dir, "train")
    valid_rows = read_manifest(data_dir, "valid")
    if not train_rows or not valid_rows:
        raise ValueError(f"{data_dir} has {len(train_rows)} train and {len(valid_rows)} valid files: "
                         "prepare it with non-zero train and valid fractions")
    run_device = resolve_device(args["device"])
    device_obj = torch.device(run_device)
    use_compile = args["compile"] if args["compile"] is not None else run_device.startswith("cuda")
    if args["amp"] and not run_device.startswith("cuda"):
        log.warning("--amp on a CPU uses bf16 autocast, which is many times slower on CPUs without bf16 units")

    torch.manual_seed(args["seed"])
    net = build_model(args["model"], image_size=args["image_size"], dropout=args["dropout"],
                      weights=Path(args["weights"]) if args["weights"] else None,
                      freeze_backbone=args["freeze_backbone"]).to(device_obj)
    if args["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    opt = trainer.make_optimizer(args["optimizer"], [p for p in net.parameters() if p.requires_grad],
                                 lr=args["lr"], momentum=args["momentum"], weight_decay=args["weight_decay"])
    sched = trainer.make_scheduler(opt, step_size=args["step_size"], gamma=args["gamma"])
    scaler = torch.amp.GradScaler("cuda") if args["amp"] and run_device.startswith("cuda") else None

    augment_spec = AugmentSpec() if args["augment"] else None
    loader_kw = dict(backend=args["loader"], image_size=args["image_size"], batch_size=args["batch_size"],
                     num_workers=args["num_workers"], seed=args["seed"], device=run_device)
    train_loader = get_loader([r.path for r in train_rows], [r.label for r in train_rows], train=True,
                              augment=augment_spec, **loader_kw)
    valid_loader = get_loader([r.path for r in valid_rows], [r.label for r in valid_rows], train=False, **loader_kw)

    state = None
    if checkpoint is not None:
        state = trainer.restore(checkpoint, net, opt, sched, scaler)
        config["resumed"] = config.get("resumed", []) + [{"at_epoch": state.epoch,
                                                          "date": dt.datetime.now().isoformat(timespec="seconds")}]
        config["args"] = args
        print(f"Resuming {run_dir} after epoch {state.epoch} of {args['epochs']}", flush=True)
    else:
        run_dir = _new_run_dir(Path(out), name, args["model"])
        config = {
            "model": args["model"], "image_size": args["image_size"], "dropout": args["dropout"],
            "mean": list(MEAN), "std": list(STD), "class_names": list(CLASS_NAMES),
            "data_dir": str(data_dir), "manifest_sha256": manifest_sha256(data_dir),
            "n_train": len(train_rows), "n_valid": len(valid_rows),
            "augment_spec": augment_spec.to_dict() if augment_spec else None,
            "args": args, "created": dt.datetime.now().isoformat(timespec="seconds"),
        }
    config.update(loader=train_loader.backend, device=run_device, compiled=use_compile, versions=versions())
    (run_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    log.info("run %s: %s on %s, loader %s, compile %s", run_dir, args["model"], run_device,
             train_loader.backend, use_compile)

    compiled = torch.compile(net) if use_compile else None
    state = trainer.fit(net, train_loader=train_loader, valid_loader=valid_loader, optimizer=opt, scheduler=sched,
                        device=device_obj, run_dir=run_dir, epochs=args["epochs"], args=args, state=state,
                        compiled_model=compiled, patience=args["patience"], amp=args["amp"],
                        channels_last=args["channels_last"], scaler=scaler, progress=progress,
                        echo=lambda line: print(line, flush=True))
    save_curves_png(state.history, run_dir / "curves.png", title=f"{args['model']} @ {args['image_size']}px")
    last = state.history[-1]
    return {"run_dir": str(run_dir), "model": args["model"], "epochs_run": state.epoch,
            "best_epoch": state.best_epoch, "best_valid_loss": state.best_valid_loss,
            "valid_acc": last["valid_acc"], "train_acc": last["train_acc"], "loader": train_loader.backend,
            "device": run_device, "compiled": use_compile}
