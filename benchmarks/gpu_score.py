"""Folder scoring on a GPU, end to end, against the decoder's own rate in the same run (< 2 minutes on
one H200), one table out.

    python benchmarks/gpu_score.py [--data DIR] [--n 256] [--copies 40] [--json results.json]

DIR: a folder of JPEGs (searched recursively, e.g. real_and_fake_face, whose files are all progressive);
without --data, N synthetic 600x600 progressive JPEG faces are generated first. Baseline re-encodes
(PIL, quality 95, progressive=False) are made of the same N files, since GPU hardware JPEG decoders
(A100/H100/H200) take baseline JPEGs only: the two kinds are measured apart and never quoted for each
other. Each kind's folder holds COPIES symbolic links to each file (N x COPIES files, 10,240 by
default), so that a pass lasts long enough to measure the steady rate, not the start-up.

Rows (each measurement fails on its own, with its error in the table, and the others still run):
  decode/dali-steady     DALI `mixed` decode + resize to 128 + normalize, steady batches (the reader wraps
                         around): the decoder's rate, the ceiling for scoring
  decode/dali-pass       one pass of the product's DALI loader over the folder's files (pipeline build
                         included, images on the GPU, no model): what scoring does minus the model,
                         the walk and the writer
  decode/torch-pass      the same with the torchvision loader (PIL in worker processes, draft mode,
                         pinned memory), the fallback where DALI is absent
  decode/nvjpeg          torchvision.io.decode_jpeg(device="cuda"), batched, + antialiased resize: a
                         reference GPU decoder outside the product
  score/<model>/<loader> `realfake score` end to end (walk, header checks, decode, engine, CSV rows
                         fsynced per batch): img/s and its ratio to the same loader's decode pass and
                         to the DALI steady rate. Goal: >= 0.9 of DALI's decode-only rate.
  score/simple_cnn/dali-no-header-check   the same without the header checks (their cost)
  score/simple_cnn/dali xLARGE   baseline kind only: a folder of N x --large-copies links (51,200 by
                         default), where the per-run fixed costs weigh less
  fixed/<step>           seconds of the DALI loader's per-pass steps, once each over the folder's files:
                         header screen (`screen_headers`), pipeline build (mixed decoder), first batch.
                         They bound how close a pass of this size can come to the steady rate.

Engines: eager fp16 engines with random weights (the report's Model 1 and ResNet18 at 128 px), built
here on the GPU: on an H200 the model is not the bottleneck, the decoder is.

Needs torch with CUDA, torchvision, PIL, numpy, pyarrow, click, tqdm; NVIDIA DALI for the DALI rows
(they fail alone without it). realfake need not be installed: when `import realfake` fails, the
repository's folders are mapped to `realfake.*` here.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

IMAGE_SIZE = 128
BATCH = 256
GOAL = 0.9  # end-to-end / DALI decode-only


# --------------------------------------------------------------------------- data

def _reencode_baseline(job: tuple[str, str]) -> str:
    from PIL import Image

    src, dst = job
    with Image.open(src) as image:
        image.convert("RGB").save(dst, "JPEG", quality=95, progressive=False)
    return dst


def make_folders(data: str | None, n: int, copies: int, tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """kind -> (folder of n x copies links, the n distinct files), for kinds progressive and baseline."""
    if data:
        files = sorted(str(p) for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
        if not files:
            raise SystemExit(f"no JPEG under {data}")
    else:
        from realfake.pipelines.synth import synth

        start = time.perf_counter()
        root = synth(tmp / "synth", n=n, size=600, progressive=True)
        files = sorted(str(p) for p in root.rglob("*.jpg"))
        print(f"generated {len(files)} 600x600 progressive JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
    (tmp / "baseline").mkdir()
    jobs = [(f, str(tmp / "baseline" / f"{i:05d}.jpg")) for i, f in enumerate(files)]
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        baseline = list(pool.map(_reencode_baseline, jobs, chunksize=8))
    return {kind: (link_folder(originals, copies, tmp / f"folder-{kind}"), originals)
            for kind, originals in (("progressive", files), ("baseline", baseline))}


def link_folder(originals: list[str], copies: int, folder: Path) -> Path:
    """`folder` with `copies` subfolders of symbolic links to `originals`."""
    for c in range(copies):
        sub = folder / f"copy_{c:03d}"
        sub.mkdir(parents=True)
        for i, f in enumerate(originals):
            os.symlink(f, sub / f"{i:05d}.jpg")
    return folder


def folder_files(folder: Path) -> list[str]:
    from realfake.pipelines.walk import walk_images

    return [f.path for f in walk_images([folder])]


# --------------------------------------------------------------------------- measurements (img/s)

def dali_steady(files: list[str], threads: int, seconds: float = 2.0) -> float:
    """Steady-state img/s of the eval pipeline (mixed decode + resize + normalize), reader wrapping around."""
    import torch
    from realfake.pipelines.dali_loader import DEFAULT_HW_DECODER_LOAD, eval_pipeline

    pipe = eval_pipeline(files=files, labels=list(range(len(files))), shard_id=0, num_shards=1,
                         image_size=IMAGE_SIZE, gpu=True, hw_decoder_load=DEFAULT_HW_DECODER_LOAD, batch_size=BATCH,
                         num_threads=threads, device_id=0, seed=0)
    pipe.build()
    for _ in range(5):
        pipe.run()
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pipe.run()
        n += BATCH
    torch.cuda.synchronize()
    rate = n / (time.perf_counter() - start)
    del pipe
    return rate


def loader_pass(files: list[str], backend: str, threads: int) -> float:
    """img/s of one pass of the product's loader over `files`, images on the GPU, no model."""
    import torch
    from realfake.pipelines.loaders import get_loader

    start = time.perf_counter()
    loader = get_loader(files, None, train=False, backend=backend, image_size=IMAGE_SIZE, batch_size=BATCH,
                        num_workers=threads, device="cuda", draft=True)
    n = 0
    for batch in loader:
        images = batch.images.to("cuda", non_blocking=True)
        n += images.shape[0]
    torch.cuda.synchronize()
    if n != len(files):
        raise RuntimeError(f"the {backend} loader delivered {n} of {len(files)} images")
    return n / (time.perf_counter() - start)


def dali_fixed_costs(files: list[str], threads: int) -> dict[str, float]:
    """Seconds of the per-pass steps of the product's DALI loader over `files`, each timed alone."""
    import torch
    from realfake.pipelines.dali_loader import DEFAULT_HW_DECODER_LOAD, eval_pipeline, screen_headers

    seconds = {}
    start = time.perf_counter()
    bad = screen_headers(files, num_threads=threads)
    seconds["screen_headers"] = time.perf_counter() - start
    if bad:
        raise RuntimeError(f"the header screen rejected {len(bad)} files")
    start = time.perf_counter()
    pipe = eval_pipeline(files=files, labels=list(range(len(files))), shard_id=0, num_shards=1,
                         image_size=IMAGE_SIZE, gpu=True, hw_decoder_load=DEFAULT_HW_DECODER_LOAD, batch_size=BATCH,
                         num_threads=threads, device_id=0, seed=0)
    pipe.build()
    seconds["pipeline_build"] = time.perf_counter() - start
    start = time.perf_counter()
    pipe.run()
    torch.cuda.synchronize()
    seconds["first_batch"] = time.perf_counter() - start
    del pipe
    return seconds


def build_engine(model_name: str, out: Path) -> Path:
    import torch
    from realfake.engines.build import build_engine_from_model
    from realfake.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, image_size=IMAGE_SIZE).eval()
    return build_engine_from_model(model, out, architecture=model_name, image_size=IMAGE_SIZE, backend="eager",
                                   precision="fp16", batch=(1, BATCH, 1024), device="cuda")


def score_rate(folder: Path, engine: Path, loader: str, threads: int, out: Path, header_check: bool = True) -> float:
    """img/s of `realfake score` over the folder, wall time of the whole call (engine load included)."""
    from realfake.jobs.tasks.score import scorer as score_module

    score_module.DALI_HEADER_CHECK = header_check
    try:
        start = time.perf_counter()
        summary = score_module.run_score([str(folder)], out, engine=str(engine), loader=loader, device="cuda",
                                         batch_size=BATCH, num_workers=threads, resume=False, progress=False)
        seconds = time.perf_counter() - start
    finally:
        score_module.DALI_HEADER_CHECK = True
    if summary["scored"] != summary["files"] or summary["errors"]:
        raise RuntimeError(f"scored {summary['scored']} of {summary['files']} files, {summary['errors']} errors")
    return summary["scored"] / seconds


# --------------------------------------------------------------------------- the run

def measure_into(rows: list[dict], kind: str, what: str, fn, *fn_args, **kw) -> float | None:
    """Run `fn` (it returns img/s), print its line of the table and append its row to `rows`; a failure
    becomes a row with the error, so that one missing piece (no DALI, a refused option) ends no session."""
    t0 = time.perf_counter()
    try:
        value = fn(*fn_args, **kw)
        rows.append({"kind": kind, "what": what, "img_per_s": value, "seconds": time.perf_counter() - t0})
        print(f"  {kind:<11} {what:<36} {value:>9.1f} img/s", flush=True)
        return value
    except Exception as exc:
        rows.append({"kind": kind, "what": what, "img_per_s": None, "error": f"{type(exc).__name__}: {exc}"})
        print(f"  {kind:<11} {what:<36} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        if not isinstance(exc, (ImportError, ValueError)):  # not just "DALI is not installed"
            traceback.print_exc(limit=5)
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder of JPEGs (default: generate synthetic 600x600 faces)")
    parser.add_argument("--n", type=int, default=256, help="distinct files per kind")
    parser.add_argument("--copies", type=int, default=40, help="links to each file in the scored folder")
    parser.add_argument("--large-copies", type=int, default=200,
                        help="links to each baseline file in one more, larger folder scored with DALI (simple_cnn)")
    parser.add_argument("--threads", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)),
                        help="DALI threads / DataLoader workers")
    parser.add_argument("--models", default="simple_cnn,resnet18")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    from standalone import import_realfake

    import_realfake("realfake.jobs.tasks.score")
    import torch
    from realfake.benchmarks.harness import nvjpeg_rate

    if not torch.cuda.is_available():
        print("no CUDA device: this script measures GPU scoring", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows: list[dict] = []

    measure = functools.partial(measure_into, rows)

    with tempfile.TemporaryDirectory(prefix="realfake-gpu-score-") as tmp_name:
        tmp = Path(tmp_name)
        folders = make_folders(args.data, args.n, args.copies, tmp)
        engines = {}
        for name in args.models.split(","):
            try:
                engines[name] = build_engine(name, tmp / f"engine-{name}")
            except Exception as exc:
                rows.append({"kind": "-", "what": f"engine/{name}", "img_per_s": None,
                             "error": f"{type(exc).__name__}: {exc}"})
                print(f"engine {name} failed: {exc}", flush=True)
        print(f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs, {args.threads} threads, batch {BATCH}, "
              f"{args.n} x {args.copies} files per kind", flush=True)
        for kind, (folder, distinct) in folders.items():
            files = folder_files(folder)
            steady = measure(kind, "decode/dali-steady", dali_steady, distinct, args.threads)
            passes = {"dali": measure(kind, "decode/dali-pass", loader_pass, files, "dali", args.threads),
                      "torch": measure(kind, "decode/torch-pass", loader_pass, files, "torch", args.threads)}
            measure(kind, "decode/nvjpeg", nvjpeg_rate, distinct, batch=BATCH, image_size=IMAGE_SIZE, seconds=2.0)
            try:
                for step, value in dali_fixed_costs(files, args.threads).items():
                    rows.append({"kind": kind, "what": f"fixed/{step}", "seconds": value, "unit": "s"})
                    print(f"  {kind:<11} {'fixed/' + step:<36} {value:>9.3f} s", flush=True)
            except Exception as exc:
                rows.append({"kind": kind, "what": "fixed", "img_per_s": None, "error": f"{type(exc).__name__}: {exc}"})
                print(f"  {kind:<11} fixed costs failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            for name, engine in engines.items():
                for loader in ("dali", "torch"):
                    rate = measure(kind, f"score/{name}/{loader}", score_rate, folder, engine, loader, args.threads,
                                   tmp / f"scores-{kind}-{name}-{loader}.csv")
                    row = rows[-1]
                    if rate and passes[loader]:
                        row["vs_decode_pass"] = rate / passes[loader]
                    if rate and steady:
                        row["vs_dali_steady"] = rate / steady
            if "simple_cnn" in engines:
                rate = measure(kind, "score/simple_cnn/dali-no-header-check", score_rate, folder,
                               engines["simple_cnn"], "dali", args.threads, tmp / f"scores-{kind}-nocheck.csv",
                               header_check=False)
                if rate and steady:
                    rows[-1]["vs_dali_steady"] = rate / steady
            if "simple_cnn" in engines and kind == "baseline" and args.large_copies > args.copies:
                # fixed costs amortized: how close a folder several times larger comes to the steady rate
                large = link_folder(distinct, args.large_copies, tmp / "folder-baseline-large")
                rate = measure(kind, f"score/simple_cnn/dali x{args.large_copies}", score_rate, large,
                               engines["simple_cnn"], "dali", args.threads, tmp / "scores-baseline-large.csv")
                if rate and steady:
                    rows[-1]["vs_dali_steady"] = rate / steady

    print(f"\nfolder scoring on {torch.cuda.get_device_name(0)} (torch {torch.__version__}), {args.n} distinct "
          f"600x600 JPEGs x {args.copies} links per kind, batch {BATCH}, {args.threads} threads; "
          f"goal: score / DALI decode-only >= {GOAL}")
    header = f"{'kind':<11} {'measurement':<38} {'img/s':>9} {'/decode pass':>12} {'/DALI steady':>12}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        if row.get("unit") == "s":
            value = f"{row['seconds']:.3f} s"
        else:
            value = "failed" if row["img_per_s"] is None else f"{row['img_per_s']:.0f}"
        a = f"{row['vs_decode_pass']:.2f}" if "vs_decode_pass" in row else ""
        b = f"{row['vs_dali_steady']:.2f}" if "vs_dali_steady" in row else ""
        print(f"{row['kind']:<11} {row['what']:<38} {value:>9} {a:>12} {b:>12}"
              + (f"  {row['error'][:120]}" if row.get("error") else ""))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(tmp_name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
