"""Research probe (issue 8): JPEG ghost maps + a small CNN, from scratch. The product has grown from it
(`realfake train --model ghost_cnn`, `realfake sweep --preset jpeg-ghosts`); this script keeps what the
product does not: training on the "like-real" files only, and the occlusion test.

Each image is re-saved as JPEG with its own quantization tables (PIL quality="keep") and at the
standard qualities 50, 55, ..., 95; the squared difference to the original, per YCbCr plane, averaged
over each 8x8 block, gives 33 maps of 75x75 for a 600x600 image (Farid's "JPEG ghosts" on the block
grid). Maps are log-scaled and each is centred on its own mean, so the network sees where an image's
compression history differs from place to place, not its overall level. A 5-convolution CNN is
trained on the train split of a `realfake data prepare` manifest (horizontal flips, AdamW, one-cycle,
30 epochs) and evaluated on the valid and test splits, overall and on the fakes saved with the same
quantization tables as the real images ("like-real": there the tables cannot give a fake away).

    python docs/probes/jpeg_ghosts.py DATA/manifest.csv --cache ghost_maps.npy --seeds 0,1,2 [--train-on like-real]

Cost on 2 CPU cores: 2.5 min for the maps of the 1735 CIPLAB images, about 8 min a seed. Results and
what they mean: docs/quality.md.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from realfake.models.ghost_cnn import GhostCNN
from realfake.pipelines.jpeg_ghosts import raw_maps
from sklearn.metrics import roc_auc_score, roc_curve

# Region priors of docs/quality.md (fractions of the height / width), and which CCCC bit edits each.
REGIONS = {"left eye": (0.44, 0.36, 0), "right eye": (0.44, 0.64, 1), "nose": (0.58, 0.50, 2), "mouth": (0.73, 0.50, 3)}


def ghost_maps(path: str) -> np.ndarray:
    """(33, H/8, W/8) mean squared re-save error per 8x8 block and YCbCr plane: the product's maps
    (realfake.pipelines.jpeg_ghosts) before their log and centring, which main() does."""
    return raw_maps(path, 10**6)


def table_id(path: str) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(repr(sorted(im.quantization.items())).encode()).hexdigest()


def net(channels: int) -> nn.Module:
    # ghost_cnn with one logit (binary cross-entropy) instead of the product's two-class head
    return GhostCNN(num_classes=1)


def predict(model, x):
    with torch.no_grad():  # mean of the image and its mirror
        return ((torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(3)))) / 2).squeeze(1).numpy()


def region_cells(shape, cy, cx, half=0.08):
    h, w = shape
    return slice(int((cy - half) * h), int((cy + half) * h)), slice(int((cx - half) * w), int((cx + half) * w))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--cache", default="ghost_maps.npy", help="where the maps are kept between runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-on", choices=["all", "like-real"], default="all")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)

    rows = list(csv.DictReader(open(args.manifest)))
    paths = [r["path"] for r in rows]
    y = np.array([int(r["label"]) for r in rows])
    split = np.array([r["split"] for r in rows])
    with Pool(2) as pool:
        tables = np.array(pool.map(table_id, paths, chunksize=32))
        if not Path(args.cache).exists():
            np.save(args.cache, np.stack(pool.map(ghost_maps, paths, chunksize=8)).astype(np.float16))
    like_real = np.isin(tables, tables[y == 0])
    maps = np.log(np.load(args.cache).astype(np.float32) + 0.01)
    if maps.shape[0] != len(paths):
        raise SystemExit(f"{args.cache} holds maps of {maps.shape[0]} files, the manifest lists {len(paths)}: "
                         "it was made for another manifest; delete it or pass another --cache")
    x_all = torch.tensor(maps - maps.mean((2, 3), keepdims=True))
    targets = torch.tensor(y, dtype=torch.float32)
    train = np.flatnonzero((split == "train") & (like_real if args.train_on == "like-real" else True))
    codes = [Path(p).stem.rsplit("_", 1)[-1] if label else "" for p, label in zip(paths, y, strict=True)]

    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = net(x_all.shape[1])
        steps = args.epochs * -(-len(train) // 32)
        opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
        for _ in range(args.epochs):
            model.train()
            order = rng.permutation(train)
            for i in range(0, len(order), 32):
                idx = order[i:i + 32]
                xb = x_all[idx].flip(3) if rng.random() < 0.5 else x_all[idx]
                loss = F.binary_cross_entropy_with_logits(model(xb).squeeze(1), targets[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        valid, test = np.flatnonzero(split == "valid"), np.flatnonzero(split == "test")
        p_valid, p_test = predict(model, x_all[valid]), predict(model, x_all[test])
        fpr, tpr, thr = roc_curve(y[valid], p_valid)  # the valid split's equal-error point
        threshold = thr[np.argmin(np.abs(fpr - (1 - tpr)))]
        line = [f"seed {seed}"]
        for name, idx, p in (("valid", valid, p_valid), ("test", test, p_test)):
            keep = like_real[idx]
            line.append(f"{name} AUC {roc_auc_score(y[idx], p):.3f} like-real {roc_auc_score(y[idx][keep], p[keep]):.3f} "
                        f"acc {np.mean((p >= threshold) == y[idx]):.3f}")
        print(" | ".join(line), flush=True)
        # Occlusion: how much p_fake drops on the test fakes when one region's maps are flattened, for
        # the fakes whose file name says that region was edited and for those where it was not.
        fakes = test[y[test] == 1]
        base = predict(model, x_all[fakes])
        for region, (cy, cx, bit) in REGIONS.items():
            occluded = x_all[fakes].clone()
            rs, cs = region_cells(occluded.shape[2:], cy, cx)
            occluded[:, :, rs, cs] = 0.0
            drop = base - predict(model, occluded)
            edited = np.array([len(codes[i]) == 4 and codes[i][bit] == "1" for i in fakes])
            print(f"  occlude {region:9s}: mean drop of p_fake {drop[edited].mean():+.3f} where edited "
                  f"({edited.sum()}), {drop[~edited].mean():+.3f} where not ({(~edited).sum()})", flush=True)


if __name__ == "__main__":
    main()
