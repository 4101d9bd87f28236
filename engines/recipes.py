"""Training-recipe pieces beyond the report's: learning-rate schedules with warm-up, weight EMA,
test-time augmentation, and the edited-region auxiliary loss (`RegionLoss`). Plain functions over
torch's own schedulers and `swa_utils.AveragedModel`.

Schedules (`--schedule`):
- constant: the report's (no change); with --warmup-epochs a linear ramp first.
- step: StepLR's decay by `gamma` every `step_size` epochs, after the warm-up.
- cosine: linear warm-up, then cosine decay to 0 at the last step (SGDR without restarts).
- onecycle: torch's OneCycleLR (warm-up share = warmup_epochs / epochs, 0.3 when 0; momentum cycled).
`constant` and `step` without warm-up step once per epoch (the report's runs); every other choice
steps once per batch, so short runs still get a smooth curve.
"""
from __future__ import annotations

import math

import torch
from realfake.pipelines.prepare import EDIT_REGIONS
from realfake.pipelines.pseudo_fakes import REGIONS
from torch.optim.swa_utils import AveragedModel

SCHEDULES = ("constant", "step", "cosine", "onecycle")
TTA_MODES = ("none", "flip", "crops")


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int, steps_per_epoch: int,
              step_size: int = 0, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if schedule not in SCHEDULES or schedule == "onecycle":
        raise ValueError(f"unknown schedule {schedule!r} for lr_factor: choose constant, step or cosine")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** (epoch // step_size) if step_size > 0 else 1.0
    # cosine: from 1 after the warm-up to 0 at the last step
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, schedule: str, *, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
                   step_size: int = 0, gamma: float = 0.1, lr: float | None = None):
    """(scheduler, per_batch): call scheduler.step() after every batch when per_batch, else after
    every epoch."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if warmup_epochs < 0:
        raise ValueError(f"--warmup-epochs {warmup_epochs} must be at least 0")
    if schedule == "step" and step_size <= 0:
        raise ValueError("--schedule step needs --step-size N (epochs between decays)")
    if schedule == "constant" and warmup_epochs == 0:  # the report's runs: one factor, stepped per epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant), False
    if schedule == "step" and warmup_epochs == 0:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), False
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if schedule == "onecycle":
        max_lr = lr if lr is not None else optimizer.param_groups[0]["lr"]
        pct = warmup_epochs / epochs if warmup_epochs > 0 else 0.3
        # Adadelta has neither momentum nor betas to cycle.
        cycle_momentum = any(k in optimizer.defaults for k in ("momentum", "betas")) and (
            optimizer.defaults.get("momentum", 1) != 0)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total, 2),
                                                   pct_start=min(max(pct, 0.01), 0.99),
                                                   cycle_momentum=cycle_momentum), True
    factor = _LrFactor(schedule, total, warmup, steps_per_epoch, step_size, gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


def _constant(_step: int) -> float:
    return 1.0


class _LrFactor:
    """A picklable lr_lambda (LambdaLR saves its state without it; the run's args rebuild it)."""

    def __init__(self, schedule, total_steps, warmup_steps, steps_per_epoch, step_size, gamma):
        self.kw = dict(schedule=schedule, total_steps=total_steps, warmup_steps=warmup_steps,
                       steps_per_epoch=steps_per_epoch, step_size=step_size, gamma=gamma)

    def __call__(self, step: int) -> float:
        return lr_factor(step, **self.kw)


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights and BatchNorm statistics.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's and timm's
    rule), so the average is not dominated by the random initial weights on short runs.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"--ema {decay} must be between 0 and 1 (e.g. 0.999), or 0 to turn it off")

    @torch.no_grad()
    def ema_update(ema_params, current_params, num_averaged):
        # num_averaged counts updates before this one (AveragedModel copies the weights on the first)
        d = torch.clamp((1.0 + num_averaged) / (10.0 + num_averaged), max=decay).to(torch.float32)
        if torch.is_floating_point(ema_params[0]):
            weight = (1.0 - d).to(ema_params[0].dtype)
            for p_ema, p in zip(ema_params, current_params, strict=True):
                p_ema.lerp_(p, weight)
        else:  # integer buffers such as BatchNorm's num_batches_tracked: follow the model
            for p_ema, p in zip(ema_params, current_params, strict=True):
                p_ema.copy_(p)

    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Test-time views of a batch (N, C, S, S) whose predictions are averaged.

    none: the image. flip: the image and its mirror. crops: the image and the four corner and centre
    crops of 7/8 of its side resized back to S (every model takes them), each also mirrored: 12 views.
    """
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images.flip(-1)]
    if mode == "crops":
        h, w = images.shape[-2:]
        ch, cw = max(1, round(h * 7 / 8)), max(1, round(w * 7 / 8))
        top, left = (h - ch) // 2, (w - cw) // 2
        boxes = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (top, left)]
        views = [images]
        for y, x in boxes:
            crop = images[..., y:y + ch, x:x + cw]
            views.append(torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False,
                                                         antialias=False))
        return views + [v.flip(-1) for v in views]
    raise ValueError(f"unknown test-time augmentation {mode!r}: choose one of {', '.join(TTA_MODES)}")


class RegionLoss(torch.nn.Module):
    """An auxiliary training loss that asks the model to point at what was edited.

    CIPLAB's fake file names say which regions the editor changed (left eye, right eye, nose, mouth;
    `pipelines.prepare.edited_regions`). A 1x1 convolution turns the model's last feature map (a grid
    over the face) into one score per cell; a region's score is the highest in the 3x3 cells around
    that region's prior position (`pipelines.pseudo_fakes.REGIONS`, measured on the CIPLAB portraits),
    and a binary cross-entropy asks it to be high where the region was edited and low elsewhere
    (every region of a real image is unedited). Files whose regions are unknown (NaN) add nothing.

    It only trains: the head is not part of the model, so checkpoints' "model", evaluation and engines
    are unchanged. It reads the feature map through a forward hook on `model.feature_map_layer()`, kept
    in training mode only (an EMA copy validating in eval mode leaves it alone).
    """

    def __init__(self, model: torch.nn.Module, weight: float):
        super().__init__()
        if not hasattr(model, "feature_map_layer"):
            raise ValueError(f"--region-loss needs a model with a feature map over the face (ghost_cnn); "
                             f"{type(model).__name__} has none")
        if weight <= 0:
            raise ValueError(f"--region-loss {weight} must be above 0 (0 = off)")
        self.weight = weight
        self.centres = [REGIONS[name][:2] for name in EDIT_REGIONS]  # (x, y) fractions of the image
        with torch.random.fork_rng(devices=[]):  # same seed, same dropout masks with or without the head
            self.head = torch.nn.Conv2d(model.map_channels, 1, 1)
        self._map = None
        model.feature_map_layer().register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if module.training:
            self._map = output

    def region_scores(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(N, len(EDIT_REGIONS)) logits: the head's highest cell near each region's prior position."""
        cells = self.head(feature_map)[:, 0]
        h, w = cells.shape[1:]
        scores = []
        for x, y in self.centres:
            row, col = min(int(y * h), h - 1), min(int(x * w), w - 1)
            scores.append(cells[:, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].amax((1, 2)))
        return torch.stack(scores, 1)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """weight x BCE of the last training forward's region scores against `regions` (N, R), NaN = unknown."""
        feature_map, self._map = self._map, None
        if feature_map is None:
            raise RuntimeError("RegionLoss is called after a training forward pass of its model, which it reads")
        if regions.shape != (feature_map.shape[0], len(self.centres)):
            raise ValueError(f"region targets shaped {tuple(regions.shape)} for a batch of {feature_map.shape[0]}: "
                             f"expected one row of {len(self.centres)} per image")
        scores = self.region_scores(feature_map).float()
        known = ~torch.isnan(regions)
        if not known.any():
            return scores.sum() * 0.0  # no known region in this batch: zero, still on the graph
        return self.weight * torch.nn.functional.binary_cross_entropy_with_logits(scores[known], regions[known])
