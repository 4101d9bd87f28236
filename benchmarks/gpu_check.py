"""Every GPU check of the DALI pipelines in one short run (< 3 minutes on one H200), one table out.

    python benchmarks/gpu_check.py --data DIR [--n 512] [--json results.json]

DIR: a folder of JPEGs (searched recursively, e.g. real_and_fake_face); without --data, 256 synthetic
600x600 progressive JPEG faces are generated first. Baseline copies are made of whatever is used,
since GPU hardware JPEG decoders (A100/H100/H200) take baseline JPEGs only.

Checks (each one fails on its own, with its error in the table, and the others still run):
  decode      DALI `mixed` decode + resize to 128 + normalize, img/s, hw_decoder_load 0.0 / 0.65 (DALI's
              default) / 1.0, progressive and baseline JPEGs; and 1.0 with jpeg_fancy_upsampling
  augment     the full train augmentation on the GPU, img/s (hw_decoder_load 1.0)
  torchvision torchvision.io.decode_jpeg(device="cuda") (nvJPEG, batched) + antialiased resize, img/s
  parity      GPU-DALI eval tensors vs the torchvision loader (CPU, PIL) on the same files: mean and
              max |diff| in normalized units, against the CPU tests' tolerance; also with
              jpeg_fancy_upsampling=True (nvJPEG's chroma upsampling made libjpeg-turbo's)
  loader      make_dali_loader(device="cuda"): exactly once with a ragged last batch, 3 shards cover
              every file once, a corrupt file is recorded and the rest delivered, a train pass runs

Needs torch with CUDA, torchvision, PIL, numpy and NVIDIA DALI; realfake need not be installed: when
`import realfake` fails, the repository's folders are mapped to `realfake.*` here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARITY_MEAN_ABS = 0.005  # the tolerance of tests/test_dali_loader.py, in normalized units
PARITY_INTERIOR_MAX = 0.03
HW_DECODER_LOADS = (0.0, 0.65, 1.0)
BATCH = 128


# --------------------------------------------------------------------------- data

def synthetic_files(out: Path, n: int) -> list[str]:
    from realfake.pipelines.synth import synth

    return sorted(str(p) for p in synth(out, n=n, size=600).rglob("*.jpg"))


# --------------------------------------------------------------------------- checks (each returns rows)

def check_decode(files, baseline, seconds, device):
    from realfake.benchmarks.suite_pipelines import PipelinesSuiteConfig, dali_pipeline_figure

    cfg = PipelinesSuiteConfig(n_files=len(files), repeats=3, warmup=3, threads_cpu=2, batch_size_cpu=32,
                               batch_size_gpu=BATCH, gpu_repeat_s=seconds)
    rows = []
    for kind, paths in (("progressive", files), ("baseline", baseline)):
        for load in HW_DECODER_LOADS:
            fig = dali_pipeline_figure("decode", paths, train=False, device=device, batch_size=BATCH,
                                  hw_decoder_load=load, cfg=cfg, params={})
            rows.append(("decode", f"{kind} hw={load}", fig.median, "img/s", f"IQR {fig.spread:.0f}"))
        if device != "cpu":  # what the parity-keeping chroma upsampling costs (the CPU decoder always does it)
            fig = dali_pipeline_figure("decode", paths, train=False, device=device, batch_size=BATCH,
                                       hw_decoder_load=1.0, cfg=cfg, params={}, fancy_upsampling=True)
            rows.append(("decode", f"{kind} hw=1.0 fancy", fig.median, "img/s", f"IQR {fig.spread:.0f}"))
    return rows


def check_augment(files, baseline, seconds, device):
    from realfake.benchmarks.suite_pipelines import PipelinesSuiteConfig, dali_pipeline_figure

    cfg = PipelinesSuiteConfig(n_files=len(files), repeats=3, warmup=3, threads_cpu=2, batch_size_cpu=32,
                               batch_size_gpu=BATCH, gpu_repeat_s=seconds)
    rows = []
    for kind, paths in (("progressive", files), ("baseline", baseline)):
        fig = dali_pipeline_figure("augment", paths, train=True, device=device, batch_size=BATCH, hw_decoder_load=1.0,
                              cfg=cfg, params={})
        rows.append(("augment", f"{kind} hw=1.0", fig.median, "img/s", f"IQR {fig.spread:.0f}"))
    return rows


def check_torchvision(files, baseline, seconds, device):
    from realfake.benchmarks.harness import nvjpeg_rate

    if device == "cpu":
        return [("torchvision", "-", None, "", "skipped: GPU only")]
    rows = []
    for kind, paths in (("progressive", files), ("baseline", baseline)):
        try:
            rate = nvjpeg_rate(paths, batch=BATCH, image_size=128, seconds=seconds, warmup=2)
            rows.append(("torchvision", f"{kind} nvJPEG", rate, "img/s", ""))
        except Exception as exc:  # progressive files may be refused: say so, keep the other kind
            rows.append(("torchvision", f"{kind} nvJPEG", None, "img/s", f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0]}"[:160]))
    return rows


def _parity_row(setting, ours, theirs):
    diff = (ours.cpu() - theirs).abs()
    mean, interior = diff.mean().item(), diff[..., 1:-1, 1:-1].max().item()
    ok = mean < PARITY_MEAN_ABS and interior < PARITY_INTERIOR_MAX
    return ("parity", setting, mean, "mean |diff|",
            f"{'PASS' if ok else 'FAIL'}: interior max {interior:.4f}, max {diff.max().item():.4f} "
            f"(tolerance {PARITY_MEAN_ABS} / {PARITY_INTERIOR_MAX})")


def check_parity(files, baseline, seconds, device):
    import torch
    from realfake.pipelines.dali_loader import make_dali_loader
    from realfake.pipelines.torch_loader import make_torch_loader

    rows = []
    for kind, paths in (("progressive", files[:64]), ("baseline", baseline[:64])):
        kw = dict(train=False, image_size=128, batch_size=32, augment=None, num_workers=min(4, os.cpu_count() or 1),
                  seed=0, shard_id=0, num_shards=1)
        theirs = torch.cat([b.images for b in make_torch_loader(paths, None, device="cpu", **kw)])
        ours = torch.cat([b.images for b in make_dali_loader(paths, None, device=device, **kw)])
        rows.append(_parity_row(f"{kind} product", ours, theirs))
        if device == "cpu":  # the CPU decoder always upsamples like libjpeg-turbo
            continue
        ours = torch.cat([b.images for b in make_dali_loader(paths, None, device=device, fancy_upsampling=True,
                                                             **kw)])
        rows.append(_parity_row(f"{kind} fancy upsampling", ours, theirs))
    return rows


def check_loader(files, baseline, seconds, device):
    import torch
    from realfake.pipelines.dali_loader import make_dali_loader
    from realfake.pipelines.spec import AugmentSpec

    rows = []
    paths = files[:203]  # not a multiple of the batch
    kw = dict(image_size=128, batch_size=32, num_workers=4, seed=0, device=device)
    loader = make_dali_loader(paths, None, train=False, augment=None, shard_id=0, num_shards=1, **kw)
    batches = list(loader)
    seen = torch.cat([b.indices for b in batches]).tolist()
    on_gpu = all(b.images.is_cuda == (device != "cpu") for b in batches)
    ok = seen == list(range(len(paths))) and on_gpu and len(batches) == len(loader)
    rows.append(("loader", f"exactly once ({len(paths)} files, batch 32)", len(seen), "images",
                 f"{'PASS' if ok else 'FAIL'}: backend {loader.backend}, images on the right device: {on_gpu}"))

    seen = []
    for shard in range(3):
        seen += [i for b in make_dali_loader(paths, None, train=False, augment=None, shard_id=shard, num_shards=3,
                                             **kw) for i in b.indices.tolist()]
    rows.append(("loader", "3 shards", len(seen), "images",
                 "PASS" if sorted(seen) == list(range(len(paths))) else "FAIL: shards overlap or miss files"))

    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG" * 8)
        with_bad = paths[:40] + [str(bad)] + paths[40:64]
        batches = list(make_dali_loader(with_bad, None, train=False, augment=None, shard_id=0, num_shards=1, **kw))
        seen = torch.cat([b.indices for b in batches]).tolist()
        errors = [e for b in batches for e in b.errors]
        ok = sorted(seen) == [i for i in range(len(with_bad)) if i != 40] and [i for i, _ in errors] == [40]
        rows.append(("loader", "corrupt file at 40 of 65", len(seen), "images",
                     f"{'PASS' if ok else 'FAIL'}: errors {errors}"))

    loader = make_dali_loader(paths, None, train=True, augment=AugmentSpec(), shard_id=0, num_shards=1, **kw)
    start = time.perf_counter()
    batches = list(loader)
    elapsed = time.perf_counter() - start
    images = torch.cat([b.images for b in batches])
    ok = len(images) == len(paths) // 32 * 32 and bool(torch.isfinite(images).all()) and \
        images.is_cuda == (device != "cpu")
    rows.append(("loader", "train pass with augmentation", len(images) / elapsed, "img/s (incl. build)",
                 f"{'PASS' if ok else 'FAIL'}: {len(images)} images, std {images.std().item():.3f}"))
    return rows


CHECKS = {"decode": check_decode, "augment": check_augment, "torchvision": check_torchvision,
          "parity": check_parity, "loader": check_loader}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder of JPEGs (default: generate 256 synthetic 600x600 faces)")
    parser.add_argument("--n", type=int, default=512, help="use at most this many files (default 512)")
    parser.add_argument("--seconds", type=float, default=0.75, help="seconds per timed repeat (3 repeats)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu dry-runs the checks on DALI's CPU mode")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    from standalone import import_realfake

    import_realfake("realfake.pipelines.spec")

    import nvidia.dali
    import torch
    from realfake.benchmarks.suite_pipelines import baseline_copies, list_images

    print(f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE'} | torch {torch.__version__} "
          f"| DALI {nvidia.dali.__version__} | {os.cpu_count()} CPUs", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if args.data:
        files = list_images(args.data)
        files = files[:: max(1, len(files) // args.n)][: args.n]
        source = str(args.data)
    else:
        files = synthetic_files(work / "synth", 256)
        source = "synthetic 600x600 progressive"
    files = [f for f in files if f.lower().endswith((".jpg", ".jpeg"))]
    baseline = baseline_copies(files, work / "baseline")
    print(f"{len(files)} JPEGs from {source} (+ baseline copies), ready after {time.perf_counter() - started:.0f} s",
          flush=True)

    rows = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        t0 = time.perf_counter()
        try:
            rows += CHECKS[name](files, baseline, args.seconds, args.device)
        except Exception as exc:
            traceback.print_exc()
            rows.append((name, "-", None, "", f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"))
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    width = max(len(r[1]) for r in rows)
    print(f"\n{'check':<12} {'setting':<{width}} {'value':>10}  unit / note")
    for check, setting, value, unit, note in rows:
        shown = "-" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.4f}")
        print(f"{check:<12} {setting:<{width}} {shown:>10}  {unit} {note}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("check", "setting", "value", "unit", "note"), r, strict=True))
                                         for r in rows], indent=1))
    return 1 if any("FAIL" in r[4] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
