"""Training on 1 and N processes of this machine (`realfake train --nproc N`), one table out.

    python -m realfake.benchmarks.ddp_train DATA_DIR [--nprocs 1,2] [--model simple_cnn] [--image-size 128]
                                           [--global-batch 32] [--epochs 3] [--cache memory] [--loader torch]
                                           [--num-workers 2] [--device cpu] [--work DIR] [--json results.json]

Each row is one `run_train` of the same options on a prepared DATA_DIR, with the same global batch
(--batch-size = global batch / processes), started by the launcher `--nproc` uses. Every process
times its own train epochs (the loader and the steps, not validation, nor the start, the decode into
a --cache or the JPEG ghost maps); the first epoch is left out as warm-up. Columns:
  processes, batch     processes and --batch-size per process
  epoch_s              the mean train epoch of the slowest process
  img/s                global images an epoch / epoch_s: the run's throughput
  img/s/process        each process's images an epoch / its own epoch time (mean over processes)
  speed-up             img/s / the one-process row's
  run_s                the whole run_train call, start and validation included

On a machine with fewer cores than processes x threads the processes compete for the same cores (each
gets cores / processes threads), which the table shows rather than hides.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from realfake.engines import trainer
from realfake.jobs.tasks.launch import launch
from realfake.jobs.tasks.train import run_train


def timed_train(data_dir: Path, out: Path, name: str, options: dict) -> dict:
    """run_train as one launched process, its train epochs timed into OUT/NAME.timesR.json."""
    original, epochs = trainer.train_one_epoch, []

    def timed(model, criterion, optimizer, loader, device, epoch, **kwargs):
        images = 0

        class Counting:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                nonlocal images
                for batch in loader:
                    images += len(batch.labels)
                    yield batch

        start = time.perf_counter()
        result = original(model, criterion, optimizer, Counting(), device, epoch, **kwargs)
        epochs.append({"epoch": epoch, "seconds": time.perf_counter() - start, "images": images})
        return result

    trainer.train_one_epoch = timed
    summary = run_train(data_dir, out=out, name=name, progress=False, **options)
    (out / f"{name}.times{os.environ['RANK']}.json").write_text(json.dumps(epochs))
    return summary


def measure(data_dir: Path, nprocs: list[int], options: dict, global_batch: int, work: Path) -> list[dict]:
    rows = []
    for n in nprocs:
        if global_batch % n:
            raise ValueError(f"--global-batch {global_batch} does not split into {n} processes: choose a multiple")
        name = f"nproc{n}"
        start = time.perf_counter()
        launch(n, timed_train, data_dir, work, name, {**options, "batch_size": global_batch // n, "nproc": n})
        run_s = time.perf_counter() - start
        per_process = [json.loads((work / f"{name}.times{r}.json").read_text())[1:] for r in range(n)]
        if not per_process[0]:
            raise ValueError("give --epochs 2 or more: the first epoch is warm-up and left out")
        epoch_s = [statistics.fmean(e["seconds"] for e in epochs) for epochs in per_process]
        images = [statistics.fmean(e["images"] for e in epochs) for epochs in per_process]
        rows.append({"processes": n, "batch": global_batch // n, "epoch_s": max(epoch_s),
                     "img_s": sum(images) / max(epoch_s),
                     "img_s_process": statistics.fmean(i / s for i, s in zip(images, epoch_s, strict=True)),
                     "run_s": run_s})
    for row in rows:
        row["speed_up"] = row["img_s"] / rows[0]["img_s"]
    return rows


def print_table(rows: list[dict], options: dict, global_batch: int) -> None:
    print(f"{options['model']} @ {options['image_size']} px on {options['device']}, global batch {global_batch}, "
          f"loader {options['loader']}, cache {options['cache']}, {options['num_workers']} loader workers a process, "
          f"{len(os.sched_getaffinity(0))} CPU cores")
    print("| processes | batch | epoch_s | img/s | img/s/process | speed-up | run_s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['batch']} | {r['epoch_s']:.2f} | {r['img_s']:.1f} | {r['img_s_process']:.1f} | "
              f"{r['speed_up']:.2f} | {r['run_s']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="a prepared data directory (realfake data prepare)")
    parser.add_argument("--nprocs", default="1,2", help="process counts to compare, the first the baseline")
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs a run; the first is warm-up")
    parser.add_argument("--cache", default="memory", help="--cache of the runs (none: decode every epoch)")
    parser.add_argument("--loader", default="torch")
    parser.add_argument("--num-workers", type=int, default=2, help="loader workers of each process")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU a process")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a new temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ddp-train-"))
    work.mkdir(parents=True, exist_ok=True)
    options = dict(model=args.model, image_size=args.image_size, epochs=args.epochs, cache=args.cache,
                   loader=args.loader, num_workers=args.num_workers, device=args.device)
    if options["model"] == "ghost_cnn":
        options.pop("cache")
    rows = measure(args.data_dir.resolve(), [int(n) for n in args.nprocs.split(",")], options, args.global_batch, work)
    print_table(rows, {"cache": "n/a", **options}, args.global_batch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
