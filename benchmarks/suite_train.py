"""The `train` suite: images/s of one training step per model, eager against torch.compile.

A step is what `engines.trainer.train_one_epoch` does per batch: forward, cross-entropy, backward,
Adam step, in float32, on a fixed batch of random tensors already on the device. No loader runs: this
is the model's cost alone (the `pipelines` suite measures the decoder, `score` both together).

Figures per model and image size, e.g. for simple_cnn at 128 px:
  train/simple_cnn@128/eager              img/s, eager step
  train/simple_cnn@128/compiled           img/s, torch.compile'd model (optimizer step stays eager)
  train/simple_cnn@128/compiled_vs_eager  x, compiled / eager, measured in the same run
  train/simple_cnn@128/recompile_s        s, how much longer the first compiled step takes than a
                                          steady one after torch._dynamo.reset() in this process
                                          (dynamo trace, AOTAutograd, inductor cache hits): the
                                          compile work proper, without one-time imports
  train/simple_cnn@128/compile_warm_s     s, the same in a fresh interpreter with the on-disk
                                          inductor cache filled: what a new training job pays
                                          (full mode only)
  train/simple_cnn@128/compile_cold_s     s, the same from an empty cache: what the first job
                                          after a torch upgrade or model change pays (full mode
                                          only; about 25 s for simple_cnn, 80 s for resnet18 on
                                          2 CPU cores)

Quick mode: simple_cnn and resnet18 at 128 px, batch 8 (128 on a GPU), 5 short repeats; under
2 minutes on 2 CPU cores once the inductor cache is warm (the very first run on a machine also pays
the cold compiles). Full mode: every model of `realfake.models.MODEL_NAMES` at 128 px plus
resnet18 at 224, batch 32 (256 on a GPU), 7 repeats of >= 2 s, and fresh-process compile times.
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from realfake.benchmarks.harness import Figure, measure_throughput, ratio_figure, sync_for
from realfake.models import MODEL_NAMES, build_model
from tqdm import tqdm

log = logging.getLogger(__name__)

SUITE = "train"
MODES = ("eager", "compiled")
COMPILE_TIMEOUT_S = 1800
# GPU steps take milliseconds: let a repeat run its full min_repeat_s rather than stop at 100 steps.
MAX_STEPS_PER_REPEAT = 2000


@dataclass(frozen=True)
class TrainSuiteConfig:
    models: tuple[tuple[str, int], ...]  # (model name, image size)
    batch_size_cpu: int
    batch_size_gpu: int
    repeats: int
    warmup: int
    min_repeat_s: float
    compile_repeats: int  # in-process recompiles timed for recompile_s
    fresh_process_compile: bool  # compile_warm_s and compile_cold_s, one subprocess each


QUICK = TrainSuiteConfig(models=(("simple_cnn", 128), ("resnet18", 128)), batch_size_cpu=8, batch_size_gpu=128,
                         repeats=5, warmup=2, min_repeat_s=0.5, compile_repeats=2, fresh_process_compile=False)
FULL = TrainSuiteConfig(models=tuple((name, 128) for name in MODEL_NAMES) + (("resnet18", 224),),
                        batch_size_cpu=32, batch_size_gpu=256, repeats=7, warmup=3, min_repeat_s=2.0,
                        compile_repeats=3, fresh_process_compile=True)


def run(quick: bool, device: str, *, models: Sequence[str] | None = None, image_size: int | None = None,
        batch_size: int | None = None, repeats: int | None = None, modes: Sequence[str] = MODES,
        fresh_process_compile: bool | None = None) -> list[Figure]:
    """The suite's figures. The keyword arguments narrow it (tests, quick looks at one model):
    `models` and `image_size` replace the mode's (model, size) list, the others its settings."""
    cfg = QUICK if quick else FULL
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown train-suite mode(s) {unknown or modes}: choose from {', '.join(MODES)}")
    plan = list(cfg.models)
    if models is not None or image_size is not None:
        names = list(models) if models is not None else list(dict.fromkeys(m for m, _ in cfg.models))
        plan = [(m, image_size or 128) for m in names]
    on_gpu = device.startswith("cuda")
    batch = batch_size or (cfg.batch_size_gpu if on_gpu else cfg.batch_size_cpu)
    fresh = cfg.fresh_process_compile if fresh_process_compile is None else fresh_process_compile

    figures: list[Figure] = []
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on_gpu  # as torchvision's reference trainer: autotune fixed shapes
    try:
        for model_name, size in tqdm(plan, desc="train suite", unit="model", leave=False):
            figures += _model_figures(model_name, size, device=device, batch=batch, cfg=cfg, repeats=repeats,
                                      modes=modes, fresh_process_compile=fresh and "compiled" in modes)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch._dynamo.reset()
    return figures


def _training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   labels: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def _setup(model_name: str, size: int, device: str, batch: int):
    torch.manual_seed(0)
    model = build_model(model_name, image_size=size).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    return model, optimizer, images, labels


def _timed(fn: Callable[[], None], sync: Callable[[], None] | None) -> float:
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


def _model_figures(model_name: str, size: int, *, device: str, batch: int, cfg: TrainSuiteConfig,
                   repeats: int | None, modes: Sequence[str], fresh_process_compile: bool) -> list[Figure]:
    sync = sync_for(device)
    prefix = f"{SUITE}/{model_name}@{size}"
    common = {"model": model_name, "image_size": size, "batch_size": batch, "optimizer": "adam",
              "dtype": "float32", "warmup": cfg.warmup}
    n_repeats = repeats or cfg.repeats
    figures: dict[str, Figure] = {}

    def throughput(step) -> tuple[list[float], dict]:
        m = measure_throughput(step, items_per_step=batch, repeats=n_repeats, warmup=cfg.warmup,
                               min_repeat_s=cfg.min_repeat_s, max_steps_per_repeat=MAX_STEPS_PER_REPEAT, sync=sync)
        return m.samples, {**common, "steps_per_repeat": m.steps_per_repeat}

    if "eager" in modes:
        model, optimizer, images, labels = _setup(model_name, size, device, batch)
        samples, params = throughput(_training_step(model, optimizer, images, labels))
        figures["eager"] = Figure.from_samples(SUITE, f"{prefix}/eager", samples, params=params)
        del model, optimizer

    if "compiled" in modes:
        model, optimizer, images, labels = _setup(model_name, size, device, batch)
        torch._dynamo.reset()
        step = _training_step(torch.compile(model), optimizer, images, labels)
        # The first compile of this process: cold or warm depending on the on-disk inductor cache,
        # so it is logged, not recorded. The recompiles below always find the cache warm.
        first_s = _timed(step, sync)
        log.info("%s: first compiled step of this process %.1f s", prefix, first_s)
        first_steps_s = []
        for _ in range(cfg.compile_repeats):
            torch._dynamo.reset()
            step = _training_step(torch.compile(model), optimizer, images, labels)
            first_steps_s.append(_timed(step, sync))
        samples, params = throughput(step)
        figures["compiled"] = Figure.from_samples(SUITE, f"{prefix}/compiled", samples, params=params)
        steady_s = batch / figures["compiled"].median
        if first_steps_s:
            figures["recompile_s"] = Figure.from_samples(
                SUITE, f"{prefix}/recompile_s", [max(0.0, t - steady_s) for t in first_steps_s], unit="s",
                higher_is_better=False, params={**common, "process": "same", "inductor_cache": "warm"})
        if fresh_process_compile:
            # The in-process compile above filled the on-disk cache, so the warm figure finds it full.
            for kind, empty_cache in (("warm", False), ("cold", True)):
                seconds = fresh_process_compile_seconds(model_name, size, batch=batch, device=device,
                                                        empty_cache=empty_cache)
                figures[f"compile_{kind}_s"] = Figure.from_samples(
                    SUITE, f"{prefix}/compile_{kind}_s", [seconds], unit="s", higher_is_better=False,
                    params={**common, "process": "fresh", "inductor_cache": "empty" if empty_cache else "warm"})
        del model, optimizer
        torch._dynamo.reset()

    if "eager" in figures and "compiled" in figures:
        figures["compiled_vs_eager"] = ratio_figure(figures["compiled"], figures["eager"],
                                                    f"{prefix}/compiled_vs_eager")
    return list(figures.values())


def fresh_process_compile_seconds(model_name: str, size: int, *, batch: int, device: str,
                                  empty_cache: bool) -> float:
    """How much longer the first compiled training step takes than a steady one, in a new interpreter
    (nothing compiled in memory), with the on-disk inductor/Triton cache as it is or emptied."""
    with tempfile.TemporaryDirectory(prefix="realfake-inductor-") as cache:
        env = dict(os.environ)
        if empty_cache:
            env.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
        cmd = [sys.executable, "-m", "realfake.benchmarks.suite_train", "--compile-once", model_name,
               "--image-size", str(size), "--batch-size", str(batch), "--device", device]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"compile of {model_name}@{size} in a fresh process failed (exit {proc.returncode}): {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(0.0, result["first_step_s"] - result["steady_step_s"])


def _compile_once_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time the first torch.compile'd training step (used by the train suite).")
    parser.add_argument("--compile-once", metavar="MODEL", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--device", required=True)
    args = parser.parse_args(argv)
    sync = sync_for(args.device)
    torch.backends.cudnn.benchmark = args.device.startswith("cuda")
    model, optimizer, images, labels = _setup(args.compile_once, args.image_size, args.device, args.batch_size)
    step = _training_step(torch.compile(model), optimizer, images, labels)
    first = _timed(step, sync)
    steady = min(_timed(step, sync) for _ in range(3))
    print(json.dumps({"first_step_s": first, "steady_step_s": steady}))


if __name__ == "__main__":
    _compile_once_main()
