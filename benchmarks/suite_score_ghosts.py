"""The `score-ghosts` suite: `realfake score` with a ghost_cnn engine of "pil" maps against one of "dct"
maps (the same architecture and weights), side by side in one run.

Data: the CIPLAB set at ../shared/data/real_and_fake_face when present (or the folder in
$REALFAKE_BENCH_DATA), else synthetic 600x600 progressive JPEG faces (`suite_pipelines.bench_images`).

Each pass is `run_score` over the folder with the product's settings (loader auto: on the CPU the
DataLoader workers compute the maps, 2 of them; batch 64; the engine's compiled artifact, AOTInductor),
timed from start to end, start-up included:
  score-ghosts/e2e@600/ghost_cnn/pil                 img/s   engine of pil maps (PIL re-saves a file)
  score-ghosts/e2e@600/ghost_cnn/dct                 img/s   engine of dct maps (PIL decode to YCbCr +
                                                             the batched tensor maps)
  score-ghosts/e2e@600/ghost_cnn/dct_vs_pil          x       goal on 2 CPU cores: >= 5 (dct >= 55 img/s)
  score-ghosts/e2e@600/ghost_cnn/<pass>/cpu_ms_per_img, /cores_busy   as in the score suite
Full mode adds `score --loader dali` with the dct engine (DALI decodes, on the CPU here; the maps in
this process): .../dct-dali and .../dct-dali_vs_pil.

Where the time goes (ms of CPU a file, one thread, in this process, on the first PARTS_FILES files):
  score-ghosts/parts@600/decode     PIL decode to YCbCr planes + header (`load_ghost_input`)
  score-ghosts/parts@600/dct-maps   the dct maps of decoded files (`maps_of_inputs`, batches of 8; the
                                    workers' allocator setting applied)
  score-ghosts/parts@600/pil-maps   the pil maps (`jpeg_ghosts.ghost_maps`: decode + 11 re-saves)
  score-ghosts/parts@600/model      the engine on maps (batch 64)

Quick mode: 48 files, 2 repeats (1-2 minutes on 2 CPU cores after the engines are built, ~1 minute
each the first time). Full mode: 300 files, 3 repeats. Engines have random weights (seed 0) and are
cached like the score suite's (`suite_score.cached_engine`).

Run alone: python -m realfake.benchmarks.suite_score_ghosts [--full] [--n-files N] [--backend aot]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from realfake.benchmarks.harness import Figure, figures_table, ratio_figure
from realfake.benchmarks.suite_pipelines import bench_images
from realfake.benchmarks.suite_score import cached_engine, class_folder, timed
from realfake.engines.runtime import load_engine
from realfake.jobs.tasks.score import run_score
from realfake.pipelines.ghost_inputs import keep_freed_memory
from realfake.pipelines.pixel_loaders import dali_installed

log = logging.getLogger(__name__)

SUITE = "score-ghosts"
MODEL = "ghost_cnn"
IMAGE_SIZE = 600
PARTS_FILES = 16


@dataclass(frozen=True)
class Pass:
    name: str
    ghost_maps: str
    loader: str = "auto"


PIL, DCT, DCT_DALI = Pass("pil", "pil"), Pass("dct", "dct"), Pass("dct-dali", "dct", "dali")


@dataclass(frozen=True)
class GhostScoreConfig:
    n_files: int
    repeats: int
    passes: tuple[Pass, ...]
    backend: str = "aot"
    batch_size: int = 64
    workers: int = 2
    image_size: int = IMAGE_SIZE
    parts: bool = True


QUICK = GhostScoreConfig(n_files=48, repeats=2, passes=(PIL, DCT))
FULL = GhostScoreConfig(n_files=300, repeats=3, passes=(PIL, DCT, DCT_DALI))


def score_pass(folder: Path, engine: Path, spec: Pass, device: str, cfg: GhostScoreConfig, out: Path) -> int:
    """One `run_score` pass over `folder`; the number of files scored."""
    summary = run_score([str(folder)], out, engine=str(engine), loader=spec.loader, device=device,
                        batch_size=cfg.batch_size, num_workers=cfg.workers, resume=False, progress=False)
    if summary["errors"] or summary["scored"] != summary["files"]:
        raise RuntimeError(f"{spec.name}: scored {summary['scored']} of {summary['files']} files, "
                           f"{summary['errors']} errors (see {summary['errors_file']})")
    return summary["scored"]


def pass_figures(files: Sequence[str], source: str, cfg: GhostScoreConfig, device: str,
                 engines: dict[str, Path]) -> list[Figure]:
    """img/s, CPU ms a file and cores busy of each pass, and each dct pass against pil; the passes take
    turns so that a busy spell of the machine slows them alike."""
    folder = class_folder(files)
    out_dir = Path(tempfile.mkdtemp(prefix="realfake-bench-ghost-out-"))
    passes = [p for p in cfg.passes if p.loader != "dali" or dali_installed()]
    samples = {p.name: {"img/s": [], "ms": [], "cores": []} for p in passes}
    try:
        for p in passes:  # warm-up: page cache, first imports, the engine's first load
            score_pass(folder, engines[p.ghost_maps], p, device, cfg, out_dir / f"{p.name}.csv")
        for _ in range(cfg.repeats):
            for p in passes:
                n, seconds, cpu = timed(score_pass, folder, engines[p.ghost_maps], p, device, cfg,
                                        out_dir / f"{p.name}.csv")
                samples[p.name]["img/s"].append(n / seconds)
                samples[p.name]["ms"].append(cpu / n * 1e3)
                samples[p.name]["cores"].append(cpu / seconds)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    prefix = f"{SUITE}/e2e@{cfg.image_size}/{MODEL}"
    common = {"image_size": cfg.image_size, "batch_size": cfg.batch_size, "workers": cfg.workers,
              "n_files": len(files), "data": source, "backend": cfg.backend}
    figures: dict[str, Figure] = {}
    for p in passes:
        params = {**common, "ghost_maps": p.ghost_maps, "loader": p.loader}
        figures[p.name] = Figure.from_samples(SUITE, f"{prefix}/{p.name}", samples[p.name]["img/s"], params=params)
        figures[f"{p.name}/cpu"] = Figure.from_samples(SUITE, f"{prefix}/{p.name}/cpu_ms_per_img",
                                                       samples[p.name]["ms"], unit="ms", higher_is_better=False,
                                                       params=params)
        figures[f"{p.name}/cores"] = Figure.from_samples(SUITE, f"{prefix}/{p.name}/cores_busy",
                                                         samples[p.name]["cores"], unit="cores", params=params)
    out = []
    for p in passes:
        out += [figures[p.name], figures[f"{p.name}/cpu"], figures[f"{p.name}/cores"]]
        if p.ghost_maps != "pil" and "pil" in figures:
            out.append(ratio_figure(figures[p.name], figures["pil"], f"{prefix}/{p.name}_vs_pil"))
    return out


def part_figures(files: Sequence[str], cfg: GhostScoreConfig, engine: Path) -> list[Figure]:
    """ms of CPU a file of each step, one torch thread, in this process (see the module docstring)."""
    from realfake.pipelines.jpeg_ghosts import ghost_maps
    from realfake.pipelines.jpeg_ghosts_torch import NeedsReference, load_ghost_input, maps_of_inputs

    def cpu_ms(fn, count: int) -> float:
        start = time.process_time()
        fn()
        return (time.process_time() - start) / count * 1e3

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    keep_freed_memory()  # as the DataLoader workers run (ghost_inputs.configure_worker)
    try:
        decoded = []
        for path in files:
            try:
                decoded.append(load_ghost_input(path, cfg.image_size))
            except NeedsReference:
                continue
        model = load_engine(engine)
        maps = maps_of_inputs(decoded[:8], cfg.image_size)  # warm-up
        batch = maps.repeat(-(-64 // len(maps)), 1, 1, 1)[:64]
        model.predict(batch)
        steps = {
            "decode": (lambda: [load_ghost_input(p, cfg.image_size) for p in files], len(files)),
            "dct-maps": (lambda: [maps_of_inputs(decoded[i:i + 8], cfg.image_size) for i in range(0, len(decoded), 8)],
                         len(decoded)),
            "pil-maps": (lambda: [ghost_maps(p, cfg.image_size) for p in files], len(files)),
            "model": (lambda: model.predict(batch), len(batch)),
        }
        samples = {name: [cpu_ms(fn, count) for _ in range(max(1, cfg.repeats))] for name, (fn, count) in steps.items()}
    finally:
        torch.set_num_threads(threads)
    params = {"image_size": cfg.image_size, "files": len(files), "threads": 1, "backend": cfg.backend}
    return [Figure.from_samples(SUITE, f"{SUITE}/parts@{cfg.image_size}/{name}", values, unit="ms",
                                higher_is_better=False, params=params) for name, values in samples.items()]


def run(quick: bool, device: str, *, files: Sequence[str] | None = None, n_files: int | None = None,
        repeats: int | None = None, image_size: int | None = None, backend: str | None = None,
        parts: bool | None = None) -> list[Figure]:
    """The suite's figures on `device`; the keywords narrow it (tests: a few small files, eager engines)."""
    cfg = QUICK if quick else FULL
    cfg = replace(cfg, n_files=n_files or cfg.n_files, repeats=repeats or cfg.repeats,
                  image_size=image_size or cfg.image_size, backend=backend or cfg.backend,
                  parts=cfg.parts if parts is None else parts)
    source = "given files"
    if files is None:
        files, source = bench_images(cfg.n_files)
    files = list(files)
    log.info("score-ghosts suite: %d files from %s, %s engines", len(files), source, cfg.backend)
    engines = {kind: cached_engine(MODEL, cfg.backend, device, cfg.image_size, "fp32", ghost_maps=kind)
               for kind in sorted({p.ghost_maps for p in cfg.passes})}
    figures = pass_figures(files, source, cfg, device, engines)
    if cfg.parts:
        figures += part_figures(files[:PARTS_FILES], cfg, engines["dct"])
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="realfake score with a ghost engine of pil maps vs one of dct maps.")
    parser.add_argument("--full", action="store_true", help="full mode (300 files, 3 repeats, + the DALI pass)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--n-files", type=int, default=None, help="files per pass (default: the mode's)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--backend", default=None, help="engine backend (default aot)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(figures_table(run(quick=not args.full, device=args.device, n_files=args.n_files, repeats=args.repeats,
                            backend=args.backend)))


if __name__ == "__main__":
    main()
