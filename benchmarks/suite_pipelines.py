"""The `pipelines` suite: images/s of the loaders, DALI against the torchvision DataLoader.

Data: the CIPLAB set at ../shared/data/real_and_fake_face when present (or the folder in
$REALFAKE_BENCH_DATA), else synthetic 600x600 faces written once per process (`pipelines.synth`).
Like the CIPLAB files those are progressive JPEGs; the GPU figures also use baseline copies
(re-encoded with PIL, progressive=False), since GPU hardware JPEG decoders take baseline only.

CPU figures (device cpu): one full pass of the product's loaders over the same files, DALI's
CPU-only mode against torchvision's DataLoader with the same number of threads (2 DALI threads,
2 DataLoader workers), images of 128 px:
  pipelines/decode_resize@128/dali-cpu        img/s, decode + resize + normalize (eval loader)
  pipelines/decode_resize@128/torch           img/s, the same with PIL in a DataLoader
  pipelines/decode_resize@128/dali_vs_torch   x, goal on 2 cores: >= 1.5
  pipelines/train_augment@128/...             the same three with the full train augmentation
A pass includes building the DALI pipeline / starting the workers: what each epoch costs. The two
loaders take turns pass by pass, so that a busy machine slows both alike.

GPU figures (device cuda): steady-state batches of the DALI pipelines on that GPU (`mixed` decode):
  pipelines/decode_resize@128/dali-gpu-{progressive,baseline}-hw{0.0,0.65,1.0}   img/s
  pipelines/decode_resize@128/hw1.0_vs_default-{progressive,baseline}            x
  pipelines/train_augment@128/dali-gpu-{progressive,baseline}                    img/s (hw 1.0)
`hw_decoder_load` 0.65 is DALI's default; 1.0 the product's (see `dali_loader.DEFAULT_HW_DECODER_LOAD`).

Quick mode: 96 files, 3 repeats (about a minute on 2 CPU cores, plus ~15 s to generate the files when
the real set is absent). Full mode: 480 files, 5 repeats.

Run alone: python -m realfake.benchmarks.suite_pipelines [--full] [--device cuda]
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from realfake.benchmarks.harness import (
    Figure,
    figures_table,
    measure_throughput,
    ratio_figure,
    sync_for,
)
from realfake.pipelines.dali_loader import dali_available, eval_pipeline, make_dali_loader, train_pipeline
from realfake.pipelines.spec import AugmentSpec
from realfake.pipelines.synth import synth
from realfake.pipelines.torch_loader import make_torch_loader
from realfake.pipelines.walk import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

SUITE = "pipelines"
IMAGE_SIZE = 128
DATA_ENV = "REALFAKE_BENCH_DATA"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_and_fake_face"
DALI_DEFAULT_HW_DECODER_LOAD = 0.65  # nvidia.dali.fn.decoders.image's documented default
HW_DECODER_LOADS = (0.0, DALI_DEFAULT_HW_DECODER_LOAD, 1.0)


@dataclass(frozen=True)
class PipelinesSuiteConfig:
    n_files: int
    repeats: int
    warmup: int
    threads_cpu: int  # DALI threads = DataLoader workers on the CPU
    batch_size_cpu: int
    batch_size_gpu: int
    gpu_repeat_s: float  # each GPU repeat runs batches for about this long


QUICK = PipelinesSuiteConfig(n_files=96, repeats=3, warmup=1, threads_cpu=2, batch_size_cpu=32, batch_size_gpu=128,
                             gpu_repeat_s=0.5)
FULL = PipelinesSuiteConfig(n_files=480, repeats=5, warmup=1, threads_cpu=2, batch_size_cpu=32, batch_size_gpu=256,
                            gpu_repeat_s=1.5)


# --------------------------------------------------------------------------- data

def list_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def _interleave(files: list[str], n: int) -> list[str]:
    """n files spread over the whole sorted list (both classes, all groups), not the first n."""
    if len(files) <= n:
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


_generated: dict[tuple[int, int], list[str]] = {}


def generated_images(n: int, size: int = 600) -> list[str]:
    """n synthetic progressive JPEG faces of size x size, written once per process to a temp folder."""
    if (n, size) not in _generated:

        out = Path(tempfile.mkdtemp(prefix="realfake-bench-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        _generated[(n, size)] = list_images(synth(out, n=n, size=size, progress=True))
    return _generated[(n, size)]


def bench_images(n: int) -> tuple[list[str], str]:
    """(n image paths, where they come from): $REALFAKE_BENCH_DATA, ../shared's CIPLAB set, or generated."""
    for folder in (os.environ.get(DATA_ENV), SHARED_DATA):
        if folder and Path(folder).is_dir():
            files = list_images(Path(folder))
            if files:
                return _interleave(files, n), str(folder)
    return generated_images(n), "generated 600x600 progressive JPEGs"


def baseline_copies(files: Sequence[str], out_dir: Path) -> list[str]:
    """Re-encode `files` as baseline (non-progressive) JPEGs: what GPU hardware decoders accept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, path in enumerate(files):
        target = out_dir / f"{i:05d}.jpg"
        with Image.open(path) as image:
            image.convert("RGB").save(target, "JPEG", quality=95, progressive=False)
        copies.append(str(target))
    return copies


# --------------------------------------------------------------------------- measuring

def loader_pass_figures(makers: dict[str, Callable[[], object]], n_files: int, cfg: PipelinesSuiteConfig,
                        params: dict) -> list[Figure]:
    """img/s of whole passes (one pass = one sample) over freshly made loaders, one per name.

    The loaders take turns, pass by pass, so that another process slowing the machine for a while
    slows them alike and their ratio stays fair.
    """
    loaders = {name: make() for name, make in makers.items()}
    samples: dict[str, list[float]] = {name: [] for name in loaders}
    for repeat in range(cfg.warmup + cfg.repeats):
        for name, loader in loaders.items():
            start = time.perf_counter()
            delivered = sum(len(batch.indices) for batch in loader)
            elapsed = time.perf_counter() - start
            if delivered != n_files:  # a loader that lost files would look fast
                raise RuntimeError(f"{name}: a pass delivered {delivered} images, expected {n_files}")
            if repeat >= cfg.warmup:
                samples[name].append(n_files / elapsed)
    return [Figure.from_samples(SUITE, name, values, params={**params, "n_files": n_files, "passes_per_repeat": 1})
            for name, values in samples.items()]


def dali_pipeline_figure(name: str, files: Sequence[str], *, train: bool, device: str, batch_size: int,
                         hw_decoder_load: float, cfg: PipelinesSuiteConfig, params: dict,
                         fancy_upsampling: bool = False) -> Figure:
    """Steady-state img/s of a DALI pipeline on `device` (its reader wraps around the files): the
    decoder's and augmentations' rate without per-pass start-up."""
    gpu = device.startswith("cuda")
    device_id = (int(device.split(":", 1)[1]) if ":" in device else 0) if gpu else None
    threads = min(8, os.cpu_count() or 1)
    common = dict(files=list(files), labels=list(range(len(files))), shard_id=0, num_shards=1,
                  image_size=IMAGE_SIZE, gpu=gpu, hw_decoder_load=hw_decoder_load, fancy_upsampling=fancy_upsampling,
                  batch_size=batch_size,
                  num_threads=threads, device_id=device_id, seed=0)
    pipe = train_pipeline(augment=AugmentSpec(), **common) if train else eval_pipeline(**common)
    pipe.build()
    try:
        measurement = measure_throughput(pipe.run, items_per_step=batch_size, repeats=cfg.repeats, warmup=3,
                                         min_repeat_s=cfg.gpu_repeat_s, max_steps_per_repeat=1000,
                                         sync=sync_for(device))
    finally:
        del pipe
    return Figure.from_samples(SUITE, name, measurement.samples, params={
        **params, "batch_size": batch_size, "dali_threads": threads, "hw_decoder_load": hw_decoder_load,
        "fancy_upsampling": fancy_upsampling,
        "batches_per_repeat": measurement.steps_per_repeat})


# --------------------------------------------------------------------------- the suite

def cpu_figures(files: Sequence[str], source: str, cfg: PipelinesSuiteConfig) -> list[Figure]:

    figures = []
    for what, train in (("decode_resize", False), ("train_augment", True)):
        kw = dict(train=train, image_size=IMAGE_SIZE, batch_size=cfg.batch_size_cpu,
                  augment=AugmentSpec() if train else None, num_workers=cfg.threads_cpu, seed=0, shard_id=0,
                  num_shards=1, device="cpu")
        # Train loaders drop a ragged last batch (when there is more than one): count what they deliver.
        drops = train and len(files) > cfg.batch_size_cpu
        n = len(files) - (len(files) % cfg.batch_size_cpu if drops else 0)
        params = {"image_size": IMAGE_SIZE, "batch_size": cfg.batch_size_cpu, "threads": cfg.threads_cpu,
                  "data": source}
        prefix = f"{SUITE}/{what}@{IMAGE_SIZE}"
        dali, torch_fig = loader_pass_figures({
            f"{prefix}/dali-cpu": lambda kw=kw: make_dali_loader(files, None, **kw),
            f"{prefix}/torch": lambda kw=kw: make_torch_loader(files, None, **kw),
        }, n, cfg, params)
        figures += [dali, torch_fig, ratio_figure(dali, torch_fig, f"{prefix}/dali_vs_torch")]
    return figures


def gpu_figures(files: Sequence[str], source: str, cfg: PipelinesSuiteConfig, device: str) -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory(prefix="realfake-baseline-") as tmp:
        kinds = {"progressive": list(files), "baseline": baseline_copies(files, Path(tmp))}
        for kind, paths in kinds.items():
            params = {"image_size": IMAGE_SIZE, "jpeg": kind, "data": source, "n_files": len(paths)}
            prefix = f"{SUITE}/decode_resize@{IMAGE_SIZE}"
            by_load = {}
            for load in HW_DECODER_LOADS:
                by_load[load] = dali_pipeline_figure(f"{prefix}/dali-gpu-{kind}-hw{load}", paths, train=False,
                                                device=device, batch_size=cfg.batch_size_gpu, hw_decoder_load=load,
                                                cfg=cfg, params=params)
            figures += list(by_load.values())
            figures.append(ratio_figure(by_load[1.0], by_load[DALI_DEFAULT_HW_DECODER_LOAD],
                                        f"{prefix}/hw1.0_vs_default-{kind}"))
            figures.append(dali_pipeline_figure(f"{SUITE}/train_augment@{IMAGE_SIZE}/dali-gpu-{kind}", paths, train=True,
                                           device=device, batch_size=cfg.batch_size_gpu, hw_decoder_load=1.0,
                                           cfg=cfg, params=params))
    return figures


def run(quick: bool, device: str, *, n_files: int | None = None, repeats: int | None = None) -> list[Figure]:
    """The suite's figures on `device` ("cpu" or "cuda[:N]"); `n_files`/`repeats` narrow it (tests)."""
    cfg = QUICK if quick else FULL
    if n_files is not None or repeats is not None:
        cfg = PipelinesSuiteConfig(**{**cfg.__dict__, "n_files": n_files or cfg.n_files,
                                      "repeats": repeats or cfg.repeats})

    if not dali_available():
        raise ValueError("the pipelines suite compares DALI with torchvision: pip install 'realfake[dali]'")
    files, source = bench_images(cfg.n_files)
    log.info("pipelines suite: %d files from %s", len(files), source)
    if device.startswith("cuda"):
        return gpu_figures(files, source, cfg, device)
    return cpu_figures(files, source, cfg)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DALI vs torchvision loader throughput (the pipelines suite).")
    parser.add_argument("--full", action="store_true", help="full mode (more files, more repeats)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (GPU figures: DALI mixed decode)")
    parser.add_argument("--n-files", type=int, default=None, help="files per pass (default: the mode's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(figures_table(run(quick=not args.full, device=args.device, n_files=args.n_files)))


if __name__ == "__main__":
    main()
