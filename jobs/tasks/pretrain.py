"""`realfake pretrain`: pretrain a backbone on pseudo-fakes alone, from the real training images only.

The task is real vs self-blended pseudo-fake (see `pipelines/pseudo_fakes.py`), so no labelled fake is
seen: the network learns blending boundaries and colour/sharpness steps before it meets an expert
retouch. It is a training run like any other (`run_train` with `real_only=True`), kept in its own run
directory; its best weights are then written as a plain weights file that `realfake train --weights`
(and `build_model(..., weights=PATH)`) loads. The run is also evaluated on the valid split, real
fakes included, which tells how far pseudo-fakes alone carry ("zero-shot" AUC).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from realfake.jobs.service.params import InputPath, OutputPath
from realfake.jobs.tasks.evaluate import run_evaluate
from realfake.jobs.tasks.train import run_train
from realfake.jobs.tasks.train_config import PretrainConfig


def default_run_dir(out: Path) -> Path:
    """Where the pretraining run of weights file OUT lives: beside it, OUT's name + ".run"."""
    out = Path(out)
    return out.with_name(out.name + ".run")


def run_pretrain(data_dir: InputPath, out: OutputPath, run_dir: OutputPath | None = None, progress: bool = True,
                 **options) -> dict:
    """Pretrain a model on real images vs their pseudo-fakes and save its weights to OUT.

    Args:
        data_dir: Prepared data directory (`realfake data prepare`); only its real train images are used.
        out: Weights file to write (a dict with the state dict under "model"), loadable by `realfake train --weights`.
        run_dir: Run directory of the pretraining (default: OUT + ".run" beside it).
        progress: Show progress bars.

    The options are the fields of `PretrainConfig` (`realfake pretrain --help`); --pseudo-fakes is the
    number of pseudo-fakes per real image of a batch (1.0 = one each: a balanced batch).
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} already exists: choose another --out or delete it")
    if out.suffix not in (".pt", ".pth"):
        raise ValueError(f"--out {out} should name a weights file ending in .pt or .pth")
    config = dataclasses.asdict(PretrainConfig(**options))
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    summary = run_train(data_dir, out=run_dir.parent, name=run_dir.name, progress=progress, real_only=True, **config)
    # How well do pseudo-fakes alone separate the real retouches of the valid split?
    zero_shot = run_evaluate(summary["run_dir"], split="valid", loader=config["loader"],
                             num_workers=config["num_workers"], device=config["device"], progress=progress)
    best = torch.load(Path(summary["run_dir"]) / "best.pt", map_location="cpu", weights_only=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"model": best["model"], "args": best["args"], "pretrain_run": summary["run_dir"],
                "epoch": best["epoch"], "zero_shot_valid_auc": zero_shot["roc_auc"]}, tmp)
    tmp.replace(out)
    result = {"weights": str(out), "run_dir": summary["run_dir"], "model": config["model"],
              "best_epoch": summary["best_epoch"], "zero_shot_valid_auc": zero_shot["roc_auc"],
              "zero_shot_valid_accuracy": zero_shot["accuracy"]}
    (Path(summary["run_dir"]) / "pretrain.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


run_pretrain.options = PretrainConfig
