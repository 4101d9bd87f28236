"""Research probe: does the synthetic set's compression history make the pasted regions, and only
them, what ghost_cnn learns? (pipelines/synth.py; docs/demo.md has the numbers.)

1. Stand-out: for fakes of some seeds, how far the ghost-map cells under the pasted region lie from
   the image's typical cell (tests/test_synth_history.py's statistic), for the fake as written and for
   two controls with the same two saves: the face unedited, and the same pixel edit made before the
   camera JPEG (the region then shares the face's history).
2. With --train: the product's ghost_cnn recipe on a synthetic set (synth -> prepare 0.6/0.1/0.3 ->
   run_train -> run_evaluate, test AUC), once as written and once with every fake's edit made before
   the camera JPEG (the control of 1, applied to every fake).

    python docs/probes/synth_history.py --seeds 0,1,2 --fakes 16
    python docs/probes/synth_history.py --seeds 0 --train --n 200 --size 128 --epochs 8 --work /tmp/probe
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from realfake.pipelines import synth

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_synth_history import SIZE, _encoded, _region_standout  # noqa: E402


def standout(seeds: list[int], fakes: int) -> None:
    work = Path(tempfile.mkdtemp())
    print(f"stand-out of the pasted region ({SIZE} px, {fakes} fakes a seed): fake / unedited / same history")
    for seed in seeds:
        rows = []
        for index in range(fakes):
            sample = synth.make_fake(seed=seed, index=index, size=SIZE)
            variants = (sample.edited, synth._recompress(sample.source, sample.camera_quality),
                        synth._recompress(sample.fake, sample.camera_quality))
            row = []
            for k, pixels in enumerate(variants):
                _encoded(pixels, sample.final_quality, work / f"{k}.jpg")
                row.append(_region_standout(work / f"{k}.jpg", sample.mask))
            rows.append(row)
        r = np.array(rows)
        print(f"seed {seed}: {r[:, 0].mean():.2f} / {r[:, 1].mean():.2f} / {r[:, 2].mean():.2f}; fake above "
              f"unedited in {(r[:, 0] > r[:, 1]).sum()} of {fakes}, above same history in {(r[:, 0] > r[:, 2]).sum()}")
    shutil.rmtree(work)


def train(seeds: list[int], n: int, size: int, epochs: int, work: Path) -> None:
    from realfake.jobs.tasks.evaluate import run_evaluate
    from realfake.jobs.tasks.train import run_train
    from realfake.pipelines.prepare import prepare

    as_written = synth.make_fake

    def same_history(seed, index, size=256):
        sample = as_written(seed, index, size)
        return dataclasses.replace(sample, edited=synth._recompress(sample.fake, sample.camera_quality))

    for variant, make_fake in (("as written", as_written), ("edit before the camera JPEG", same_history)):
        synth.make_fake = make_fake
        for seed in seeds:
            folder = work / f"{variant.split()[0]}-{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            src = synth.synth(folder / "synthetic", n=n, size=size, seed=seed)
            prepare(src, folder / "data", split="0.6,0.1,0.3", seed=seed, progress=False)
            trained = run_train(folder / "data", model="ghost_cnn", image_size=size, epochs=epochs, optimizer="adamw",
                                lr=2e-3, weight_decay=1e-3, schedule="onecycle", batch_size=32, compile=False,
                                device="cpu", seed=seed, out=folder / "runs", name="g", progress=False)
            evaluated = run_evaluate(trained["run_dir"], split="test", checkpoint="last", device="cpu", progress=False)
            print(f"{variant}, seed {seed}: test AUC {evaluated['roc_auc']:.3f} on {evaluated['n']} images", flush=True)
    synth.make_fake = as_written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fakes", type=int, default=16)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("synth_history_probe"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    standout(seeds, args.fakes)
    if args.train:
        train(seeds, args.n, args.size, args.epochs, args.work)


if __name__ == "__main__":
    main()
