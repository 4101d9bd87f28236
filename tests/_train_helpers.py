"""A tiny prepared data set written directly (no `prepare`), so loader and training tests stand alone."""
from pathlib import Path

import numpy as np
from PIL import Image
from realfake.pipelines.manifest import ManifestRow, write_manifest


def make_image(path: Path, label: int, rng: np.random.Generator, size: int = 48, mode: str = "RGB") -> None:
    # fakes carry a bright square: learnable in a few steps
    pixels = rng.integers(60, 140, size=(size, size, 3), dtype=np.uint8)
    if label == 1:
        x, y = rng.integers(4, size // 2, size=2)
        pixels[y:y + size // 4, x:x + size // 4] = 250
    Image.fromarray(pixels).convert(mode).save(path, quality=95)


def make_images(folder: Path, n: int, size: int = 40) -> list[str]:
    """n JPEGs img_00.jpg... in `folder`, labels alternating real/fake (i % 2), seed 0."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:02d}.jpg"
        make_image(path, i % 2, rng, size=size)
        paths.append(str(path))
    return paths


def make_prepared(root: Path, n_per_class: int = 12, size: int = 48, seed: int = 0,
                  splits=("train",) * 8 + ("valid",) * 2 + ("test",) * 2, make=None) -> Path:
    """DATA_DIR with a manifest over n_per_class real + n_per_class fake JPEGs, each written by
    make(path, label, rng, size) (default make_image)."""
    make = make or make_image
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for label, name in ((0, "real"), (1, "fake")):
        for i in range(n_per_class):
            path = images / f"{name}_{i:03d}.jpg"
            make(path, label, rng, size)
            rows.append(ManifestRow(path=str(path), label=label, class_name=name, sha256=f"{label}{i:063d}",
                                    split=splits[i % len(splits)], group="real" if label == 0 else "easy",
                                    width=size, height=size))
    data_dir = root / "data"
    data_dir.mkdir()
    write_manifest(data_dir, sorted(rows, key=lambda r: r.path))
    return data_dir


def make_ghost_image(path: Path, label: int, rng: np.random.Generator, size: int = 96) -> None:
    """A smooth random JPEG saved at quality 90; a fake's 32 px square (on the block grid) went through
    quality 40 first: a local compression history that JPEG ghost maps show and pixels hardly do."""
    noise = rng.normal(128, 40, size=(size // 8, size // 8, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise).resize((size, size), Image.BICUBIC)
    if label == 1:
        import io

        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=40)
        once = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        x, y = (int(v) * 8 for v in rng.integers(0, (size - 32) // 8 + 1, size=2))
        image.paste(once.crop((x, y, x + 32, y + 32)), (x, y))
    image.save(path, format="JPEG", quality=90)


def make_ghost_prepared(root: Path, n_per_class: int = 16, size: int = 96, seed: int = 0) -> Path:
    """DATA_DIR over make_ghost_image JPEGs (12 train, 2 valid, 2 test a class at 16 a class)."""
    return make_prepared(root, n_per_class, size, seed, splits=("train",) * 6 + ("valid", "test"),
                         make=make_ghost_image)
