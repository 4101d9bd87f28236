"""Evidence heat maps: where an engine's model found the edit, and how well that agrees with the edits
CIPLAB's file names record.

    explainer = load_explainer("engines_out/ghosts")           # the eager model behind an engine
    for item in explainer.explain(batch.images):                # one Evidence per image
        ...
    render(item, photo, content_box, "out/easy_001_1100.png")   # photo + heat map + colour bar
    write_evidence_json(item, ...)                              # the per-cell values, machine-readable

Two methods, by what the model reads:

- ghost_cnn ("cam"): a class activation map of its last feature map (`feature_map_layer()`, the grid
  before the global max-pool): per cell, the linear head's fake-minus-real weights dotted with the
  cell's features, i.e. the fake-minus-real logit that cell alone would give (the head's bias left
  out). Each feature cell covers stride x stride JPEG blocks (8x8 at 600 px), so the map is laid on the
  JPEG block grid of the input (S/8 cells a side); blocks the last feature map does not reach (the
  poolings floor odd sides: the bottom and right 24 px at 600 px) are NaN. Where the source run was
  trained with `--region-loss`, the region head (`recipes.RegionLoss`, kept in the run's last.pt
  under "aux_loss") adds one probability per edited region.
- pixel models ("grad-cam"): Grad-CAM (Selvaraju et al.) of the fake-minus-real logit on the last
  convolution stage, computed by pytorch-grad-cam (PyPI `grad-cam`) and upsampled by it to the input
  pixels, each map scaled to [0, 1].

Ensembles average their members' maps; an engine built with `--tta flip` averages the map of each image
with the map of its mirror image flipped back (on the block grid, so a mirrored view's cells land
where they lie in the image), as its p_fake averages the two views.

Which weights: an engine directory records its `architecture`, `image_size`, `width`, `dropout`,
`num_classes`, `members` and `tta`, which rebuild the eager module (`inference.model_from_meta`). An
eager or compile engine keeps that module's state dict as its artifact (`model.pt`, checked against its
sha256): the explanation uses exactly what the engine scores with, even when the run directory is gone.
An aot or tensorrt artifact is compiled code with no eager module in it: its weights are rebuilt from
`source.run_dir` (`source.ensemble` for ensembles) and `source.checkpoint`, accepted only when the
checkpoint's sha256 matches `source.checkpoint_sha256`; without the run directory such an engine
cannot be explained (EngineError saying so). The region head exists only in the run: it is used when
the run's last.pt holds one trained to the engine's weights (the same file as the engine's checkpoint,
or a best.pt of the same epoch), and left out with a warning otherwise.

Geometry: every map lies on a square grid over the model's input canvas of G pixels a side (G = S for
pixel models, 8 * (S // 8) for ghost maps); `content_box` is where the image's own pixels lie on it
(the whole canvas for pixel models, which squash the image to S x S; a ghost-map model sees a centre
crop, padded when the image is smaller). The face-region priors (`pipelines.pseudo_fakes.REGIONS`,
centre and half-size as fractions of the image) become boxes inside the content box.

The pointing game (`pointing_game`) scores maps against CIPLAB's edit codes (`{easy,mid,hard}_NNN_CCCC.jpg`:
left eye, right eye, nose, mouth): for every fake with a code, the credit of its hottest region (by the
highest and by the mean evidence inside each region's box; a tie shares the credit) for being an
edited one, next to the chance of a region drawn at random (coded / 4 per image); the mean of the
per-image min-max-normalized map inside coded against uncoded regions; for every image the spread of
its map (normalized entropy, share of the mass in the top 10% of the cells).
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

METHODS = {"ghosts": "cam", "pixels": "grad-cam"}
UNITS = {"cam": "fake-minus-real logit of the cell (class activation map)",
         "grad-cam": "Grad-CAM of the fake-minus-real logit, scaled to [0, 1] per image"}
# The module whose output Grad-CAM reads, per pixel architecture: the last convolution, or for the
# torchvision nets their last convolution stage (a residual block's output after its addition).
CAM_LAYERS = {"simple_cnn": "conv2", "deep_cnn": "conv4", "resnet18": "layer4", "efficientnet_b0": "features",
              "mobilenet_v3_small": "features"}
VIEWS = {"none": ("image",), "flip": ("image", "mirror")}
EVIDENCE_FORMAT = 1
TOP_SHARE = 0.10  # spread: share of the map's mass in this fraction of its hottest cells
GROUPS = ("easy", "mid", "hard")


@dataclass
class Evidence:
    """One image's evidence. `values` (rows, cols) lies on a grid of `cell_px`-pixel cells over the model's
    input canvas (rows * cell_px pixels a side); NaN where no view of the model reaches."""

    p_fake: float
    values: np.ndarray
    cell_px: int
    region_head: dict[str, float] | None = None  # probability the region head gives each edited region


class FakeMinusReal:
    """A pytorch-grad-cam target: the fake logit minus the real one (what moves p_fake under softmax)."""

    def __init__(self, fake: int, real: int):
        self.fake, self.real = fake, real

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.fake] - output[..., self.real]


# --------------------------------------------------------------------------------------------- methods

def feature_stride(model: nn.Module) -> int:
    """Input cells per cell of ghost_cnn's feature map: the product of the poolings before it."""
    stride, layer = 1, model.feature_map_layer()
    for module in model.features:
        if module is layer:
            return stride
        if isinstance(module, nn.MaxPool2d):
            stride *= module.stride if isinstance(module.stride, int) else module.stride[0]
    raise ValueError(f"{type(model).__name__}.feature_map_layer() is not one of its features")


@torch.no_grad()
def class_activation_map(model: nn.Module, maps: torch.Tensor, fake: int = 1, real: int = 0,
                         region_head=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits (N, classes), CAM (N, h, w) on the feature grid, region logits (N, 4) or None) of a
    ghost_cnn on maps (N, 33, S/8, S/8). CAM cell = (w_fake - w_real) . features[:, cell].
    `region_head`: a `recipes.RegionLoss` with the run's trained head."""
    captured = {}
    handle = model.feature_map_layer().register_forward_hook(lambda module, inputs, output: captured.update(map=output))
    try:
        logits = model(maps)
    finally:
        handle.remove()
    features = captured["map"].float()
    weights = (model.fc.weight[fake] - model.fc.weight[real]).float()
    cam = torch.einsum("c,nchw->nhw", weights, features)
    regions = region_head.region_scores(features).float() if region_head is not None else None
    return logits.float(), cam, regions


def block_grid(cam: np.ndarray, stride: int, cells: int, mirrored: bool = False) -> np.ndarray:
    """CAMs (N, h, w) on the feature grid laid on the (N, cells, cells) input block grid: each feature
    cell repeated over the stride x stride blocks it pools, NaN where no feature cell reaches. A map of
    the mirrored input is flipped back, so each value lands on the blocks it came from."""
    n, h, w = cam.shape
    grid = np.full((n, cells, cells), np.nan, dtype=np.float32)
    spread = np.repeat(np.repeat(cam, stride, axis=1), stride, axis=2)[:, :cells, :cells]
    grid[:, :spread.shape[1], :spread.shape[2]] = spread
    return grid[:, :, ::-1].copy() if mirrored else grid


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, fake: int = 1,
             real: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """(Grad-CAM (N, H, W) in [0, 1] at the input's pixels, logits (N, classes)) of the fake-minus-real
    logit at `layer`, by pytorch-grad-cam."""
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        raise ValueError("Grad-CAM for pixel models needs pytorch-grad-cam: pip install 'realfake[explain]' "
                         "(PyPI grad-cam)") from None
    targets = [FakeMinusReal(fake, real)] * images.shape[0]
    with GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=images, targets=targets)
        logits = cam.outputs.detach().float()
    return np.asarray(maps, dtype=np.float32), logits


def cam_layer(model: nn.Module, architecture: str) -> nn.Module:
    """The module Grad-CAM reads for a pixel model (CAM_LAYERS; else its last Conv2d)."""
    name = CAM_LAYERS.get(architecture)
    if name is not None:
        return model.get_submodule(name)
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{architecture} has no convolution for Grad-CAM to read")
    return convolutions[-1]


# ------------------------------------------------------------------------------------ the explainer

def _members(module: nn.Module) -> list[nn.Module]:
    from realfake.models import Ensemble, MirrorAverage

    if isinstance(module, MirrorAverage):
        module = module.model
    return list(module.members) if isinstance(module, Ensemble) else [module]


def _source_runs(meta: Mapping[str, Any]) -> list[tuple[Path, str | None]]:
    """(run_dir, recorded checkpoint sha256) of each member run an engine was built from."""
    source = meta.get("source") or {}
    if source.get("ensemble"):
        return [(Path(m["run_dir"]), m.get("checkpoint_sha256")) for m in source["ensemble"]]
    if source.get("run_dir"):
        return [(Path(source["run_dir"]), source.get("checkpoint_sha256"))]
    return []


def _weights_from_runs(engine_dir: Path, meta: Mapping[str, Any]) -> list[nn.Module]:
    from realfake.engines.inference import EngineError, sha256_file
    from realfake.engines.trainer import load_run

    runs = _source_runs(meta)
    checkpoint = (meta.get("source") or {}).get("checkpoint") or "best"
    why = (f"{engine_dir} is a {meta['backend']} engine: its artifact is compiled code, so its eager weights "
           "come from the run it was built from")
    fix = "explain an eager engine of the same run (`realfake engine build RUN --backend eager`)"
    if not runs:
        raise EngineError(f"{why}, and its engine.json names none (built from an in-memory model): {fix}")
    members = []
    for run_dir, sha in runs:
        path = run_dir / f"{checkpoint}.pt"
        if not path.is_file():
            raise EngineError(f"{why}, {path}, which is gone: keep the run directory, or {fix} while you have it")
        if sha is not None and sha256_file(path) != sha:
            raise EngineError(f"{why}, but {path} changed since the build (its sha256 differs from engine.json): "
                              f"rebuild the engine from the run, or {fix}")
        members.append(load_run(run_dir, checkpoint)[0])
    if len(members) != int(meta.get("members", 1)):
        raise EngineError(f"{engine_dir}/engine.json names {len(members)} source runs for {meta.get('members')} "
                          f"members: rebuild it with `realfake engine build`")
    return members


def _region_heads(meta: Mapping[str, Any], members: Sequence[nn.Module]) -> list | None:
    """Each member's trained region head (a `recipes.RegionLoss`), when every member run kept one trained
    to the engine's weights; else None, with a warning saying why (no warning for runs without one)."""
    from realfake.engines.inference import sha256_file
    from realfake.engines.recipes import RegionLoss
    from realfake.engines.trainer import load_checkpoint

    runs = _source_runs(meta)
    checkpoint = (meta.get("source") or {}).get("checkpoint") or "best"
    if not runs or len(runs) != len(members):
        return None
    heads = []
    for (run_dir, sha), member in zip(runs, members, strict=True):
        last = run_dir / "last.pt"
        if not last.is_file():
            log.warning("region head left out: %s is gone (it holds the training-only region head)", last)
            return None
        state = load_checkpoint(last)
        if state.get("aux_loss") is None:
            return None  # trained without --region-loss
        weights_file = run_dir / f"{checkpoint}.pt"
        if sha is not None and (not weights_file.is_file() or sha256_file(weights_file) != sha):
            log.warning("region head left out: %s changed since the engine was built", weights_file)
            return None
        if checkpoint != "last":
            epoch = load_checkpoint(weights_file).get("epoch")
            if epoch != state.get("epoch"):
                log.warning("region head left out: it was trained to epoch %s of %s, the engine holds the %s "
                            "checkpoint of epoch %s (build the engine with --checkpoint last to see it)",
                            state.get("epoch"), run_dir, checkpoint, epoch)
                return None
        head = RegionLoss(member, 1.0)
        head.load_state_dict(state["aux_loss"])
        heads.append(head.eval())
    return heads


class Explainer:
    """The eager model behind an engine, ready to explain batches of its input (see the module docstring).

    Attributes: meta (engine.json), engine_id, architecture, input ("pixels" or "ghosts"), method
    ("cam" or "grad-cam"), image_size, threshold, views, members (eager modules), region_heads (or None).
    """

    def __init__(self, engine_dir: Path, meta: dict, members: list[nn.Module], region_heads: list | None,
                 device: str = "cpu"):
        from realfake.models import model_input

        self.engine_dir, self.meta = Path(engine_dir), meta
        self.engine_id, self.architecture = meta["engine_id"], meta["architecture"]
        self.input = model_input(self.architecture)
        self.method = METHODS[self.input]
        self.image_size, self.threshold = int(meta["image_size"]), float(meta["threshold"])
        self.views = VIEWS[meta.get("tta", "none")]
        self.device = torch.device(device)
        self.members = [m.to(self.device, memory_format=torch.contiguous_format).eval() for m in members]
        self.region_heads = [h.to(self.device) for h in region_heads] if region_heads else None
        classes = list(meta["class_names"])
        self.fake, self.real = classes.index("fake"), classes.index("real")

    @property
    def canvas_px(self) -> int:
        if self.input == "ghosts":
            from realfake.pipelines.jpeg_ghosts import BLOCK, grid_cells

            return grid_cells(self.image_size) * BLOCK
        return self.image_size

    @property
    def cell_px(self) -> int:
        if self.input == "ghosts":
            from realfake.pipelines.jpeg_ghosts import BLOCK

            return BLOCK
        return 1

    def explain(self, images: torch.Tensor) -> list[Evidence]:
        """Evidence for a batch of the engine's input: normalized images (N, 3, S, S) or ghost maps
        (N, 33, S/8, S/8)."""
        images = images.to(self.device, torch.float32)
        maps, probs, heads = [], [], []
        for view in self.views:
            x = images.flip(-1) if view == "mirror" else images
            for k, member in enumerate(self.members):
                if self.input == "ghosts":
                    head = self.region_heads[k] if self.region_heads else None
                    logits, cam, regions = class_activation_map(member, x, self.fake, self.real, head)
                    maps.append(block_grid(cam.cpu().numpy(), feature_stride(member), images.shape[-1],
                                           mirrored=view == "mirror"))
                    if regions is not None:
                        # a mirrored face's left eye is on the right: swap the eyes back
                        p = torch.sigmoid(regions).cpu().numpy()
                        heads.append(p[:, [1, 0, 2, 3]] if view == "mirror" else p)
                else:
                    cam, logits = grad_cam(member, cam_layer(member, self.architecture), x, self.fake, self.real)
                    maps.append(cam[:, :, ::-1] if view == "mirror" else cam)
                probs.append(torch.softmax(logits, 1)[:, self.fake].cpu().numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
            values = np.nanmean(np.stack(maps), axis=0)
        p_fake = np.mean(np.stack(probs), axis=0)
        head_p = np.mean(np.stack(heads), axis=0) if heads else None
        from realfake.pipelines.prepare import EDIT_REGIONS

        return [Evidence(p_fake=float(p_fake[i]), values=values[i].astype(np.float32), cell_px=self.cell_px,
                         region_head=None if head_p is None else dict(zip(EDIT_REGIONS, map(float, head_p[i]),
                                                                          strict=True)))
                for i in range(images.shape[0])]

    def loader(self, files: Sequence[str], labels: Sequence[int] | None = None, *, batch_size: int = 16,
               num_workers: int = 2, cache_paths: Sequence[Path] | None = None):
        """An eval loader of the engine's input over `files`, in order; failures come as Batch.errors."""
        from realfake.pipelines.loaders import get_loader

        extra = {"input": "ghosts", "cache_paths": cache_paths} if self.input == "ghosts" else {}
        return get_loader(list(files), labels, train=False, backend="torch", image_size=self.image_size,
                          batch_size=batch_size, num_workers=num_workers, **extra)

    def photo(self, path: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """(uint8 (H, W, 3) picture of what the model saw, to draw over the canvas; content box on the
        canvas). Raises InvalidImageError."""
        if self.input == "ghosts":
            from realfake.pipelines.jpeg_ghosts import ghost_view

            return ghost_view(path, self.image_size)
        from PIL import Image
        from realfake.pipelines.images import load_rgb

        side = max(self.image_size, 320)  # drawn finer than a small model's input; the same squash
        picture = np.asarray(load_rgb(path).resize((side, side), Image.BILINEAR))
        return picture, (0, 0, self.image_size, self.image_size)


def load_explainer(engine_dir: str | Path, device: str = "cpu") -> Explainer:
    """The Explainer of engine directory `engine_dir` (checked like `load_engine`; see the module
    docstring for where its weights come from). Raises EngineError with the fix."""
    from realfake.engines.backends import eager
    from realfake.engines.inference import read_engine_meta

    engine_dir = Path(engine_dir)
    meta = read_engine_meta(engine_dir)
    if meta["backend"] in ("eager", "compile"):
        members = _members(eager.load_module(engine_dir, meta, "cpu"))
        origin = f"its own {meta['artifact']['file']}"
    else:
        members = _weights_from_runs(engine_dir, meta)
        origin = "its source run's checkpoint"
    heads = _region_heads(meta, members) if meta["architecture"] == "ghost_cnn" else None
    log.info("explaining engine %s (%s, %s): %d member(s) from %s, views %s, region head %s",
             meta["engine_id"], meta["architecture"], meta["backend"], len(members), origin,
             "+".join(VIEWS[meta.get("tta", "none")]), "yes" if heads else "no")
    return Explainer(engine_dir, meta, members, heads, device)


# ------------------------------------------------------------------------------------ regions, scores

def region_boxes(content_box: Sequence[float]) -> dict[str, tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) on the canvas of each EDIT_REGIONS prior, inside the image's content box."""
    from realfake.pipelines.prepare import EDIT_REGIONS
    from realfake.pipelines.pseudo_fakes import REGIONS

    x0, y0, x1, y1 = (float(v) for v in content_box)
    w, h = x1 - x0, y1 - y0
    boxes = {}
    for name in EDIT_REGIONS:
        cx, cy, rx, ry = REGIONS[name]
        boxes[name] = (x0 + (cx - rx) * w, y0 + (cy - ry) * h, x0 + (cx + rx) * w, y0 + (cy + ry) * h)
    return boxes


def _overlap(cells: int, cell_px: float, low: float, high: float) -> np.ndarray:
    edges = np.arange(cells + 1, dtype=np.float64) * cell_px
    return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)


def region_evidence(values: np.ndarray, cell_px: float, box: Sequence[float]) -> tuple[float, float]:
    """(highest, area-weighted mean) evidence of the cells a box overlaps (NaN cells left out; NaN when
    the box covers none)."""
    x0, y0, x1, y1 = box
    weights = np.outer(_overlap(values.shape[0], cell_px, y0, y1), _overlap(values.shape[1], cell_px, x0, x1))
    inside = (weights > 0) & ~np.isnan(values)
    if not inside.any():
        return math.nan, math.nan
    return float(values[inside].max()), float((values[inside] * weights[inside]).sum() / weights[inside].sum())


def normalized(values: np.ndarray) -> np.ndarray:
    """The map min-max scaled to [0, 1] over its cells (NaN kept; a flat map is all 0)."""
    low, high = np.nanmin(values), np.nanmax(values)
    if not np.isfinite(low) or high <= low:
        return np.where(np.isnan(values), np.nan, 0.0)
    return (values - low) / (high - low)


def spread(values: np.ndarray, top: float = TOP_SHARE) -> tuple[float, float]:
    """(normalized entropy in [0, 1], share of the mass in the hottest `top` of the cells) of the
    min-max-normalized map as a distribution over its cells. 1 and ~`top`: spread evenly; 0 and 1: one cell."""
    mass = normalized(values)
    mass = mass[~np.isnan(mass)].ravel()
    total = mass.sum()
    if mass.size < 2 or total <= 0:
        return math.nan, math.nan
    p = mass / total
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / math.log(mass.size))
    k = max(1, math.ceil(top * mass.size))
    return entropy, float(np.sort(mass)[::-1][:k].sum() / total)


def hottest(scores: Sequence[float]) -> list[int]:
    """Indices of the highest scores (all of them on a tie); NaN counts as lowest."""
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).all():
        return list(range(len(s)))
    s = np.where(np.isnan(s), -np.inf, s)
    return [int(i) for i in np.flatnonzero(s == s.max())]


def hit_credit(scores: Sequence[float], code: Sequence[int]) -> float:
    """Share of the hottest regions (a tie shares the credit, as a random pick among them would) that
    the code says were edited."""
    top = hottest(scores)
    return sum(int(code[i]) for i in top) / len(top)


def image_record(evidence: Evidence, content_box: Sequence[float], *, path: str, label: int | None,
                 group: str | None, threshold: float) -> dict:
    """What the pointing game needs of one image (and what the evidence file lists per region)."""
    from realfake.pipelines.prepare import EDIT_REGIONS, edited_regions

    boxes = region_boxes(content_box)
    scaled = normalized(evidence.values)
    regions = {}
    for name in EDIT_REGIONS:
        top, mean = region_evidence(evidence.values, evidence.cell_px, boxes[name])
        regions[name] = {"box_px": [round(v, 2) for v in boxes[name]], "max": top, "mean": mean,
                         "mean_normalized": region_evidence(scaled, evidence.cell_px, boxes[name])[1]}
    code = edited_regions(path, 1 if label is None else label)  # unlabelled: the name's code, if any
    entropy, top_share = spread(evidence.values)
    return {"path": path, "label": label, "group": group, "code": None if code is None else list(code),
            "p_fake": evidence.p_fake, "called_fake": evidence.p_fake >= threshold, "regions": regions,
            "hottest_by_max": [EDIT_REGIONS[i] for i in hottest([regions[n]["max"] for n in EDIT_REGIONS])],
            "hottest_by_mean": [EDIT_REGIONS[i] for i in hottest([regions[n]["mean"] for n in EDIT_REGIONS])],
            "region_head": evidence.region_head, "entropy": entropy, "top_share": top_share}


# ------------------------------------------------------------------------------------ the pointing game

def _mean_ci(values: Sequence[float]) -> dict:
    """Mean with a normal-approximation 95% interval (NaN where fewer than two values)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "low": None, "high": None, "n": int(x.size)}
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(x.size)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(x.size)}


def _mean(values: Iterable[float]) -> float | None:
    x = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(x)) if x else None


def pointing_game(records: Sequence[Mapping[str, Any]]) -> dict:
    """The pointing-game table of image records (`image_record`) of one engine.

    Returns {"fakes": {subset: {group: row}}, "reals": row, "fakes_spread": row} for subsets "coded"
    (every fake whose name carries a code with at least one edited region) and "informative" (1 to 3 of
    the 4 regions edited: a fake with all four coded is a hit whatever the map); groups easy, mid,
    hard and all. A row holds n, the hit rates by the highest and by the mean evidence of a region,
    chance (coded / 4), hit - chance with a 95% interval, the hit rate of the region head (where there
    is one), the hit rate among the fakes the engine called fake, the best single region always named
    (in hindsight, on these images), and the mean normalized evidence inside coded and uncoded regions.
    """
    from realfake.pipelines.prepare import EDIT_REGIONS

    fakes = [r for r in records if r["label"] == 1 and r["code"] is not None and sum(r["code"]) > 0]
    uncoded_fakes = sum(1 for r in records if r["label"] == 1 and (r["code"] is None or sum(r["code"]) == 0))
    reals = [r for r in records if r["label"] == 0]

    def row(items: Sequence[Mapping[str, Any]]) -> dict:
        if not items:
            return {"n": 0}
        by_max = [hit_credit([r["regions"][n]["max"] for n in EDIT_REGIONS], r["code"]) for r in items]
        by_mean = [hit_credit([r["regions"][n]["mean"] for n in EDIT_REGIONS], r["code"]) for r in items]
        chance = [sum(r["code"]) / len(EDIT_REGIONS) for r in items]
        called = [h for h, r in zip(by_max, items, strict=True) if r["called_fake"]]
        out = {"n": len(items), "hit_max": float(np.mean(by_max)), "hit_mean": float(np.mean(by_mean)),
               "chance": float(np.mean(chance)),
               "hit_max_minus_chance": _mean_ci([h - c for h, c in zip(by_max, chance, strict=True)]),
               "n_called_fake": len(called), "hit_max_called_fake": _mean(called),
               "best_fixed_region": max(((name, float(np.mean([r["code"][i] for r in items])))
                                         for i, name in enumerate(EDIT_REGIONS)), key=lambda t: t[1])}
        with_head = [r for r in items if r.get("region_head")]
        if with_head:
            out["hit_region_head"] = float(np.mean([hit_credit([r["region_head"][n] for n in EDIT_REGIONS], r["code"])
                                                    for r in with_head]))
            out["n_region_head"] = len(with_head)
        inside, outside = [], []
        for r in items:
            coded = [r["regions"][n]["mean_normalized"] for i, n in enumerate(EDIT_REGIONS) if r["code"][i]]
            other = [r["regions"][n]["mean_normalized"] for i, n in enumerate(EDIT_REGIONS) if not r["code"][i]]
            if other:
                inside.append(_mean(coded))
                outside.append(_mean(other))
        pairs = [(a, b) for a, b in zip(inside, outside, strict=True) if a is not None and b is not None]
        out["evidence_coded"] = _mean(a for a, _ in pairs)
        out["evidence_uncoded"] = _mean(b for _, b in pairs)
        out["evidence_coded_minus_uncoded"] = _mean_ci([a - b for a, b in pairs])
        return out

    table: dict[str, Any] = {"fakes": {}, "fakes_without_code": uncoded_fakes}
    for subset, keep in (("coded", lambda r: True), ("informative", lambda r: sum(r["code"]) < len(EDIT_REGIONS))):
        chosen = [r for r in fakes if keep(r)]
        table["fakes"][subset] = {group: row([r for r in chosen if r["group"] == group]) for group in GROUPS}
        table["fakes"][subset]["all"] = row(chosen)

    def spread_row(items):
        return {"n": len(items), "entropy": _mean(r["entropy"] for r in items),
                "top_share": _mean(r["top_share"] for r in items)}

    table["reals"] = spread_row(reals)
    table["fakes_spread"] = spread_row([r for r in records if r["label"] == 1])
    return table


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _interval(ci: Mapping[str, Any], scale: float = 100.0, unit: str = " pp", digits: int = 1) -> str:
    if ci.get("mean") is None:
        return "–"
    if ci.get("low") is None:
        return f"{scale * ci['mean']:+.{digits}f}{unit}"
    return (f"{scale * ci['mean']:+.{digits}f}{unit} [{scale * ci['low']:+.{digits}f}, "
            f"{scale * ci['high']:+.{digits}f}]")


def format_pointing_md(results: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """Markdown of `pointing_game` tables, one block of rows per engine (results: {"name", "method",
    "table"}) plus the chance and best-fixed-region rows."""
    lines = [f"# {title}", ""]
    for subset, what in (("coded", "every fake whose name codes at least one edited region"),
                         ("informative", "fakes with 1-3 of the 4 regions coded (all four coded is a hit whatever "
                                         "the map)")):
        lines += [f"## Pointing game: {what}", "",
                  "Hit: the hottest of the four region boxes (by its highest / mean evidence) is an edited one. "
                  "Chance: a region drawn at random (coded / 4 per image).", "",
                  "| evidence | group | n | hit (max) | hit (mean) | hit - chance (max), 95% CI | region head | "
                  "called fake: n, hit (max) |",
                  "|---|---|---:|---:|---:|---|---:|---|"]
        first = next(iter(results), None)
        for result in results:
            for group, r in result["table"]["fakes"][subset].items():
                if not r.get("n"):
                    continue
                head = _pct(r.get("hit_region_head")) if "hit_region_head" in r else "–"
                lines.append(f"| {result['name']} ({result['method']}) | {group} | {r['n']} | {_pct(r['hit_max'])} | "
                             f"{_pct(r['hit_mean'])} | {_interval(r['hit_max_minus_chance'])} | {head} | "
                             f"{r['n_called_fake']}, {_pct(r['hit_max_called_fake'])} |")
        if first is not None:
            for group, r in first["table"]["fakes"][subset].items():
                if r.get("n"):
                    lines.append(f"| chance (random region) | {group} | {r['n']} | {_pct(r['chance'])} | "
                                 f"{_pct(r['chance'])} | – | – | – |")
            for group, r in first["table"]["fakes"][subset].items():
                if r.get("n"):
                    name, rate = r["best_fixed_region"]
                    lines.append(f"| always {name} (best single region, in hindsight) | {group} | {r['n']} | "
                                 f"{_pct(rate)} | {_pct(rate)} | – | – | – |")
        lines.append("")
    lines += ["## Evidence inside the edited regions against the others",
              "", "Per image, the map min-max scaled to [0, 1]; mean over a region's box; fakes with 1-3 regions coded.",
              "", "| evidence | group | n | coded regions | uncoded regions | difference, 95% CI |", "|---|---|---:|---:|---:|---|"]
    for result in results:
        for group, r in result["table"]["fakes"]["informative"].items():
            if r.get("n"):
                coded, other = r["evidence_coded"], r["evidence_uncoded"]
                lines.append(f"| {result['name']} ({result['method']}) | {group} | {r['evidence_coded_minus_uncoded']['n']} "
                             f"| {'–' if coded is None else f'{coded:.3f}'} | {'–' if other is None else f'{other:.3f}'} "
                             f"| {_interval(r['evidence_coded_minus_uncoded'], 1.0, '', 3)} |")
    lines += ["", "## Spread of the heat maps",
              "", f"Normalized entropy of the min-max-scaled map as a distribution over its cells (1 = even) and the "
              f"share of its mass in the hottest {int(TOP_SHARE * 100)}% of the cells.", "",
              "| evidence | images | n | entropy | top-10% share |", "|---|---|---:|---:|---:|"]
    for result in results:
        for key, what in (("reals", "reals"), ("fakes_spread", "fakes")):
            r = result["table"][key]
            if r["n"]:
                lines.append(f"| {result['name']} ({result['method']}) | {what} | {r['n']} | {r['entropy']:.3f} | "
                             f"{_pct(r['top_share'])} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ output files

def plain_json(value):
    """`value` with NaN and infinities as null, numpy scalars as Python ones and tuples as lists: strict JSON."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evidence_document(evidence: Evidence, record: Mapping[str, Any], explainer: Explainer,
                      content_box: Sequence[int]) -> dict:
    """The machine-readable evidence of one image (see docs/explain.md for the fields)."""
    rows, cols = evidence.values.shape
    values = np.round(evidence.values.astype(np.float64), 5).tolist()
    return plain_json({
        "format": EVIDENCE_FORMAT, "path": record["path"], "engine_id": explainer.engine_id,
        "engine_dir": str(explainer.engine_dir), "architecture": explainer.architecture,
        "method": explainer.method, "units": UNITS[explainer.method],
        "members": len(explainer.members), "views": list(explainer.views),
        "p_fake": evidence.p_fake, "threshold": explainer.threshold,
        "label": "fake" if evidence.p_fake >= explainer.threshold else "real",
        "grid": {"rows": rows, "cols": cols, "cell_px": evidence.cell_px, "canvas_px": explainer.canvas_px,
                 "content_box_px": list(content_box), "values": values},
        "regions": record["regions"], "hottest_by_max": record["hottest_by_max"], "hottest_by_mean": record["hottest_by_mean"],
        "edited_regions": record["code"], "region_head": evidence.region_head,
        "spread": {"entropy": record["entropy"], "top_share": record["top_share"]},
    })


def write_evidence_json(document: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def render(evidence: Evidence, record: Mapping[str, Any], explainer: Explainer, photo: np.ndarray,
           out: str | Path, *, dpi: int = 100) -> Path:
    """One PNG: the photo as the model saw it, the evidence over it (colour bar with its units), the
    region boxes (solid where the file name says the region was edited), p_fake and the decision in the
    title, the region head's probabilities (where there is one) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle
    from realfake.pipelines.prepare import EDIT_REGIONS

    canvas = explainer.canvas_px
    values = evidence.values
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=dpi)
    ax.imshow(photo, extent=(0, canvas, canvas, 0), interpolation="bilinear")
    extent = (0, values.shape[1] * evidence.cell_px, values.shape[0] * evidence.cell_px, 0)
    if explainer.method == "cam":
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        bound = bound or 1.0
        cmap = matplotlib.colormaps["RdBu_r"].copy()
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
        label = "logit per cell: + fake / − real"
    else:
        cmap = matplotlib.colormaps["inferno"].copy()
        norm = matplotlib.colors.Normalize(0.0, 1.0)
        label = "Grad-CAM of fake − real, 0–1"
    cmap = cmap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    heat = ax.imshow(np.ma.masked_invalid(values), extent=extent, cmap=cmap, norm=norm, alpha=0.55,
                     interpolation="nearest")
    bar = fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=7, labelpad=2)
    bar.ax.tick_params(labelsize=7)
    code = record.get("code")
    for i, name in enumerate(EDIT_REGIONS):
        x0, y0, x1, y1 = record["regions"][name]["box_px"]
        edited = bool(code and code[i])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.4 if edited else 0.8,
                               ls="-" if edited else "--", ec="#39ff14" if edited else "white"))
    ax.set_xlim(0, canvas)
    ax.set_ylim(canvas, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    decision = "fake" if evidence.p_fake >= explainer.threshold else "real"
    name = Path(record["path"]).name
    ax.set_title(f"{name}\np_fake {evidence.p_fake:.3f} → {decision} (threshold {explainer.threshold:.3f})\n"
                 f"hottest: {', '.join(record['hottest_by_max'])}", fontsize=8)
    notes = [f"{explainer.architecture} {explainer.method}, engine {explainer.engine_id}; boxes: region priors"
             + ("" if code is None else " (green: edited per file name)")]
    if evidence.region_head:
        notes.append("region head: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in evidence.region_head.items()))
    fig.text(0.02, 0.015, "\n".join(notes), fontsize=6.5, va="bottom")
    fig.subplots_adjust(left=0.02, right=0.86, top=0.86, bottom=0.1)
    out = Path(out)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out
