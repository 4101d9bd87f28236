"""Measurement: how each laundering transform (`realfake.pipelines.launder`) changes the JPEG ghost maps
(`realfake.pipelines.jpeg_ghosts.raw_maps`, the `ghost_cnn` input) of a sample of photos.

For each sampled file and each transform of the default family, the file is laundered in memory and
its ghost maps computed as the product computes them (600 px, the model's default grid), then
compared with the original's:

- ghost q: the standard quality (50..95) whose re-save changes the luma least, the file's mean over
  cells: where the last compression sits (median over files);
- keep / q90: mean log squared re-save error of the luma "keep" map (re-saved with the file's own
  tables) and of the q=90 map: the level `normalize` removes (median over files);
- keep spread: standard deviation over cells of the centred log luma keep map, what the model sees of
  it (0 for a map at the log floor everywhere; median over files);
- r luma / r chroma: Pearson correlation between the log maps before and after, each map centred on
  its own mean as `normalize` does, over the 11 luma maps / the 22 chroma maps: how much of the
  spatial pattern the model reads survives (1 = unchanged; median over files). A resized file's maps
  are on a smaller grid; the original's are box-averaged onto it first. A crop shifts the grid by
  under one cell; its maps are compared cell by cell.

With `cjpeg` on PATH (Debian: libjpeg-turbo-progs) it also checks that PIL and `cjpeg` write the same
bytes at q=85 (4:2:0 and 4:4:4, progressive, optimized) and adds rows for `cjpeg -dct fast|float`,
the one encoder setting PIL does not expose, with the correlation of their maps to PIL's at q=85.

    python docs/probes/launder_ghosts.py ../shared/data/real_and_fake_face --n 50 --n-fake 25

Prints a markdown table (docs/robustness.md has the results). Costs 17 ghost-map computations a
file, about 3 s of CPU.
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from realfake.pipelines.jpeg_ghosts import LOG_EPS, QUALITIES, raw_maps
from realfake.pipelines.launder import FAMILY, launder_bytes

IMAGE_SIZE = 600
LUMA = [3 * i for i in range(len(QUALITIES))]
CHROMA = [3 * i + p for i in range(len(QUALITIES)) for p in (1, 2)]
STANDARD = [i for i, q in enumerate(QUALITIES) if q != "keep"]
CJPEG_ROWS = {"cjpeg -dct fast (q=85)": ["-dct", "fast"], "cjpeg -dct float (q=85)": ["-dct", "float"]}
CJPEG_SAME = {"jpeg:q=85": [], "jpeg:q=85,sub=444": ["-sample", "1x1"], "jpeg:q=85,prog=1": ["-progressive"],
              "jpeg:q=85,opt=1": ["-optimize"]}


def _maps(data: bytes, tmp: Path) -> np.ndarray:
    tmp.write_bytes(data)
    return raw_maps(tmp, IMAGE_SIZE)


def _levels(maps: np.ndarray) -> dict:
    luma_error = [maps[3 * i].mean() for i in STANDARD]
    return {"ghost_q": QUALITIES[STANDARD[int(np.argmin(luma_error))]],
            "keep": float(np.log(maps[0] + LOG_EPS).mean()),
            "spread": float(np.log(maps[0] + LOG_EPS).std()),
            "q90": float(np.log(maps[3 * QUALITIES.index(90)] + LOG_EPS).mean())}


def _box(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if maps.shape[1:] == (size[1], size[0]):
        return maps
    return np.stack([np.asarray(Image.fromarray(m).resize(size, Image.Resampling.BOX)) for m in maps])


def _pattern_r(before: np.ndarray, after: np.ndarray, channels: list[int], resized: bool) -> float:
    h, w = min(before.shape[1], after.shape[1]), min(before.shape[2], after.shape[2])
    if resized:
        before = _box(before, (after.shape[2], after.shape[1]))
    a = np.log(before[channels, :h, :w] + LOG_EPS)
    b = np.log(after[channels, :h, :w] + LOG_EPS)
    a -= a.mean(axis=(1, 2), keepdims=True)
    b -= b.mean(axis=(1, 2), keepdims=True)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _cjpeg(pixels: bytes, quality: int, extra: list[str]) -> bytes:
    return subprocess.run(["cjpeg", "-quality", str(quality), *extra], input=pixels, capture_output=True,
                          check=True).stdout


def measure(path: str) -> dict:
    """{row: stats} for one file: the original ("none") and every transform."""
    data = Path(path).read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / "x.jpg"
        original = _maps(data, tmp)
        rows = {"none": {**_levels(original), "r_luma": 1.0, "r_chroma": 1.0}}
        laundered = {spec: launder_bytes(data, spec) for spec in FAMILY}
        same = None
        if shutil.which("cjpeg"):
            ppm = io.BytesIO()
            with Image.open(io.BytesIO(data)) as img:
                img.convert("RGB").save(ppm, "PPM")
            same = all(launder_bytes(data, spec) == _cjpeg(ppm.getvalue(), 85, extra)
                       for spec, extra in CJPEG_SAME.items())
            laundered.update({row: _cjpeg(ppm.getvalue(), 85, extra) for row, extra in CJPEG_ROWS.items()})
        maps_of = {}
        for row, out in laundered.items():
            maps_of[row] = maps = _maps(out, tmp)
            resized = row.startswith("resize")
            rows[row] = {**_levels(maps), "r_luma": _pattern_r(original, maps, LUMA, resized),
                         "r_chroma": _pattern_r(original, maps, CHROMA, resized)}
    dct = {row: (_pattern_r(maps_of["jpeg:q=85"], maps_of[row], LUMA, False),
                 _pattern_r(maps_of["jpeg:q=85"], maps_of[row], CHROMA, False)) for row in CJPEG_ROWS if row in maps_of}
    return {"rows": rows, "cjpeg_same": same, "dct": dct}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="the archive's real_and_fake_face folder (training_real, training_fake)")
    ap.add_argument("--n", type=int, default=50, help="real photos sampled")
    ap.add_argument("--n-fake", type=int, default=25, help="fakes sampled (for the r columns of fakes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    reals = sorted(str(p) for p in (args.data / "training_real").glob("*.jpg"))
    fakes = sorted(str(p) for p in (args.data / "training_fake").glob("*.jpg"))
    reals = [reals[i] for i in sorted(rng.choice(len(reals), args.n, replace=False))]
    fakes = [fakes[i] for i in sorted(rng.choice(len(fakes), args.n_fake, replace=False))]
    start = time.time()
    with Pool(args.workers) as pool:
        real_stats = pool.map(measure, reals, chunksize=1)
        fake_stats = pool.map(measure, fakes, chunksize=1)
    seconds = time.time() - start

    def median(stats, row, key):
        return float(np.median([s["rows"][row][key] for s in stats]))

    print(f"{len(reals)} real and {len(fakes)} fake photos of {args.data} (seed {args.seed}), "
          f"{seconds:.0f} s on {args.workers} processes")
    same = [s["cjpeg_same"] for s in real_stats + fake_stats]
    if same[0] is not None:
        print(f"PIL and cjpeg byte-identical at q=85 (4:2:0, 4:4:4, progressive, optimized): {sum(same)} of {len(same)} files")
        for row in CJPEG_ROWS:
            r = np.median([s["dct"][row] for s in real_stats + fake_stats], axis=0)
            print(f"{row} against PIL's islow DCT at q=85, same file: r luma {r[0]:.3f}, r chroma {r[1]:.3f} (median)")
    for title, stats in (("real", real_stats), ("fake", fake_stats)):
        print(f"\n{title} photos (medians over files)\n")
        print("| transform | ghost q | keep level | keep spread | q90 level | r luma | r chroma |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in stats[0]["rows"]:
            print(f"| `{row}` | {median(stats, row, 'ghost_q'):.0f} | {median(stats, row, 'keep'):.2f} | "
                  f"{median(stats, row, 'spread'):.2f} | {median(stats, row, 'q90'):.2f} | "
                  f"{median(stats, row, 'r_luma'):.2f} | {median(stats, row, 'r_chroma'):.2f} |")

if __name__ == "__main__":
    main()
