"""The `ghosts` suite: JPEG ghost maps per second, the PIL reference against the batched torch maps,
and how closely the torch maps follow the reference.

Data: the CIPLAB set at ../shared/data/real_and_fake_face when present (or the folder in
$REALFAKE_BENCH_DATA), else synthetic 600x600 progressive JPEGs (`pipelines.synth`); maps of
600 px (the ghost_cnn default: the whole CIPLAB image).

Every figure is the model input of a file from its path: decode included, normalized maps out.
  ghosts/maps@600/reference-1t         files/s, `jpeg_ghosts.ghost_maps` (PIL re-saves), one thread
  ghosts/maps@600/torch-1t             files/s, `load_ghost_input` + `maps_of_inputs` in batches, one
                                       thread (files the torch maps refuse take the reference, counted
                                       in params.fallbacks)
  ghosts/maps@600/torch_vs_reference-1t   x
  ghosts/maps@600/{reference,torch}-2t, torch_vs_reference-2t: the same over 2 Python threads (both
                                       release the GIL in their C code), one torch thread each
  ghosts/maps@600/exact-1t             files/s, the reference's maps bit for bit as tensor math
                                       (`load_exact_input` + `jpeg_ghosts_exact.maps_of_inputs`), one thread:
                                       a GPU's path, measured here against the reference it reproduces
  ghosts/maps@600/exact_vs_reference-1t   x
  ghosts/maps@600/torch-maps-1t        files/s of the maps alone, on files decoded beforehand
  ghosts/decode@600/torch-load-1t      files/s of `load_ghost_input` alone (PIL decode to YCbCr + header)
  ghosts/cpu@600/<same names>          ms of CPU a file of each of those passes (all threads of the
                                       process): the work, which a busy machine's wall clock hides
  ghosts/maps@600/*-retained           the 1-thread figures again in a child process whose allocator
                                       keeps freed memory (glibc MALLOC_TOP_PAD_): the torch maps
                                       allocate large temporaries, which otherwise cost page faults
  ghosts/corr@600/<keep|q50..q95>-<Y|chroma>   r, Pearson correlation of each file's normalized
                                       torch map with the reference's (median and IQR over files)
On a GPU (device cuda) the torch maps run there (decode stays on the CPU):
  ghosts/maps@600/torch-cuda-maps      files/s of the maps alone, batches of decoded files on the GPU
  ghosts/maps@600/torch-cuda-2t        files/s end to end, 2 decode threads feeding the GPU
  ghosts/maps@600/torch_cuda_vs_reference-2t   x
  ghosts/maps@600/exact-cuda-maps      files/s of the exact (pil) maps alone, batches of decoded files on the GPU

Passes take turns (reference, torch, reference, ...), so that a busy machine slows both alike.
Quick mode: 16 files, 3 repeats (about 1-2 minutes on 2 CPU cores). Full mode: 96 files, 5 repeats.

Run alone: python -m realfake.benchmarks.suite_ghosts [--full] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from realfake.benchmarks.harness import Figure, figures_table, ratio_figure

log = logging.getLogger(__name__)

SUITE = "ghosts"
IMAGE_SIZE = 600
BATCH = 8  # files a maps_of_inputs call on the CPU
GPU_BATCH = 64
RETAIN_ENV = {"MALLOC_TOP_PAD_": str(512 << 20)}  # glibc keeps 512 MB of freed memory instead of unmapping it


@dataclass(frozen=True)
class GhostsSuiteConfig:
    n_files: int
    repeats: int
    warmup: int


QUICK = GhostsSuiteConfig(n_files=16, repeats=3, warmup=1)
FULL = GhostsSuiteConfig(n_files=96, repeats=5, warmup=1)


# --------------------------------------------------------------------------- the two ways to the maps

def reference_maps(path: str):
    from realfake.pipelines.jpeg_ghosts import ghost_maps

    return ghost_maps(path, IMAGE_SIZE)


def torch_maps(paths: Sequence[str], device: str = "cpu") -> tuple[list, int]:
    """(the maps of `paths`, how many went to the reference): what a loader of the torch maps does."""
    from realfake.pipelines.jpeg_ghosts_torch import NeedsReference, load_ghost_input, maps_of_inputs

    inputs, fallbacks, out = [], [], {}
    for i, path in enumerate(paths):
        try:
            inputs.append((i, load_ghost_input(path, IMAGE_SIZE)))
        except NeedsReference:
            fallbacks.append(i)
            out[i] = reference_maps(path)
    if inputs:
        maps = maps_of_inputs([item for _, item in inputs], IMAGE_SIZE, device=device)
        out.update((i, m) for (i, _), m in zip(inputs, maps, strict=True))
    return [out[i] for i in range(len(paths))], len(fallbacks)


def exact_maps(paths: Sequence[str], device: str = "cpu") -> list:
    """The reference's maps of `paths` as `jpeg_ghosts_exact` computes them (what `--cache gpu` and `--loader
    dali` do for pil engines); files it leaves to the reference take the reference."""
    from realfake.pipelines.jpeg_ghosts_exact import load_exact_input, maps_of_inputs
    from realfake.pipelines.jpeg_ghosts_torch import NeedsReference

    inputs, out = [], {}
    for i, path in enumerate(paths):
        try:
            inputs.append((i, load_exact_input(path, IMAGE_SIZE)))
        except NeedsReference:
            out[i] = reference_maps(path)
    if inputs:
        maps = maps_of_inputs([item for _, item in inputs], IMAGE_SIZE, device=device)
        out.update((i, m) for (i, _), m in zip(inputs, maps, strict=True))
    return [out[i] for i in range(len(paths))]


def exact_samples(paths: Sequence[str], cfg: GhostsSuiteConfig) -> dict[str, list[float]]:
    """files/s of the exact maps and the reference, one thread, taking turns."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return timed_passes({"reference-1t": lambda: one_thread_pass("reference", paths),
                             "exact-1t": lambda: [exact_maps(b) for b in _batches(paths, BATCH)]}, cfg, len(paths))
    finally:
        torch.set_num_threads(threads)


def _batches(paths: Sequence[str], size: int) -> list[list[str]]:
    return [list(paths[i:i + size]) for i in range(0, len(paths), size)]


def one_thread_pass(method: str, paths: Sequence[str]) -> None:
    if method == "reference":
        for path in paths:
            reference_maps(path)
    else:
        for batch in _batches(paths, BATCH):
            torch_maps(batch)


def two_thread_pass(method: str, paths: Sequence[str], pool: ThreadPoolExecutor) -> None:
    if method == "reference":
        list(pool.map(reference_maps, paths))
    else:  # each thread takes a batch at a time
        list(pool.map(torch_maps, _batches(paths, BATCH)))


def timed_passes(passes: dict[str, Callable[[], object]], cfg: GhostsSuiteConfig, n_files: int) -> dict[str, list[float]]:
    """files/s of each pass, repeated, and its CPU time a file in ms (key "cpu:" + name: all threads of
    the process, so the work whatever else the machine runs); the passes take turns."""
    samples: dict[str, list[float]] = {key: [] for name in passes for key in (name, f"cpu:{name}")}
    for repeat in range(cfg.warmup + cfg.repeats):
        for name, run_pass in passes.items():
            start, cpu = time.perf_counter(), time.process_time()
            run_pass()
            if repeat >= cfg.warmup:
                samples[name].append(n_files / (time.perf_counter() - start))
                samples[f"cpu:{name}"].append(1000 * (time.process_time() - cpu) / n_files)
    return samples


def one_thread_samples(paths: Sequence[str], cfg: GhostsSuiteConfig) -> dict[str, list[float]]:
    """files/s of the one-thread figures: reference, torch, torch maps alone, torch decode alone."""
    import torch
    from realfake.pipelines.jpeg_ghosts_torch import NeedsReference, load_ghost_input, maps_of_inputs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoded, fast = [], []
        for path in paths:
            try:
                decoded.append(load_ghost_input(path, IMAGE_SIZE))
                fast.append(path)
            except NeedsReference:
                pass
        samples = timed_passes({
            "reference-1t": lambda: one_thread_pass("reference", paths),
            "torch-1t": lambda: one_thread_pass("torch", paths),
        }, cfg, len(paths))
        if decoded:  # the torch path's two parts, over the files it takes
            samples |= timed_passes({
                "torch-maps-1t": lambda: [maps_of_inputs(b, IMAGE_SIZE) for b in _batches(decoded, BATCH)],
                "torch-load-1t": lambda: [load_ghost_input(p, IMAGE_SIZE) for p in fast],
            }, cfg, len(decoded))
        return samples
    finally:
        torch.set_num_threads(threads)


def retained_samples(paths: Sequence[str], cfg: GhostsSuiteConfig) -> dict[str, list[float]]:
    """`one_thread_samples` in a child process whose allocator keeps freed memory."""
    with tempfile.TemporaryDirectory(prefix="realfake-ghosts-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"paths": list(paths), "cfg": cfg.__dict__}))
        done = subprocess.run([sys.executable, "-m", "realfake.benchmarks.suite_ghosts", "--child", str(request)],
                              env={**os.environ, **RETAIN_ENV}, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the ghosts suite's child process failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- correlation

def correlation_figures(paths: Sequence[str], params: dict) -> list[Figure]:
    """r of each channel group, per file, between the torch maps and the reference's (normalized)."""
    import numpy as np
    from realfake.pipelines.jpeg_ghosts import QUALITIES, raw_maps
    from realfake.pipelines.jpeg_ghosts_torch import (
        NeedsReference,
        ghost_maps,
        load_ghost_input,
        orient,
    )

    rows = []
    for path in paths:
        try:
            item = load_ghost_input(path, IMAGE_SIZE)
        except NeedsReference:
            continue
        ours = ghost_maps(item.planes[None], item.keep_tables[None], [item.keep_subsampling])[0]
        rows.append(channel_correlations(orient(ours, item.orientation).numpy(), raw_maps(path, IMAGE_SIZE)))
    if not rows:
        return []
    r = np.stack(rows)  # (files, CHANNELS)
    figures = []
    for q, quality in enumerate(QUALITIES):
        name = "keep" if quality == "keep" else f"q{quality}"
        chroma = r[:, 3 * q + 1:3 * q + 3]
        counted = (~np.isnan(chroma)).sum(1)
        chroma = np.where(counted > 0, np.nan_to_num(chroma).sum(1) / np.maximum(counted, 1), np.nan)
        for group, values in (("Y", r[:, 3 * q]), ("chroma", chroma)):
            values = values[~np.isnan(values)]  # flat maps (e.g. a grayscale file's chroma) have no r
            if len(values):
                figures.append(Figure.from_samples(SUITE, f"{SUITE}/corr@{IMAGE_SIZE}/{name}-{group}", values.tolist(),
                                                   unit="r", params={**params, "n_files": len(values)}))
    return figures


def channel_correlations(ours, reference):
    """Pearson r per channel of (C, h, w) maps after the product's log and centring (NaN for a flat map)."""
    import numpy as np
    from realfake.pipelines.jpeg_ghosts import LOG_EPS

    def normalized(maps):
        logged = np.log(maps.astype(np.float64) + LOG_EPS)
        return logged - logged.mean((-2, -1), keepdims=True)

    a, b = normalized(ours), normalized(reference)
    den = np.sqrt((a * a).sum((-2, -1)) * (b * b).sum((-2, -1)))
    return np.where(den > 1e-9, (a * b).sum((-2, -1)) / np.maximum(den, 1e-12), np.nan)


# --------------------------------------------------------------------------- the suite

def cpu_figures(paths: Sequence[str], source: str, cfg: GhostsSuiteConfig, *, retained: bool = True) -> list[Figure]:
    import torch
    from realfake.pipelines.jpeg_headers import fast_maps_problem_of

    params = {"image_size": IMAGE_SIZE, "batch": BATCH, "data": source, "n_files": len(paths)}
    fallbacks = sum(fast_maps_problem_of(p) is not None for p in paths)
    prefix = f"{SUITE}/maps@{IMAGE_SIZE}"
    figures: list[Figure] = []

    def add(samples: dict[str, list[float]], suffix: str = "") -> None:
        made = {}
        for key, values in samples.items():
            cpu = key.startswith("cpu:")
            key = key.removeprefix("cpu:")
            what = "cpu" if cpu else "decode" if key == "torch-load-1t" else "maps"
            name = f"{SUITE}/{what}@{IMAGE_SIZE}/{key}{suffix}"
            figure = Figure.from_samples(SUITE, name, values, unit="ms CPU/file" if cpu else "files/s",
                                         higher_is_better=not cpu,
                                         params={**params, "fallbacks": fallbacks, "threads": 2 if "2t" in key else 1})
            figures.append(figure)
            if not cpu:
                made[key] = figure
        for n in ("1t", "2t"):
            if f"torch-{n}" in made:
                figures.append(ratio_figure(made[f"torch-{n}"], made[f"reference-{n}"],
                                            f"{prefix}/torch_vs_reference-{n}{suffix}"))

    add(one_thread_samples(paths, cfg))
    # The exact maps against the reference passes that took turns with them (not listed twice).
    samples = exact_samples(paths, cfg)
    add({k: v for k, v in samples.items() if "exact" in k})
    beside = Figure.from_samples(SUITE, f"{prefix}/reference-1t", samples["reference-1t"], unit="files/s")
    exact = next(f for f in figures if f.name == f"{prefix}/exact-1t")
    figures.append(ratio_figure(exact, beside, f"{prefix}/exact_vs_reference-1t"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(2) as pool:
            add(timed_passes({"reference-2t": lambda: two_thread_pass("reference", paths, pool),
                              "torch-2t": lambda: two_thread_pass("torch", paths, pool)}, cfg, len(paths)))
    finally:
        torch.set_num_threads(threads)
    if retained and sys.platform.startswith("linux"):
        add(retained_samples(paths, cfg), "-retained")
    return figures + correlation_figures(paths, params)


def gpu_figures(paths: Sequence[str], source: str, cfg: GhostsSuiteConfig, device: str) -> list[Figure]:
    import torch
    from realfake.benchmarks.harness import measure_throughput, sync_for
    from realfake.pipelines.jpeg_ghosts_exact import load_exact_input
    from realfake.pipelines.jpeg_ghosts_exact import maps_of_inputs as exact_maps_of_inputs
    from realfake.pipelines.jpeg_ghosts_torch import NeedsReference, load_ghost_input, maps_of_inputs

    params = {"image_size": IMAGE_SIZE, "data": source, "n_files": len(paths)}
    decoded = []
    for path in paths:
        try:
            decoded.append(load_ghost_input(path, IMAGE_SIZE))
        except NeedsReference:
            pass
    batch = (decoded * (GPU_BATCH // max(1, len(decoded)) + 1))[:GPU_BATCH]
    measurement = measure_throughput(lambda: maps_of_inputs(batch, IMAGE_SIZE, device=device), items_per_step=len(batch),
                                     repeats=cfg.repeats, warmup=2, sync=sync_for(device))
    maps_only = Figure.from_samples(SUITE, f"{SUITE}/maps@{IMAGE_SIZE}/torch-cuda-maps", measurement.samples,
                                    unit="files/s", params={**params, "batch": len(batch)})
    exact_inputs = []
    for path in paths:
        try:
            exact_inputs.append(load_exact_input(path, IMAGE_SIZE))
        except NeedsReference:
            pass
    exact_batch = (exact_inputs * (GPU_BATCH // max(1, len(exact_inputs)) + 1))[:GPU_BATCH]
    measurement = measure_throughput(lambda: exact_maps_of_inputs(exact_batch, IMAGE_SIZE, device=device),
                                     items_per_step=len(exact_batch), repeats=cfg.repeats, warmup=2,
                                     sync=sync_for(device))
    exact_only = Figure.from_samples(SUITE, f"{SUITE}/maps@{IMAGE_SIZE}/exact-cuda-maps", measurement.samples,
                                     unit="files/s", params={**params, "batch": len(exact_batch)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(2) as pool:
            def end_to_end():
                for chunk in _batches(paths, GPU_BATCH):
                    loaded = list(pool.map(lambda p: load_ghost_input(p, IMAGE_SIZE), chunk))
                    maps_of_inputs(loaded, IMAGE_SIZE, device=device)
                sync_for(device)()

            samples = timed_passes({"reference-2t": lambda: two_thread_pass("reference", paths, pool),
                                    "torch-cuda-2t": end_to_end}, cfg, len(paths))
    finally:
        torch.set_num_threads(threads)
    reference = Figure.from_samples(SUITE, f"{SUITE}/maps@{IMAGE_SIZE}/reference-2t", samples["reference-2t"],
                                    unit="files/s", params={**params, "threads": 2})
    cuda = Figure.from_samples(SUITE, f"{SUITE}/maps@{IMAGE_SIZE}/torch-cuda-2t", samples["torch-cuda-2t"],
                               unit="files/s", params={**params, "decode_threads": 2})
    return [maps_only, exact_only, reference, cuda,
            ratio_figure(cuda, reference, f"{SUITE}/maps@{IMAGE_SIZE}/torch_cuda_vs_reference-2t")]


def run(quick: bool, device: str, *, paths: Sequence[str] | None = None, repeats: int | None = None,
        retained: bool = True) -> list[Figure]:
    """The suite's figures on `device` ("cpu" or "cuda[:N]"); `paths`/`repeats` narrow it (tests)."""
    from realfake.benchmarks.suite_pipelines import bench_images

    cfg = QUICK if quick else FULL
    if repeats is not None:
        cfg = GhostsSuiteConfig(**{**cfg.__dict__, "repeats": repeats})
    if paths is None:
        paths, source = bench_images(cfg.n_files)
    else:
        paths, source = list(paths), "given files"
    log.info("ghosts suite: %d files from %s", len(paths), source)
    if device.startswith("cuda"):
        return gpu_figures(paths, source, cfg, device)
    return cpu_figures(paths, source, cfg, retained=retained)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="JPEG ghost maps: PIL reference vs batched torch (the ghosts suite).")
    parser.add_argument("--full", action="store_true", help="full mode (more files, more repeats)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch maps on that GPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one-thread samples for a parent run
    args = parser.parse_args(argv)
    if args.child:
        request = json.loads(Path(args.child).read_text())
        samples = one_thread_samples(request["paths"], GhostsSuiteConfig(**request["cfg"]))
        print(json.dumps(samples))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(figures_table(run(quick=not args.full, device=args.device)))


if __name__ == "__main__":
    main()
