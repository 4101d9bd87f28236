"""The `engines` suite: images/s of inference engines per backend, precision and batch size.

Each engine is built the way `realfake engine build` builds one (`build_engine_from_model`, with
its parity check on random images) from a model with random weights: throughput does not depend on
the weights, and no training run is needed. The timed call is `Engine.predict` on a batch already
on the device: the model's cost plus softmax and the copy of N probabilities to the CPU, no decoder
(the `score` suite measures decode and model together).

Figures per model and image size, e.g. simple_cnn at 128 px:
  engines/simple_cnn@128/aot-fp32/b64                 img/s at batch 64
  engines/simple_cnn@128/aot-fp32/b64/vs_eager_fp32   x, / eager fp32 at the same batch, same run
  engines/simple_cnn@128/aot-fp32/build_s             s, build incl. the parity check
  engines/simple_cnn@128/aot-fp32/load_s              s, load_engine + the first call (for
                                                      `compile`: the compile every scoring job pays)
  engines/simple_cnn@128/nchw-fp32/b64                plain eager module, NCHW input (no engine):
                                                      the usual baseline, beside the engines'
                                                      channels_last eager

Quick: simple_cnn@128, batch 64, fp32: eager, compile, aot (about 2 minutes on 2 CPU cores with
a warm inductor cache; AOT and compile builds dominate). Full: simple_cnn@128 and resnet18@128 on
the CPU (resnet18@224 on a GPU), batches 1, 8, 64, 256, CPU precisions fp32 and bf16 (bf16 only
where the CPU has bf16 units: emulated bf16 runs many times slower), GPU precisions fp32 (eager)
and fp16, plus tensorrt where torch_tensorrt is installed.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from realfake.benchmarks.harness import Figure, measure_throughput, ratio_figure, sync_for
from realfake.engines.backends import backend_module
from realfake.engines.build import build_engine_from_model, random_validation
from realfake.engines.devices import cpu_has_bf16_units, resolve_device
from realfake.engines.runtime import load_engine
from realfake.jobs.service.tables import format_table
from realfake.models import build_model, input_shape
from tqdm import tqdm

log = logging.getLogger(__name__)

SUITE = "engines"
BASELINE = ("eager", "fp32")
REFERENCE = ("nchw", "fp32")  # a plain eager module on NCHW input, outside any engine


@dataclass(frozen=True)
class EngineSuiteConfig:
    models: tuple[tuple[str, int], ...]  # (model name, image size)
    variants: tuple[tuple[str, str], ...]  # (backend, precision); the baseline first
    batch_sizes: tuple[int, ...]
    repeats: int
    warmup: int
    min_repeat_s: float


def config_for(quick: bool, device: str) -> EngineSuiteConfig:

    if device.startswith("cuda"):
        variants = [BASELINE, ("eager", "fp16"), ("compile", "fp16"), ("aot", "fp16")]
        if backend_module("tensorrt").unavailable_reason(device) is None:
            variants.append(("tensorrt", "fp16"))
        if quick:
            return EngineSuiteConfig((("simple_cnn", 128),), tuple(variants), (256,), 5, 2, 0.3)
        return EngineSuiteConfig((("simple_cnn", 128), ("resnet18", 224)), (*variants, REFERENCE),
                                 (1, 8, 64, 256), 7, 3, 0.5)
    if quick:
        return EngineSuiteConfig((("simple_cnn", 128),), (BASELINE, ("compile", "fp32"), ("aot", "fp32")),
                                 (64,), 3, 1, 0.5)
    variants = [BASELINE, REFERENCE, ("compile", "fp32"), ("aot", "fp32")]
    if cpu_has_bf16_units():
        variants += [("eager", "bf16"), ("compile", "bf16"), ("aot", "bf16")]
    return EngineSuiteConfig((("simple_cnn", 128), ("resnet18", 128)), tuple(variants), (1, 8, 64, 256), 3, 1, 1.0)


def run(quick: bool, device: str, *, models: Sequence[tuple[str, int]] | None = None,
        variants: Sequence[tuple[str, str]] | None = None, batch_sizes: Sequence[int] | None = None,
        repeats: int | None = None) -> list[Figure]:
    """The suite's figures; the keyword arguments narrow the mode's plan (tests, quick looks)."""
    cfg = config_for(quick, device)
    plan_models = tuple(models or cfg.models)
    plan_variants = tuple(variants or cfg.variants)
    sizes = tuple(batch_sizes or cfg.batch_sizes)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="realfake-engines-bench-") as scratch:
        for model_name, image_size in plan_models:
            figures += model_figures(model_name, image_size, device=device, variants=plan_variants,
                                     batch_sizes=sizes, cfg=cfg, repeats=repeats or cfg.repeats,
                                     scratch=Path(scratch))
    return figures


def _variant(backend: str, precision: str) -> str:
    return f"{backend}-{precision}"


def model_figures(model_name: str, image_size: int, *, device: str, variants: Sequence[tuple[str, str]],
                  batch_sizes: Sequence[int], cfg: EngineSuiteConfig, repeats: int, scratch: Path) -> list[Figure]:

    prefix = f"{SUITE}/{model_name}@{image_size}"
    sync = sync_for(device)
    torch.manual_seed(0)
    model = build_model(model_name, image_size=image_size).eval()
    batch_range = (1, max(batch_sizes), max(batch_sizes))
    shape = input_shape(model_name, image_size)
    inputs = {n: torch.randn(n, *shape, device=device) for n in batch_sizes}
    figures: dict[tuple[str, int | str], Figure] = {}
    common = {"model": model_name, "image_size": image_size, "device": device}

    for backend, precision in tqdm(variants, desc=f"engines {model_name}@{image_size}", unit="engine", leave=False):
        name = _variant(backend, precision)
        try:
            if (backend, precision) == REFERENCE:
                reference = model.to(device)
                build_s, load_s = 0.0, 0.0

                def predict(x, reference=reference):
                    return torch.softmax(reference(x), 1)[:, 1].cpu()
            else:
                started = time.perf_counter()
                engine_dir = build_engine_from_model(
                    model, scratch / f"{model_name}-{image_size}-{name}", architecture=model_name,
                    image_size=image_size, backend=backend, precision=precision, batch=batch_range, device=device,
                    validation=random_validation(shape, n=16, batch_size=16))
                build_s = time.perf_counter() - started
                torch._dynamo.reset()  # the compile backend's load then pays a (cache-warm) compile
                started = time.perf_counter()
                engine = load_engine(engine_dir, device=device)
                engine.predict(inputs[max(batch_sizes)])
                if sync:
                    sync()
                load_s = time.perf_counter() - started
                predict = engine.predict
            params = {**common, "backend": backend, "precision": precision, "batch_range": list(batch_range)}
            if (backend, precision) != REFERENCE:
                figures[name, "build_s"] = Figure.from_samples(SUITE, f"{prefix}/{name}/build_s", [build_s], unit="s",
                                                                higher_is_better=False, params=params)
                figures[name, "load_s"] = Figure.from_samples(SUITE, f"{prefix}/{name}/load_s", [load_s], unit="s",
                                                               higher_is_better=False, params=params)
            with torch.inference_mode():
                for n in batch_sizes:
                    x = inputs[n]
                    m = measure_throughput(lambda x=x, predict=predict: predict(x), items_per_step=n, repeats=repeats,
                                           warmup=cfg.warmup, min_repeat_s=cfg.min_repeat_s, sync=sync)
                    figures[name, n] = Figure.from_samples(
                        SUITE, f"{prefix}/{name}/b{n}", m.samples,
                        params={**params, "batch_size": n, "steps_per_repeat": m.steps_per_repeat})
        except Exception as exc:  # one backend failing must not hide the others' figures
            log.warning("%s/%s skipped: %s: %s", prefix, name, type(exc).__name__, str(exc).splitlines()[0][:300])
        finally:
            torch._dynamo.reset()

    baseline = _variant(*BASELINE)
    for (name, key), fig in list(figures.items()):
        if isinstance(key, int) and name != baseline and (baseline, key) in figures:
            figures[name, f"b{key}/ratio"] = ratio_figure(fig, figures[baseline, key],
                                                          f"{prefix}/{name}/b{key}/vs_eager_fp32")
    return list(figures.values())


def speed_table(figures: Sequence[Figure]) -> str:
    """img/s per (model, variant) and batch size, each followed by its ratio to eager fp32."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    batches: list[int] = []
    for fig in figures:
        parts = fig.name.split("/")
        if len(parts) < 4 or not parts[3][:1] == "b" or not parts[3][1:].isdigit():
            continue
        key = (parts[1], parts[2])
        n = int(parts[3][1:])
        if n not in batches:
            batches.append(n)
        cell = rows.setdefault(key, {})
        if fig.unit == "x":
            cell[f"x{n}"] = f"{fig.median:.2f}x"
        else:
            cell[f"b{n}"] = f"{fig.median:,.1f}"
    batches.sort()
    headers = ["model", "engine"] + [h for n in batches for h in (f"b{n} img/s", "vs eager")]
    body = [[model, variant] + [v for n in batches for v in (cells.get(f"b{n}", "-"), cells.get(f"x{n}", "1.00x"
                                if variant == _variant(*BASELINE) and f"b{n}" in cells else "-"))]
            for (model, variant), cells in rows.items()]
    return format_table(headers, body, align_right=range(2, len(headers)))


def main(argv: Sequence[str] | None = None) -> None:


    parser = argparse.ArgumentParser(description="Engine throughput table (the `engines` suite, printed).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", action="append", metavar="NAME@SIZE", help="e.g. simple_cnn@128 (repeatable)")
    parser.add_argument("--variant", action="append", metavar="BACKEND-PRECISION", help="e.g. aot-fp32 (repeatable)")
    parser.add_argument("--batch", action="append", type=int, help="batch size (repeatable)")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    models = [(m.split("@")[0], int(m.split("@")[1])) for m in args.model] if args.model else None
    variants = [tuple(v.split("-", 1)) for v in args.variant] if args.variant else None
    figures = run(args.quick, device, models=models, variants=variants, batch_sizes=args.batch, repeats=args.repeats)
    print(speed_table(figures))
    print()
    for fig in figures:
        if fig.unit == "s":
            print(f"{fig.name}: {fig.median:.1f} s")


if __name__ == "__main__":
    main()
