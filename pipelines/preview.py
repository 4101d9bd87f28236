"""A picture of one augmented training batch with its labels: what the model really sees."""
from __future__ import annotations

from pathlib import Path

import torch
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.manifest import read_manifest
from realfake.pipelines.plotting import pyplot
from realfake.pipelines.spec import CLASS_NAMES, DEFAULT_IMAGE_SIZE, MEAN, STD, AugmentSpec


def save_preview(data_dir: Path, out: Path, *, loader: str = "auto", n: int = 16,
                 image_size: int = DEFAULT_IMAGE_SIZE, augment: bool = True, split: str = "train",
                 seed: int = 0, epoch: int = 1) -> dict:
    """Draw the first `n` images of the split's epoch-`epoch` batch (augmented when `augment`) as a grid."""
    plt = pyplot()
    rows = read_manifest(data_dir, split)
    if not rows:
        raise ValueError(f"split {split!r} of {data_dir} is empty: preview another --split")
    n = min(n, len(rows))
    data = get_loader([r.path for r in rows], [r.label for r in rows], train=True, backend=loader,
                      image_size=image_size, batch_size=n, num_workers=0, seed=seed,
                      augment=AugmentSpec() if augment else None)
    data.set_epoch(epoch)
    batch = next(iter(data))
    images = batch.images.float().cpu() * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    images = images.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    cols = min(8, n)
    rows_n = -(-len(images) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(1.6 * cols, 2.1 * rows_n), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, index in zip(axes.flat, images, batch.labels.tolist(), batch.indices.tolist(), strict=False):
        ax.imshow(image)
        ax.set_title(f"{CLASS_NAMES[label]}\n{Path(rows[index].path).name[:18]}", fontsize=6,
                     color="tab:red" if label == 1 else "tab:green")
    mode = "augmented" if augment else "not augmented"
    fig.suptitle(f"{split} batch, {mode}, {image_size}px, loader {data.backend}", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return {"out": str(out), "images": len(images), "loader": data.backend,
            "labels": {name: int((batch.labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}}
