"""Generated JPEG content for the ghost-map tests: textures with every kind of detail, and edits pasted
from another JPEG."""
import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The CIPLAB set beside the repository (../shared/data), for the tests that check it when it is there.
CIPLAB = next((p / "shared" / "data" / "real_and_fake_face" for p in Path(__file__).resolve().parents
               if (p / "shared" / "data" / "real_and_fake_face").is_dir()), Path("/nonexistent"))


@contextlib.contextmanager
def one_torch_thread():
    """The maps run one thread a process, as in DataLoader workers: many small ops, which intra-op
    threads only slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def texture(size, seed) -> Image.Image:
    """A smooth random image with some grain: blocks of every kind of detail."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.normal(128, 40, size=(h // 8 + 1, w // 8 + 1, 3)).clip(0, 255).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray((pixels + rng.normal(0, 6, pixels.shape)).clip(0, 255).astype(np.uint8))


def pasted(image: Image.Image, quality: int, box) -> Image.Image:
    """`image` with the square `box` taken from a copy saved at `quality` first (an edit from another JPEG)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    once = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    image = image.copy()
    image.paste(once.crop(box), box[:2])
    return image


# (size, save options, mode); every third file carries a pasted square that went through quality 40.
CORPUS = [
    ((96, 96), dict(quality=90), "RGB"), ((96, 96), dict(quality=75), "RGB"), ((96, 96), dict(quality=60), "RGB"),
    ((128, 96), dict(quality=95), "RGB"), ((101, 75), dict(quality=85), "RGB"), ((200, 136), dict(quality=90), "RGB"),
    ((96, 96), dict(quality=90, subsampling="4:4:4"), "RGB"), ((96, 96), dict(quality=80, subsampling="4:4:4"), "RGB"),
    ((112, 96), dict(quality=92, subsampling="4:4:4", progressive=True), "RGB"),
    ((96, 96), dict(quality=90, subsampling="4:2:2"), "RGB"), ((120, 88), dict(quality=85, subsampling="4:2:2"), "RGB"),
    ((96, 96), dict(quality=90, progressive=True), "RGB"), ((96, 96), dict(quality=85), "L"),
]


def write_corpus(folder: Path) -> list[tuple[Path, dict]]:
    """CORPUS written to `folder` as 00.jpg, 01.jpg, ...: (path, save options) of each."""
    files = []
    for i, (size, save, mode) in enumerate(CORPUS):
        image = texture(size, i)
        if i % 3 == 0:
            image = pasted(image, 40, (32, 32, 64, 64))
        path = folder / f"{i:02d}.jpg"
        image.convert(mode).save(path, format="JPEG", **save)
        files.append((path, save))
    return files
