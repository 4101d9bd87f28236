"""Standalone GPU check of the inference engines: one table, eager fp16 vs compile vs aot (and
tensorrt where torch_tensorrt is installed), for simple_cnn@128 and resnet18@224 at batch 256.

    python benchmarks/gpu_engines.py                 # from a checkout; no install needed
    python benchmarks/gpu_engines.py --json out.json

Each engine is built as `realfake engine build` builds one (from random weights: throughput does
not depend on them), so every row also shows the build's parity against eager fp32 (max |dp| on 64
random images) and what the build and the first call cost. The timed call is Engine.predict on a
batch already on the GPU. Every measurement runs in a process of its own: a failing backend, even one
that crashes the interpreter (AOTInductor's fp16 build on torch 2.11 + CUDA 13 ended the whole run
with a segmentation fault once), prints its error in the table and the others still run. After the
first case's engines come four torch.compile probes of the bare model (COMPILE_PROBES). Budget (not
measured yet): about 3-4 minutes on an H200 including compiles.

Needs torch with CUDA; imports `realfake` from the installed package or, failing that, from the
checkout this file lives in (a temporary `realfake` package of symlinks to its folders).
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

CASES = (("simple_cnn", 128), ("resnet18", 224))
BACKENDS = ("eager", "compile", "aot", "tensorrt")  # each at --precision (fp16), after eager fp32; then aot fp32


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(predict, images, *, min_seconds: float, repeats: int) -> float:
    """Median img/s over `repeats` timed runs of about `min_seconds` each, after 3 warm-up calls."""
    device = str(images.device)
    for _ in range(3):
        predict(images)
    _sync(device)
    start = time.perf_counter()
    predict(images)
    _sync(device)
    steps = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            predict(images)
        _sync(device)
        rates.append(images.shape[0] * steps / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def measure(model_name: str, image_size: int, backend: str, precision: str, *, batch: int, scratch: Path,
            min_seconds: float, repeats: int, device: str = "cuda") -> dict:
    import torch
    from realfake.engines.backends import backend_module
    from realfake.engines.build import build_engine_from_model, random_validation
    from realfake.engines.runtime import load_engine
    from realfake.models import build_model, input_shape

    row = job_row(dict(model_name=model_name, image_size=image_size, backend=backend, precision=precision, batch=batch))
    reason = backend_module(backend).unavailable_reason(device)
    if reason:
        return {**row, "error": f"not available: {reason.split(':')[0]}"}
    torch.manual_seed(0)
    model = build_model(model_name, image_size=image_size).eval()
    started = time.perf_counter()
    engine_dir = build_engine_from_model(
        model, scratch / f"{model_name}-{image_size}-{backend}-{precision}", architecture=model_name,
        image_size=image_size, backend=backend, precision=precision, batch=(1, batch, batch), device=device,
        validation=random_validation(input_shape(model_name, image_size), n=64, batch_size=64))
    row["build_s"] = time.perf_counter() - started
    torch._dynamo.reset()
    images = torch.randn(batch, *input_shape(model_name, image_size), device=device)
    started = time.perf_counter()
    engine = load_engine(engine_dir, device=device)
    engine.predict(images)
    _sync(device)
    row["load_first_call_s"] = time.perf_counter() - started
    meta = engine.meta
    row["max_abs_diff_p"] = meta["parity"]["max_abs_diff_p"]
    row["img_s"] = throughput(engine.predict, images, min_seconds=min_seconds, repeats=repeats)
    engine.close()
    return row


# Why was `compile` fp16 3x slower than eager fp16 on the H200 (docs/gpu-h200.md)? These variants of
# torch.compile on the bare model (first case only) tell apart the engine's two choices: autocast
# around the compiled module vs weights converted to the precision (as `aot` does), and the batch
# dimension marked dynamic (as the engine does) vs static.
COMPILE_PROBES = ("autocast-dynamic", "autocast-static", "weights-dynamic", "weights-static")


def measure_compile_probe(model_name: str, image_size: int, probe: str, precision: str, *, batch: int,
                          min_seconds: float, repeats: int, device: str = "cuda", **_) -> dict:
    import torch
    from realfake.engines.backends.common import PRECISION_DTYPES, AutocastRunner, CastInput
    from realfake.models import build_model, input_shape

    row = job_row(dict(model_name=model_name, image_size=image_size, probe=probe, precision=precision, batch=batch))
    torch.manual_seed(0)
    model = build_model(model_name, image_size=image_size).eval().to(device).to(memory_format=torch.channels_last)
    dtype = PRECISION_DTYPES[precision]
    weights = probe.startswith("weights") and precision != "fp32"
    compiled = torch.compile(CastInput(model.to(dtype), dtype) if weights else model)
    runner = compiled if weights else AutocastRunner(compiled, device, precision)
    dynamic = probe.endswith("dynamic")

    def predict(images):
        if dynamic:
            torch._dynamo.mark_dynamic(images, 0)
        with torch.inference_mode():
            return runner(images)

    images = torch.randn(batch, *input_shape(model_name, image_size), device=device).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    predict(images)
    _sync(device)
    row["load_first_call_s"] = time.perf_counter() - started
    row["img_s"] = throughput(predict, images, min_seconds=min_seconds, repeats=repeats)
    return row


def table(rows: list[dict], precision: str = "fp16") -> str:
    """One row per engine; ratios to eager at `precision` of the same model."""
    base = {r["model"]: r["img_s"] for r in rows
            if (r["backend"], r["precision"]) == ("eager", precision) and "img_s" in r}
    headers = ["model", "engine", "batch", "img/s", f"vs eager {precision}", "build s", "load+1st s", "max |dp|",
               "note"]
    body = []
    for r in rows:
        ok = "img_s" in r
        ratio = f"{r['img_s'] / base[r['model']]:.2f}x" if ok and r["model"] in base else "-"
        body.append([r["model"], f"{r['backend']}-{r['precision']}", str(r["batch"]),
                     f"{r['img_s']:,.0f}" if ok else "-", ratio,
                     f"{r['build_s']:.1f}" if "build_s" in r else "-",
                     f"{r['load_first_call_s']:.1f}" if "load_first_call_s" in r else "-",
                     f"{r['max_abs_diff_p']:.1e}" if "max_abs_diff_p" in r else "-", r.get("error", "")])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


ROW_PREFIX = "GPU-ENGINES-ROW "


def job_row(job: dict) -> dict:
    """The identifying columns of a job's row (what a failed measurement still shows)."""
    backend = f"probe:compile-{job['probe']}" if "probe" in job else job["backend"]
    return {"model": f"{job['model_name']}@{job['image_size']}", "backend": backend, "precision": job["precision"],
            "batch": job["batch"]}


def measure_in_child(job: dict, timeout_s: float) -> dict:
    """measure(**job) in a fresh interpreter: the row it prints, or the way it died."""
    row = job_row(job)
    try:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"no result within {timeout_s:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(ROW_PREFIX):
            return json.loads(line[len(ROW_PREFIX):])
    how = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
           else f"exit {done.returncode}")
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    sys.stderr.write(done.stderr[-3000:])
    return {**row, "error": f"{how}: {last[:140]}"}


def run_one(job: dict) -> int:
    """The child's side of measure_in_child: one row, printed as JSON."""
    from standalone import import_realfake

    import_realfake("realfake.engines.build")
    import torch

    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    try:
        if "probe" in job:
            row = measure_compile_probe(**job)
        else:
            row = measure(**{**job, "scratch": Path(job["scratch"])})
    except Exception as exc:  # report and go on: one backend must not hide the others
        row = {**job_row(job), "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
        if not isinstance(exc, ValueError):  # ValueErrors are our own one-line explanations
            traceback.print_exc(limit=5)
    print(ROW_PREFIX + json.dumps(row), flush=True)
    return 0


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--one":
        return run_one(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--device", default="cuda",
                        help="cuda[:N]; cpu only for a dry run of this script (fp16 rows then fail, as they should)")
    parser.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                        help="precision of the engines compared (eager fp32 is always measured too)")
    parser.add_argument("--case", action="append", metavar="MODEL@SIZE",
                        help="replace the cases (repeatable), e.g. simple_cnn@32 for a quick dry run")
    parser.add_argument("--row-timeout", type=float, default=150.0, help="seconds for one engine's build and timing")
    parser.add_argument("--compile-probes", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch.compile variants on the first case (see COMPILE_PROBES)")
    args = parser.parse_args(argv)
    cases = [(c.split("@")[0], int(c.split("@")[1])) for c in args.case] if args.case else CASES

    from standalone import import_realfake

    how = import_realfake("realfake.engines.build")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: torch sees no CUDA device: this script measures GPU engines (--device cpu: dry run)",
              file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU (dry run)"
    print(f"realfake: {how}; torch {torch.__version__}; {where}", flush=True)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="realfake-gpu-engines-") as scratch:
        for model_name, image_size in cases:
            # aot also at fp32: whether a failing reduced-precision aot build fails for its precision
            variants = [("eager", "fp32")] + [(b, args.precision) for b in BACKENDS] + [("aot", "fp32")]
            for backend, precision in dict.fromkeys(variants):
                t0 = time.perf_counter()
                job = dict(model_name=model_name, image_size=image_size, backend=backend, precision=precision,
                           batch=args.batch, scratch=scratch, min_seconds=args.min_seconds, repeats=args.repeats,
                           device=args.device)
                row = measure_in_child(job, args.row_timeout)
                rows.append(row)
                print(f"  {row['model']} {backend}-{precision}: "
                      + (f"{row['img_s']:,.0f} img/s" if "img_s" in row else row.get("error", "?"))
                      + f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
            # the probes right after the first case, so that a time limit cuts the second case instead
            for probe in COMPILE_PROBES if args.compile_probes and (model_name, image_size) == cases[0] else ():
                job = dict(model_name=model_name, image_size=image_size, probe=probe, backend="compile",
                           precision=args.precision, batch=args.batch, min_seconds=args.min_seconds,
                           repeats=args.repeats, device=args.device)
                row = measure_in_child(job, args.row_timeout)
                rows.append(row)
                print(f"  {row['model']} {row['backend']}-{args.precision}: "
                      + (f"{row['img_s']:,.0f} img/s" if "img_s" in row else row.get("error", "?")), flush=True)
    print()
    print(table(rows, args.precision))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
