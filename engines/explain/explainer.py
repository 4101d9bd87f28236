"""The eager model behind an engine, loaded to explain what it scores (see the package docstring for
which weights), and the evidence of each image it is given."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from realfake.engines.backends import eager
from realfake.engines.explain.methods import (
    METHODS,
    Evidence,
    block_grid,
    cam_layer,
    class_activation_map,
    feature_stride,
    grad_cam,
)
from realfake.engines.recipes import RegionLoss
from realfake.engines.schema import EngineError, engine_ghost_maps, read_engine_meta
from realfake.engines.trainer import load_checkpoint, load_run
from realfake.models import Ensemble, MirrorAverage, model_input
from realfake.pipelines.images import load_rgb
from realfake.pipelines.jpeg_ghosts import BLOCK, ghost_view, grid_cells
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.prepare import EDIT_REGIONS
from realfake.pipelines.provenance import sha256_file
from torch import nn

log = logging.getLogger(__name__)

VIEWS = {"none": ("image",), "flip": ("image", "mirror")}


def _members(module: nn.Module) -> list[nn.Module]:

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

    runs = _source_runs(meta)
    checkpoint = (meta.get("source") or {}).get("checkpoint") or "best"
    why = (f"{engine_dir} is an engine of backend {meta['backend']}: its artifact is compiled code, so its "
           "eager weights come from the run it was built from")
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

        self.engine_dir, self.meta = Path(engine_dir), meta
        self.engine_id, self.architecture = meta["engine_id"], meta["architecture"]
        self.input = model_input(self.architecture)
        self.ghost_maps = engine_ghost_maps(meta)  # the kind of ghost maps the engine reads (None: pixels)
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

            return grid_cells(self.image_size) * BLOCK
        return self.image_size

    @property
    def cell_px(self) -> int:
        if self.input == "ghosts":

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

        return [Evidence(p_fake=float(p_fake[i]), values=values[i].astype(np.float32), cell_px=self.cell_px,
                         region_head=None if head_p is None else dict(zip(EDIT_REGIONS, map(float, head_p[i]),
                                                                          strict=True)))
                for i in range(images.shape[0])]

    def loader(self, files: Sequence[str], labels: Sequence[int] | None = None, *, batch_size: int = 16,
               num_workers: int = 2, cache_paths: Sequence[Path] | None = None):
        """An eval loader of the engine's input over `files`, in order (ghost maps of the engine's kind, from
        `cache_paths` of that kind where given); failures come as Batch.errors."""
        extra = {"input": "ghosts", "cache_paths": cache_paths, "ghost_maps": self.ghost_maps} \
            if self.input == "ghosts" else {}
        return get_loader(list(files), labels, train=False, backend="torch", image_size=self.image_size,
                          batch_size=batch_size, num_workers=num_workers, **extra)

    def photo(self, path: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """(uint8 (H, W, 3) picture of what the model saw, to draw over the canvas; content box on the
        canvas). Raises InvalidImageError."""
        if self.input == "ghosts":

            return ghost_view(path, self.image_size)

        side = max(self.image_size, 320)  # drawn finer than a small model's input; the same squash
        picture = np.asarray(load_rgb(path).resize((side, side), Image.BILINEAR))
        return picture, (0, 0, self.image_size, self.image_size)


def load_explainer(engine_dir: str | Path, device: str = "cpu") -> Explainer:
    """The Explainer of engine directory `engine_dir` (checked like `load_engine`; see the module
    docstring for where its weights come from). Raises EngineError with the fix."""
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
