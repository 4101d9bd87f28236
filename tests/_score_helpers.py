"""Image folders (good and every kind of bad file), engines, fast options and output readers for the
scoring tests."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from realfake.jobs.tasks.outputs.common import ERROR_COLUMNS, errors_path
from realfake.jobs.tasks.outputs.writers import read_rows

# run_score's options for small test folders: no worker processes, no progress bar.
FAST = dict(loader="torch", num_workers=0, batch_size=8, progress=False)


def rows_of(path) -> list[dict]:
    return list(read_rows(path))


def errors_of(out) -> dict[str, str]:
    """path -> reason, from OUT's errors file."""
    return {row["path"]: row["reason"] for row in read_rows(errors_path(out), ERROR_COLUMNS)}


def save_image(path: Path, rng: np.random.Generator, size: int = 40, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt, quality=90)
    return path


def jpeg_bytes(rng: np.random.Generator, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_good_folder(root: Path, n: int = 24, seed: int = 0) -> list[Path]:
    """n small images: every extension in several letter cases, nested folders, spaces, non-ASCII names."""
    rng = np.random.default_rng(seed)
    names = ["plain.jpg", "UPPER.JPG", "mixed.JpEg", "photo.png", "scan.BMP", "web.webp",
             "with space.jpg", "ñandú façade.jpg", "日本語.png", "sub/inner.jpg", "sub/deep er/x.PNG"]
    paths = []
    for i in range(n):
        name = names[i] if i < len(names) else f"sub/many/img_{i:03d}.jpg"
        paths.append(save_image(root / name, rng))
    return paths


def corrupt_jpeg() -> bytes:
    """A JPEG whose headers are intact and whose scan data is noise that libjpeg rejects (checked for
    this seed: not every noise is rejected, some decodes to garbage pixels)."""
    rng = np.random.default_rng(1)
    jpg = jpeg_bytes(rng)
    sos = jpg.index(b"\xff\xda")  # start of scan; its header is 14 bytes here (3 components)
    return jpg[:sos + 14] + rng.integers(0, 256, len(jpg) - sos - 16, dtype=np.uint8).tobytes() + jpg[-2:]


def write_bad_files(root: Path, seed: int = 1) -> dict[str, str]:
    """One file of each kind scoring must reject -> the reason its errors file must give."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    jpg = jpeg_bytes(rng)
    gif, tiff = io.BytesIO(), io.BytesIO()
    Image.new("P", (20, 20)).save(gif, "GIF")
    Image.new("RGB", (20, 20)).save(tiff, "TIFF")
    files = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (jpg[: len(jpg) * 6 // 10], "truncated"),
        "corrupt.jpg": (corrupt_jpeg(), "corrupt"),
        "text.jpg": (b"this is a text file, not a photo\n", "not an image"),
        "animation.jpg": (gif.getvalue(), "unsupported format"),
        "scan.png": (tiff.getvalue(), "unsupported format"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}


# ----------------------------------------------------------------------------------------------- engines

def build_engines(root: Path) -> tuple[Path, Path]:
    """Two eager engines (different ids) at 32 px from a 1-epoch tiny simple_cnn run."""
    from _train_helpers import make_prepared
    from realfake.engines.build import build_engine
    from realfake.jobs.tasks.train import run_train

    data_dir = make_prepared(root / "data", n_per_class=12, size=40)
    run = run_train(data_dir, model="simple_cnn", image_size=32, batch_size=8, epochs=1, num_workers=0,
                    loader="torch", progress=False, out=root / "runs", name="tiny")
    first = build_engine(run["run_dir"], root / "engine_a", backend="eager", threshold=0.5, batch=(1, 8, 64))
    second = build_engine(run["run_dir"], root / "engine_b", backend="eager", threshold=0.4, batch=(1, 8, 64))
    return Path(first), Path(second)


# `python -c LAUNCHER score ...`: the `realfake` command line in a subprocess.
LAUNCHER = "from realfake.jobs.cli import main; main()"
