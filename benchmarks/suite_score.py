"""The `score` suite: `realfake score` end to end over a folder, against a naive baseline in the same run.

Data: the CIPLAB set at ../shared/data/real_and_fake_face when present (or the folder in
$REALFAKE_BENCH_DATA), else synthetic 600x600 progressive JPEG faces (see `suite_pipelines.bench_images`),
linked into a temporary folder with one subfolder per class (what ImageFolder wants).

Each pass scores the whole folder and is timed from start to end (wall clock), start-up included:
  naive      torchvision ImageFolder + DataLoader (batch 64, 2 workers) + the eager fp32 model
             (full-size PIL decode, Resize, ToTensor, Normalize; p_fake to a Python list)
  realfake   `run_score` with the product's settings: the engine's compiled artifact (AOTInductor,
             loaded in ~0.1 s; built once and cached), loader auto (on the CPU the torchvision path with
             PIL draft mode; DALI on a GPU), 2 decode threads/workers, batch 64, CSV rows fsynced per batch
Both run in this process. The naive pass keeps torch's thread count; `run_score` sets the engine's
(see jobs/tasks/score/concurrency.py: choose_engine_threads).

Figures, per model (the report's Model 1 = simple_cnn, and resnet18) at 128 px:
  score/e2e@128/<model>/naive                img/s
  score/e2e@128/<model>/realfake             img/s
  score/e2e@128/<model>/realfake_vs_naive    x   (goal on 2 CPU cores: >= 3 for simple_cnn)
  score/e2e@128/<model>/realfake-auto-precision[_vs_naive]   the same with an `--precision auto` engine,
                                             where that is bf16 (GPUs, CPUs with AVX512-BF16/AMX)
  score/e2e@128/<model>/<pass>/cpu_ms_per_img  ms  CPU time of the pass (this process and its decode
                                             workers, user + system) per image: what it costs
  score/e2e@128/<model>/<pass>/cores_busy    cores   CPU time / wall time: near the core count, the pass
                                             is short of CPU; well below it, something waits
Full mode adds the settings one at a time, to show what each brings:
  score/e2e@128/<model>/eager-torch          eager fp32 engine, torchvision loader (draft)
  score/e2e@128/<model>/aot-torch            AOT engine, torchvision loader (draft)
  score/e2e@128/<model>/aot-dali             AOT engine, DALI loader (= realfake on a GPU)
  score/e2e@128/<model>/aot-torch-2-engine-threads   aot-torch with `--engine-threads 2` (a model that
                                             costs more than decoding leaves the decoders waiting)
and their ratios to naive.

Quick mode: simple_cnn, 300 files, 3 repeats (about a minute on 2 CPU cores; the first run on a machine
also builds the AOT engine, ~30 s). Full mode: simple_cnn and resnet18, 900 files, 3 repeats.
On a GPU (device cuda) the same passes run with the engine and DALI decoding on the GPU; for the
decode-bound GPU picture see benchmarks/gpu_score.py.

Engines are built with random weights (seed 0) and cached under $REALFAKE_BENCH_CACHE (default
$REALFAKE_HOME/cache/bench-engines), one per model, backend, device type and torch version.

Run alone: python -m realfake.benchmarks.suite_score [--full] [--device cuda] [--n-files N]
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from realfake.benchmarks.harness import Figure, figures_table, ratio_figure
from realfake.benchmarks.suite_pipelines import bench_images
from realfake.engines.build import build_engine_from_model
from realfake.engines.devices import resolve_precision
from realfake.engines.runtime import load_engine
from realfake.jobs.service.store import realfake_home
from realfake.jobs.tasks.score import run_score
from realfake.models import build_model
from realfake.pipelines.pixel_loaders import dali_installed
from realfake.pipelines.spec import MEAN, STD
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

log = logging.getLogger(__name__)

SUITE = "score"
IMAGE_SIZE = 128
CACHE_ENV = "REALFAKE_BENCH_CACHE"


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # engine backend
    loader: str  # realfake loader choice
    precision: str = "fp32"  # engine precision; "auto" = bf16 where the device has bf16 units
    engine_threads: int = 0  # `score --engine-threads`; 0 = the product's choice


REALFAKE = Variant("realfake", "aot", "auto")
# The same with `engine build --precision auto`: measured only where that means bf16 (a GPU, or a CPU
# with AVX512-BF16/AMX); elsewhere it would repeat the fp32 row.
REALFAKE_AUTO = Variant("realfake-auto-precision", "aot", "auto", "auto")
SWEEP = (Variant("eager-torch", "eager", "torch"), Variant("aot-torch", "aot", "torch"),
         Variant("aot-dali", "aot", "dali"), Variant("aot-torch-2-engine-threads", "aot", "torch", engine_threads=2))


@dataclass(frozen=True)
class ScoreSuiteConfig:
    models: tuple[str, ...]
    n_files: int
    repeats: int
    variants: tuple[Variant, ...]
    batch_size: int = 64
    workers: int = 2
    image_size: int = IMAGE_SIZE


QUICK = ScoreSuiteConfig(models=("simple_cnn",), n_files=300, repeats=3, variants=(REALFAKE, REALFAKE_AUTO))
FULL = ScoreSuiteConfig(models=("simple_cnn", "resnet18"), n_files=900, repeats=3,
                        variants=(REALFAKE, REALFAKE_AUTO, *SWEEP))


# --------------------------------------------------------------------------- data and engines

def class_folder(files: Sequence[str]) -> Path:
    """A temporary folder of links to `files`, one subfolder per parent-folder name (ImageFolder's classes)."""
    root = Path(tempfile.mkdtemp(prefix="realfake-bench-score-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for i, path in enumerate(files):
        target = root / Path(path).parent.name / f"{i:05d}_{Path(path).name}"
        target.parent.mkdir(exist_ok=True)
        os.symlink(os.path.abspath(path), target)
    return root


def cache_dir() -> Path:

    return Path(os.environ.get(CACHE_ENV) or realfake_home() / "cache" / "bench-engines")


def random_model(name: str, image_size: int = IMAGE_SIZE):

    torch.manual_seed(0)
    return build_model(name, image_size=image_size).eval()


def cached_engine(model_name: str, backend: str, device: str, image_size: int = IMAGE_SIZE,
                  precision: str = "fp32", ghost_maps: str | None = None) -> Path:
    """An engine of `model_name` with random weights (seed 0), built once per backend, precision, device
    type, kind of ghost maps (ghost models) and torch version, then reused (an AOT build takes tens of
    seconds on 2 cores)."""
    precision = resolve_precision(precision, device)[0]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    kind = f"-{ghost_maps}" if ghost_maps else ""
    out = cache_dir() / f"{model_name}{kind}@{image_size}-{backend}-{precision}-{device_type}-torch{torch.__version__}"
    if out.is_dir():
        try:
            load_engine(out, device=device).close()
            return out
        except ValueError as exc:  # damaged or stale: build it again
            log.warning("rebuilding cached engine %s: %s", out, exc)
            shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build_engine_from_model(random_model(model_name, image_size), out, architecture=model_name, image_size=image_size,
                            backend=backend, precision=precision, batch=(1, 64, 256), device=device,
                            ghost_maps=ghost_maps)
    log.info("built %s engine for %s in %.0f s (cached in %s)", backend, model_name, time.perf_counter() - start, out)
    return out


# --------------------------------------------------------------------------- one pass each

def naive_pass(folder: Path, model, device: str, batch_size: int, workers: int, image_size: int = IMAGE_SIZE) -> int:
    """The baseline: ImageFolder + DataLoader + eager fp32, as a first script would do it. Returns images."""
    transform = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(MEAN, STD)])
    data = DataLoader(datasets.ImageFolder(str(folder), transform), batch_size=batch_size, num_workers=workers)
    n, p_fake = 0, []
    with torch.inference_mode():
        for images, _ in data:
            p_fake += torch.softmax(model(images.to(device)), dim=1)[:, 1].tolist()
            n += images.shape[0]
    return n


def realfake_pass(folder: Path, engine: Path, variant: Variant, device: str, batch_size: int, workers: int,
                  out: Path) -> int:

    summary = run_score([str(folder)], out, engine=str(engine), loader=variant.loader, device=device,
                        batch_size=batch_size, num_workers=workers, engine_threads=variant.engine_threads,
                        resume=False, progress=False)
    if summary["errors"] or summary["scored"] != summary["files"]:
        raise RuntimeError(f"{variant.name}: scored {summary['scored']} of {summary['files']} files, "
                           f"{summary['errors']} errors (see {summary['errors_file']})")
    return summary["scored"]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended: the decode
    workers of a DataLoader are joined at the end of each pass, DALI's threads are this process's."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of one pass."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    n = fn(*args)
    return n, time.perf_counter() - start, cpu_seconds() - cpu_start


# --------------------------------------------------------------------------- the suite

def model_figures(model_name: str, folder: Path, n_files: int, source: str, cfg: ScoreSuiteConfig,
                  device: str) -> list[Figure]:

    variants = [v for v in cfg.variants if (v.loader != "dali" or dali_installed())
                and (v.precision != "auto" or resolve_precision("auto", device)[0] != "fp32")]
    engines = {(v.backend, v.precision): cached_engine(model_name, v.backend, device, cfg.image_size, v.precision)
               for v in variants}
    model = random_model(model_name, cfg.image_size).to(device)
    out_dir = Path(tempfile.mkdtemp(prefix="realfake-bench-out-"))
    passes = {"naive": lambda: naive_pass(folder, model, device, cfg.batch_size, cfg.workers, cfg.image_size)}
    for v in variants:
        passes[v.name] = (lambda v=v: realfake_pass(folder, engines[(v.backend, v.precision)], v, device, cfg.batch_size,
                                                    cfg.workers, out_dir / f"{v.name}.csv"))
    samples: dict[str, list[float]] = {name: [] for name in passes}
    cpu_ms: dict[str, list[float]] = {name: [] for name in passes}
    cores: dict[str, list[float]] = {name: [] for name in passes}
    try:
        # Warm-up: page cache, oneDNN primitives, the first import of each loader; not timed.
        for fn in passes.values():
            fn()
        # Repeats interleave the settings, so that a slow spell of the machine hits them all alike.
        for _ in range(cfg.repeats):
            for name, fn in passes.items():
                n, seconds, cpu = timed(fn)
                if n != n_files:
                    raise RuntimeError(f"{name} pass saw {n} of {n_files} images")
                samples[name].append(n / seconds)
                cpu_ms[name].append(cpu / n * 1e3)
                cores[name].append(cpu / seconds)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    prefix = f"{SUITE}/e2e@{cfg.image_size}/{model_name}"
    params = {"image_size": cfg.image_size, "batch_size": cfg.batch_size, "workers": cfg.workers, "n_files": n_files,
              "data": source, "passes_per_repeat": 1}
    settings = {v.name: {"backend": v.backend, "loader": v.loader, "draft": True,
                         "precision": resolve_precision(v.precision, device)[0],
                         "engine_threads": v.engine_threads or "auto"} for v in variants}
    settings["naive"] = {"backend": "eager model", "loader": "ImageFolder+DataLoader", "draft": False}
    figures = {name: Figure.from_samples(SUITE, f"{prefix}/{name}", values, params={**params, **settings[name]})
               for name, values in samples.items()}
    # What each pass cost the CPU, and how busy it kept the cores: on a CPU, img/s = cores busy x 1000 /
    # CPU ms per image, so these two say whether a pass is short of work (idle cores) or of CPU.
    for name in passes:
        figures[f"{name}/cpu_ms_per_img"] = Figure.from_samples(
            SUITE, f"{prefix}/{name}/cpu_ms_per_img", cpu_ms[name], unit="ms", higher_is_better=False,
            params={**params, **settings[name]})
        figures[f"{name}/cores_busy"] = Figure.from_samples(
            SUITE, f"{prefix}/{name}/cores_busy", cores[name], unit="cores", params={**params, **settings[name]})
    out = [figures["naive"], figures["naive/cpu_ms_per_img"], figures["naive/cores_busy"]]
    for v in variants:
        out += [figures[v.name], ratio_figure(figures[v.name], figures["naive"], f"{prefix}/{v.name}_vs_naive"),
                figures[f"{v.name}/cpu_ms_per_img"], figures[f"{v.name}/cores_busy"]]
    return out


def run(quick: bool, device: str, *, n_files: int | None = None, repeats: int | None = None,
        models: Sequence[str] | None = None) -> list[Figure]:
    """The suite's figures on `device` ("cpu" or "cuda[:N]"); the keywords narrow it (tests, exploring)."""
    cfg = QUICK if quick else FULL
    cfg = replace(cfg, n_files=n_files or cfg.n_files, repeats=repeats or cfg.repeats,
                  models=tuple(models or cfg.models))
    files, source = bench_images(cfg.n_files)
    folder = class_folder(files)
    log.info("score suite: %d files from %s, models %s", len(files), source, ", ".join(cfg.models))
    figures = []
    for model_name in cfg.models:
        figures += model_figures(model_name, folder, len(files), source, cfg, device)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="realfake score end to end vs a naive ImageFolder baseline.")
    parser.add_argument("--full", action="store_true", help="full mode (both models, every setting, more files)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--n-files", type=int, default=None, help="files per pass (default: the mode's)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--models", default=None, help="comma-separated model names (default: the mode's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = args.models.split(",") if args.models else None
    print(figures_table(run(quick=not args.full, device=args.device, n_files=args.n_files, repeats=args.repeats,
                            models=models)))


if __name__ == "__main__":
    main()
