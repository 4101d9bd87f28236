"""Ghost-map scoring and training on a GPU against the decoder and the model alone, in one short run
(a few minutes on one H200), one table out.

    python benchmarks/gpu_ghosts.py [--data DIR] [--n 256] [--copies 20] [--json results.json]

DIR: a folder of JPEGs (searched recursively, e.g. real_and_fake_face, all progressive); without --data,
N synthetic 600x600 progressive JPEG faces are generated first. Baseline re-encodes of the same files are
made too (GPU hardware decoders take baseline JPEGs only): the two kinds are measured apart.

Rows (each measurement fails on its own, with its error in the table, and the others still run):
  decode/dali-steady          DALI decode of the whole image to RGB (what the ghost loader decodes: no
                              resize), steady batches: the decoder's rate, the ceiling for ghost scoring
  maps/dct                    `maps_of_inputs(color="rgb")` on decoded images already on the device
  score/ghost_cnn-dct/dali    `realfake score --loader dali` with a ghost_cnn engine of dct maps (DALI
                              decodes, the maps and the model on the GPU), end to end; its ratio to
                              decode/dali-steady. Goal: >= 0.9
  score/ghost_cnn-dct/torch   the same through DataLoader workers (PIL decode, maps in the workers)
  maps/pil-exact              `jpeg_ghosts_exact.maps_of_inputs`: the reference (pil) maps bit for bit, on
                              decoded images already on the device
  score/ghost_cnn-pil/dali    `realfake score --loader dali` with a ghost_cnn engine of pil maps (DALI decodes,
                              the exact maps and the model on the GPU); ratio to decode/dali-steady. Goal: >= 0.9.
                              Over as many links of the files as the exact maps take about 20 s for
  train/model-only            ghost_cnn training steps on maps already on the GPU (AMP fp16)
  train/epoch-cache-gpu       epochs of the `--cache gpu` ghost loader (decoded planes on the GPU, dct maps
                              per batch, flips and shifts) + the same steps; ratio to model-only. Goal: >= 0.8
  train/epoch-cache-gpu-launder   the same with --launder 0.5 (host workers re-save and decode half the
                              items each epoch)
  train/epoch-cache-gpu-pil   train/epoch-cache-gpu with pil maps (the exact maps on the GPU); ratio to
                              model-only. Goal: >= 0.8

After the table, per kind: how far the pil maps computed from DALI's decode are from the reference's
(PIL decode and re-saves) on the first 32 files: the largest difference of the normalized maps and the
share of maps that are equal. The hardware decoder (baseline files) and nvJPEG may round pixels otherwise
than libjpeg; DALI's CPU decoder does not (the tests).

Engines: eager fp16 ghost_cnn with random weights, built here. `--device cpu` runs the same rows small on
a machine without a GPU (a dry run of the script; DALI's CPU decoder).

Needs torch, torchvision, PIL, numpy and NVIDIA DALI; realfake need not be installed (see standalone.py).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SIZE = 600
GOAL_SCORE = 0.9  # ghost scoring / DALI decode-only
GOAL_TRAIN = 0.8  # ghost training epoch / model-only steps
PIL_SCORE_S = 20.0  # the pil engine's scoring row: about this long at the exact maps' rate


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dali_steady(files: list[str], threads: int, batch: int, device: str, seconds: float) -> float:
    """Steady-state img/s of the ghost loader's DALI graph (decode to RGB, stored orientation)."""
    from realfake.pipelines.dali_ghosts import ghost_pipeline
    from realfake.pipelines.dali_loader import DEFAULT_HW_DECODER_LOAD

    gpu = device.startswith("cuda")
    pipe = ghost_pipeline(files=files, labels=list(range(len(files))), shard_id=0, num_shards=1, gpu=gpu,
                          hw_decoder_load=DEFAULT_HW_DECODER_LOAD, batch_size=batch, num_threads=threads,
                          device_id=0 if gpu else None, seed=0)
    pipe.build()
    for _ in range(3):
        pipe.run()
    _sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pipe.run()
        n += batch
    _sync(device)
    rate = n / (time.perf_counter() - start)
    del pipe
    return rate


def maps_rate(files: list[str], batch: int, device: str, seconds: float) -> float:
    """files/s of the dct maps of decoded RGB images already on `device`."""
    from realfake.pipelines.jpeg_ghosts_torch import maps_of_inputs

    inputs = _decoded_inputs(files[:batch], device, exact=False)
    maps_of_inputs(inputs, IMAGE_SIZE, device=device, color="rgb")
    _sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        maps_of_inputs(inputs, IMAGE_SIZE, device=device, color="rgb")
        n += len(inputs)
    _sync(device)
    return n / (time.perf_counter() - start)


def _decoded_inputs(files: list[str], device: str, exact: bool) -> list:
    """The maps' inputs of `files` as PIL decodes them, on `device`: GhostInput (dct) or ExactInput (pil)."""
    import numpy as np
    import torch
    from PIL import Image
    from realfake.pipelines.ghost_inputs import decoded_input
    from realfake.pipelines.jpeg_ghosts_torch import mcu_crop
    from realfake.pipelines.jpeg_headers import keep_tables, read_header

    inputs = []
    for path in files:
        header = read_header(path)
        with Image.open(path) as image:
            rgb = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
        rgb = mcu_crop(rgb, IMAGE_SIZE).contiguous().to(device)
        tables = torch.tensor(keep_tables(header), dtype=torch.float32)
        inputs.append(decoded_input("pil" if exact else "dct", rgb, tables, header.pil_subsampling,
                                    header.orientation))
    return inputs


def exact_maps_rate(files: list[str], batch: int, device: str, seconds: float) -> float:
    """files/s of the exact (pil) maps of decoded RGB images already on `device`."""
    from realfake.pipelines.jpeg_ghosts_exact import maps_of_inputs

    inputs = _decoded_inputs(files[:batch], device, exact=True)
    maps_of_inputs(inputs, IMAGE_SIZE, device=device)
    _sync(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        maps_of_inputs(inputs, IMAGE_SIZE, device=device)
        n += len(inputs)
    _sync(device)
    return n / (time.perf_counter() - start)


def exact_vs_reference(files: list[str], threads: int, device: str) -> dict:
    """The pil maps from DALI's decode (the ghost loader's graph) against the reference's, per file."""
    import numpy as np
    from realfake.pipelines import jpeg_ghosts
    from realfake.pipelines.dali_ghosts import make_dali_ghost_loader

    loader = make_dali_ghost_loader(files, None, image_size=IMAGE_SIZE, batch_size=8, num_workers=threads,
                                    shard_id=0, num_shards=1, device=device, kind="pil")
    worst, equal, total = 0.0, 0, 0
    for batch in loader:
        for maps, index in zip(batch.images.cpu().numpy(), batch.indices.tolist(), strict=True):
            reference = jpeg_ghosts.ghost_maps(files[index], IMAGE_SIZE)
            diff = np.abs(maps - reference).max((1, 2))
            worst, equal, total = max(worst, float(diff.max())), equal + int((diff <= 1e-5).sum()), total + len(diff)
    return {"files": len(files), "max_abs_diff": worst, "maps_equal": equal / max(total, 1)}


def build_engine(out: Path, device: str, batch: int, kind: str = "dct") -> Path:
    import torch
    from realfake.engines.build import build_engine_from_model
    from realfake.models import build_model

    torch.manual_seed(0)
    model = build_model("ghost_cnn", image_size=IMAGE_SIZE).eval()
    return build_engine_from_model(model, out, architecture="ghost_cnn", image_size=IMAGE_SIZE, backend="eager",
                                   precision="fp16" if device.startswith("cuda") else "fp32",
                                   batch=(1, batch, 4 * batch), device=device, ghost_maps=kind)


def score_rate(folder: Path, engine: Path, loader: str, threads: int, batch: int, device: str, out: Path) -> float:
    """img/s of `realfake score` over the folder, wall time of the whole call (engine load included)."""
    from realfake.jobs.tasks.score import run_score

    start = time.perf_counter()
    summary = run_score([str(folder)], out, engine=str(engine), loader=loader, device=device, batch_size=batch,
                        num_workers=threads, resume=False, progress=False)
    seconds = time.perf_counter() - start
    if summary["scored"] != summary["files"] or summary["errors"]:
        raise RuntimeError(f"scored {summary['scored']} of {summary['files']} files, {summary['errors']} errors")
    return summary["scored"] / seconds


def _train_step(device: str, batch: int):
    """(one training step of ghost_cnn on a batch of maps, AMP on a GPU) and its model."""
    import torch
    from realfake.models import build_model

    torch.manual_seed(0)
    model = build_model("ghost_cnn", image_size=IMAGE_SIZE).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = device.startswith("cuda")

    def step(maps, labels):
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(maps), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_model_only(n_files: int, batch: int, device: str, epochs: int) -> float:
    """img/s of training steps on random maps already on the device (as many as an epoch of n_files)."""
    import torch
    from realfake.pipelines.jpeg_ghosts import CHANNELS, grid_cells

    step = _train_step(device, batch)
    cells = grid_cells(IMAGE_SIZE)
    maps = torch.randn(batch, CHANNELS, cells, cells, device=device)
    labels = torch.randint(0, 2, (batch,))
    steps = max(1, n_files // batch)
    step(maps, labels)
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs * steps):
        step(maps, labels)
    _sync(device)
    return epochs * steps * batch / (time.perf_counter() - start)


def train_epochs(files: list[str], batch: int, device: str, threads: int, epochs: int, launder: float,
                 kind: str = "dct") -> float:
    """img/s of whole epochs of the --cache gpu ghost loader + training steps (the set decoded first, untimed)."""
    from realfake.pipelines.ghost_device import DeviceGhostLoader

    labels = [i % 2 for i in range(len(files))]
    loader = DeviceGhostLoader(files, labels, train=True, image_size=IMAGE_SIZE, batch_size=batch, shift=4,
                               num_workers=threads, device=device, progress=False, launder=launder, kind=kind)
    step = _train_step(device, batch)
    loader.set_epoch(0)
    for b in loader:  # warm-up epoch
        step(b.images, b.labels)
    _sync(device)
    start, n = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for b in loader:
            step(b.images, b.labels)
            n += len(b.labels)
    _sync(device)
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder of JPEGs (default: generate synthetic 600x600 faces)")
    parser.add_argument("--n", type=int, default=256, help="distinct files per kind")
    parser.add_argument("--copies", type=int, default=20, help="links to each file in the scored folder")
    parser.add_argument("--threads", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)),
                        help="DALI threads / DataLoader workers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed training epochs (after one warm-up)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each steady-rate measurement")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a small dry run of the script")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    from standalone import import_realfake

    import_realfake("realfake.jobs.tasks.score")
    import torch
    from gpu_score import link_folder, make_folders, measure_into

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this script measures the GPU (--device cpu for a dry run)", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU (dry run)"
    started = time.perf_counter()
    rows: list[dict] = []

    measure = functools.partial(measure_into, rows)

    with tempfile.TemporaryDirectory(prefix="realfake-gpu-ghosts-") as tmp_name:
        tmp = Path(tmp_name)
        folders = make_folders(args.data, args.n, args.copies, tmp)
        engine = build_engine(tmp / "engine-dct", args.device, args.batch)
        pil_engine = build_engine(tmp / "engine-pil", args.device, args.batch, kind="pil")
        checks = {}
        print(f"{device_name}, {os.cpu_count()} CPUs, {args.threads} threads, batch {args.batch}, "
              f"{args.n} x {args.copies} files per kind", flush=True)
        for kind, (folder, distinct) in folders.items():
            steady = measure(kind, "decode/dali-steady", dali_steady, distinct, args.threads, args.batch, args.device,
                             args.seconds)
            measure(kind, "maps/dct", maps_rate, distinct, args.batch, args.device, args.seconds)
            for loader in ("dali", "torch"):
                rate = measure(kind, f"score/ghost_cnn-dct/{loader}", score_rate, folder, engine, loader,
                               args.threads, args.batch, args.device, tmp / f"scores-{kind}-{loader}.csv")
                if rate and steady:
                    rows[-1]["vs"] = rate / steady
            exact = measure(kind, "maps/pil-exact", exact_maps_rate, distinct, args.batch, args.device, args.seconds)
            # As many links as the exact maps score in about PIL_SCORE_S: the script stays within its lease.
            copies = max(1, min(args.copies, round((exact or 0) * PIL_SCORE_S / len(distinct))))
            pil_folder = link_folder(distinct, copies, tmp / f"folder-{kind}-pil")
            rate = measure(kind, "score/ghost_cnn-pil/dali", score_rate, pil_folder, pil_engine, "dali", args.threads,
                           args.batch, args.device, tmp / f"scores-{kind}-pil.csv")
            if rate and steady:
                rows[-1]["vs"] = rate / steady
            try:
                checks[kind] = exact_vs_reference(distinct[:32], args.threads, args.device)
            except Exception as exc:  # reported, and the other measurements still run
                checks[kind] = {"error": f"{type(exc).__name__}: {exc}"}
            if kind == "progressive":
                alone = measure(kind, "train/model-only", train_model_only, len(distinct), args.batch, args.device,
                                args.epochs)
                for launder, maps, what in ((0.0, "dct", "train/epoch-cache-gpu"),
                                            (0.5, "dct", "train/epoch-cache-gpu-launder"),
                                            (0.0, "pil", "train/epoch-cache-gpu-pil")):
                    rate = measure(kind, what, train_epochs, distinct, args.batch, args.device, args.threads,
                                   args.epochs, launder, maps)
                    if rate and alone:
                        rows[-1]["vs"] = rate / alone

    print(f"\nghost maps on {device_name} (torch {torch.__version__}), {args.n} distinct 600x600 JPEGs x "
          f"{args.copies} links per kind, batch {args.batch}, {args.threads} threads; goals: score / DALI "
          f"decode-only >= {GOAL_SCORE}, training epoch / model-only >= {GOAL_TRAIN}")
    header = f"{'kind':<11} {'measurement':<36} {'img/s':>9} {'ratio':>7}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        value = "failed" if row["img_per_s"] is None else f"{row['img_per_s']:.1f}"
        ratio = f"{row['vs']:.2f}" if "vs" in row else ""
        print(f"{row['kind']:<11} {row['what']:<36} {value:>9} {ratio:>7}"
              + (f"  {row['error'][:120]}" if row.get("error") else ""))
    for kind, check in checks.items():
        print(f"pil maps from DALI's decode vs the reference, {kind}: {check}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "pil_maps_vs_reference": checks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
