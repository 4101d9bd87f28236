"""Research probe (issue 8): the edited-region loss, width and pasted regions on ghost_cnn, fast.

The harness behind docs/quality.md's "Probes behind it" table (the rows on the product's ghost maps:
plain, region loss with its weights / window / fifth score / pooled variant, width, pasted regions,
epochs). It trains the product's network shape (`models/ghost_cnn.py`, one logit instead of two) on
the product's cached maps of a `realfake data prepare` manifest, in bf16 autocast with channels_last
(2.6x faster than fp32 on this CPU), and reports valid / test AUC and test accuracy at the valid EER
threshold (last weights, flip TTA). What the product keeps is measured again by
`realfake sweep --preset jpeg-ghosts`; this script is kept to rerun the decisions.

    realfake data prepare SRC --out data
    python docs/probes/region_loss.py data --aux local --width 48 --seeds 0,1,2 [--paste 0.5] [--save p-w48]

The maps come from (and, the first time, go into) the product's cache in DATA/cache: 3 min for the
1735 CIPLAB files on 2 cores, then about 4 min a seed at width 32 and 7 at width 48. A fake whose name
has no CCCC code counts as every region edited here (the product leaves it unknown; CIPLAB has one).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from realfake.pipelines.ghost_loaders import GhostMapLoader
from realfake.pipelines.jpeg_ghosts import cache_paths_for
from realfake.pipelines.manifest import read_manifest
from realfake.pipelines.prepare import EDIT_REGIONS, edited_regions
from realfake.pipelines.pseudo_fakes import REGIONS as PRIORS
from sklearn.metrics import roc_auc_score, roc_curve

IMAGE_SIZE = 600
REG = [(PRIORS[name][1], PRIORS[name][0]) for name in EDIT_REGIONS]  # (y, x) fractions


def block(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Net(nn.Module):
    """ghost_cnn with one logit, and optionally a region head on its last feature map."""

    def __init__(self, cin, width=32, dropout=0.3):
        super().__init__()
        w = width
        self.features = nn.Sequential(block(cin, w), block(w, w), nn.MaxPool2d(2), block(w, 2 * w),
                                      block(2 * w, 2 * w), nn.MaxPool2d(2), nn.MaxPool2d(2), block(2 * w, 4 * w),
                                      nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, 1)
        self.aux = None

    def forward(self, x):
        if self.aux is None:
            return self.fc(self.drop(self.features(x))).squeeze(1)
        fmap = self.features[:-2](x)  # before the global max-pool
        logit = self.fc(self.drop(fmap.amax((2, 3)))).squeeze(1)
        if self.aux == "global":  # region bits from the pooled features: no position
            return logit, self.aux_fc(self.drop(fmap.amax((2, 3))))
        local = self.aux_conv(fmap)  # (N, 1, h, w)
        h, w = local.shape[2:]
        k = self.win // 2
        outs = []
        for cy, cx in REG:
            r, c = int(cy * h), int(cx * w)
            outs.append(local[:, 0, max(r - k, 0):r + k + 1, max(c - k, 0):c + k + 1].amax((1, 2)))
        if self.realall:  # a fifth score: the whole map's highest cell
            outs.append(local[:, 0].amax((1, 2)))
        return logit, torch.stack(outs, 1)


def load_maps(data_dir: Path, rows) -> torch.Tensor:
    """The product's ghost maps of every manifest row, in manifest order, each map centred."""
    loader = GhostMapLoader([r.path for r in rows], [r.label for r in rows], image_size=IMAGE_SIZE, batch_size=32,
                            cache_paths=cache_paths_for(data_dir, IMAGE_SIZE, [r.sha256 for r in rows]))
    maps = [None] * len(rows)
    for batch in loader:
        if batch.errors:
            raise SystemExit(f"cannot read {rows[batch.errors[0][0]].path}: {batch.errors[0][1]}")
        for i, m in zip(batch.indices.tolist(), batch.images, strict=True):
            maps[i] = m.half()
    x = torch.stack(maps).float()
    return x - x.mean((2, 3), keepdim=True)


def predict(model, x, bs=128):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            xb = x[i:i + bs]

            def logit(v):
                o = model(v)
                return o[0] if isinstance(o, tuple) else o
            out.append((torch.sigmoid(logit(xb)) + torch.sigmoid(logit(xb.flip(3)))) / 2)
    return torch.cat(out).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path, help="a `realfake data prepare` output")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--shift", type=int, default=4)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--aux", choices=["global", "local"], default=None, help="local = the product's --region-loss")
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--aux-window", type=int, default=3)
    ap.add_argument("--aux-realall", action="store_true")
    ap.add_argument("--paste", type=float, default=0.0,
                    help="per real of a batch: a copy with a train fake's edited region pasted into its maps")
    ap.add_argument("--paste-half", type=int, default=7, help="half side, in cells, of the pasted square")
    ap.add_argument("--save", default=None, help="prefix of .npz files with each seed's valid/test p_fake")
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = read_manifest(a.data_dir)
    y = np.array([r.label for r in rows])
    split = np.array([r.split for r in rows])
    x = load_maps(a.data_dir, rows)
    print("input", tuple(x.shape), flush=True)
    t = torch.tensor(y, dtype=torch.float32)
    regions = torch.tensor([edited_regions(r.path, r.label) or (1,) * len(EDIT_REGIONS) for r in rows],
                           dtype=torch.float32)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "valid", "test"))
    paste_pool = torch.tensor([i for i in tr if y[i] == 1 and regions[i].sum() > 0])
    for seed in [int(s) for s in a.seeds.split(",")]:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = Net(x.shape[1], a.width, a.dropout)
        if a.aux == "global":
            model.aux, model.aux_fc = "global", nn.Linear(4 * a.width, 4)
        elif a.aux == "local":
            model.aux, model.aux_conv = "local", nn.Conv2d(4 * a.width, 1, 1)
            model.win, model.realall = a.aux_window, a.aux_realall
        model = model.to(memory_format=torch.channels_last)
        steps = a.epochs * (len(tr) // 32)
        opt = torch.optim.AdamW(model.parameters(), a.lr, weight_decay=a.wd)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=steps)
        t0 = time.time()
        for ep in range(a.epochs):
            model.train()
            order = tr[torch.randperm(len(tr), generator=g).numpy()]
            for i in range(0, len(order) - 31, 32):
                idx = order[i:i + 32]
                xb, tb, rb = x[idx].clone(), t[idx], regions[idx].clone()
                if a.paste:
                    reals = torch.nonzero(tb == 0).flatten()
                    k = int(round(a.paste * len(reals)))
                    if k:
                        dst = reals[torch.randint(0, len(reals), (k,), generator=g)]
                        src = paste_pool[torch.randint(0, len(paste_pool), (k,), generator=g)]
                        new, newr = xb[dst].clone(), torch.zeros(k, 4)
                        h, w = new.shape[-2:]
                        hw = a.paste_half
                        for j in range(k):
                            bits = torch.nonzero(regions[src[j]] == 1).flatten()
                            r = bits[torch.randint(0, len(bits), (1,), generator=g)].item()
                            cy, cx = int(REG[r][0] * h), int(REG[r][1] * w)
                            ys, xs = slice(max(cy - hw, 0), cy + hw + 1), slice(max(cx - hw, 0), cx + hw + 1)
                            new[j, :, ys, xs] = x[src[j], :, ys, xs]
                            newr[j, r] = 1.0
                        xb, tb, rb = torch.cat([xb, new]), torch.cat([tb, torch.ones(k)]), torch.cat([rb, newr])
                m = torch.rand(len(xb), generator=g) < 0.5
                xb[m] = xb[m].flip(3)
                rb[m] = rb[m][:, [1, 0, 2, 3]]  # a mirrored face has its left eye on the right
                if a.shift:
                    k, s = a.shift, xb.shape[-1]
                    dy, dx = torch.randint(0, 2 * k + 1, (2,), generator=g).tolist()
                    xb = F.pad(xb, (k, k, k, k), mode="replicate")[:, :, dy:dy + s, dx:dx + s]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not a.fp32):
                    out = model(xb.contiguous(memory_format=torch.channels_last))
                if a.aux:
                    logit, reg = out[0].float(), out[1].float()
                    if a.aux_realall:  # the fifth score must be low on reals (fakes: unknown)
                        rb = torch.cat([rb, torch.where(tb == 0, 0.0, float("nan")).unsqueeze(1)], 1)
                    known = ~torch.isnan(rb)
                    loss = (F.binary_cross_entropy_with_logits(logit, tb)
                            + a.aux_weight * F.binary_cross_entropy_with_logits(reg[known], rb[known]))
                else:
                    loss = F.binary_cross_entropy_with_logits(out.float(), tb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            if (ep + 1) % 10 == 0:
                pv = predict(model, x[va])
                print(f"  seed {seed} ep {ep + 1} loss {loss.item():.3f} valid AUC {roc_auc_score(y[va], pv):.3f} "
                      f"{time.time() - t0:.0f}s", flush=True)
        pv, pt = predict(model, x[va]), predict(model, x[te])
        fpr, tpr, thr = roc_curve(y[va], pv)
        th = thr[np.argmin(np.abs(fpr - (1 - tpr)))]
        print(f"RESULT seed {seed} valid {roc_auc_score(y[va], pv):.3f} test {roc_auc_score(y[te], pt):.3f} "
              f"acc {np.mean((pt >= th) == y[te]):.3f} th {th:.3f}", flush=True)
        if a.save:
            np.savez(f"{a.save}-s{seed}.npz", valid=pv, test=pt)


if __name__ == "__main__":
    main()
