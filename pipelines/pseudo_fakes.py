"""Self-blended pseudo-fakes: extra fake training images made from real ones, on the batch's device.

After Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images" (CVPR 2022), and Face X-ray
(Li et al., CVPR 2020). A real face is blended, inside a soft mask, with a copy of itself (or of another
real face) whose colour, scale and position were jittered. The result carries exactly the traces an
expert retouch leaves in this data set (a pasted or re-touched eye, nose or mouth): colour and
sharpness steps along a smooth boundary, with no semantic change a detector could shortcut on.

No face landmark model is available offline, so regions come from priors: the CIPLAB portraits are
centred, roughly aligned 600x600 faces, and `REGIONS` holds where the mean real image has its eyes,
nose and mouth (docs/quality.md). Each pseudo-fake picks, like the data set's fake codes (eye-eye-nose-mouth bits), a non-empty
set of those regions, or the whole face, or a random smooth blob; each region is an ellipse whose
centre, radii and angle are jittered, elastically deformed and blurred into a soft edge.

Every random number comes from a CPU `torch.Generator` (a few numbers per image, plus tiny
low-resolution noise); the pixel work runs where the images are (GPU or CPU), in batched ops.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from realfake.pipelines import batch_ops
from realfake.pipelines.spec import MEAN, STD

# Region priors as (centre x, centre y, radius x, radius y), fractions of width and height.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left_eye": (0.36, 0.44, 0.11, 0.06),
    "right_eye": (0.64, 0.44, 0.11, 0.06),
    "nose": (0.50, 0.58, 0.08, 0.12),
    "mouth": (0.50, 0.73, 0.14, 0.07),
}
FACE = (0.50, 0.56, 0.30, 0.38)  # the whole face, forehead to chin
MASK_KINDS = ("regions", "face", "blob", "ellipse")
_MASK_RES = 96  # masks are drawn at this resolution (they are smooth) and resized to the image


@dataclass(frozen=True)
class PseudoFakeSpec:
    """How pseudo-fakes are made. Defaults follow SBI where it applies (blend ratios, colour shift
    of about 20/255, down-scaling or sharpening of the source)."""

    # probabilities of the mask kinds, in MASK_KINDS order: facial regions, whole face, noise blob,
    # random ellipse (normalized)
    mask_weights: tuple[float, float, float, float] = (0.55, 0.15, 0.15, 0.15)
    region_p: float = 0.5  # each of the four regions joins the mask with this probability (at least one)
    centre_jitter: float = 0.04  # region centres move by up to this fraction of the image
    radius_scale: tuple[float, float] = (0.8, 1.3)
    max_angle_deg: float = 20.0
    elastic: float = 0.04  # amplitude of the smooth random displacement of the mask, fraction of the image
    edge_sigma: tuple[float, float] = (0.01, 0.04)  # mask blur sigma, fraction of the image side
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # SBI's
    other_face_p: float = 0.25  # blend another real face of the batch instead of the image itself
    color_shift: float = 0.08  # per-channel offset, +-
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.15
    quality_p: tuple[float, float] = (0.3, 0.3)  # P(down-scale x2..x4), P(sharpen) of the source
    scale: tuple[float, float] = (0.95, 1.05)
    translate: float = 0.03  # fraction of the image, +-

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_SPEC = PseudoFakeSpec()


def _ellipses(n: int, cx, cy, rx, ry, angle_deg, size: int, device) -> torch.Tensor:
    """(N, 1, size, size) hard ellipse masks; parameters are (N,) CPU tensors in image fractions."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    p = [t.to(device=device, dtype=torch.float32).view(n, 1, 1) for t in (cx, cy, rx, ry, angle_deg)]
    cx, cy, rx, ry, angle = p
    rad = angle * (torch.pi / 180.0)
    dx, dy = x - cx, y - cy
    u = (dx * torch.cos(rad) + dy * torch.sin(rad)) / rx
    v = (-dx * torch.sin(rad) + dy * torch.cos(rad)) / ry
    return (u * u + v * v <= 1.0).float().unsqueeze(1)


def _jittered(n: int, prior, spec: PseudoFakeSpec, g: torch.Generator):
    cx, cy, rx, ry = prior
    j = spec.centre_jitter
    return (cx + batch_ops.uniform(g, n, -j, j), cy + batch_ops.uniform(g, n, -j, j),
            rx * batch_ops.uniform(g, n, *spec.radius_scale), ry * batch_ops.uniform(g, n, *spec.radius_scale),
            batch_ops.uniform(g, n, -spec.max_angle_deg, spec.max_angle_deg))


def make_masks(n: int, height: int, width: int, generator: torch.Generator, spec: PseudoFakeSpec = DEFAULT_SPEC,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 1, H, W) soft blending masks in [0, 1] (before the blend ratio)."""
    g, res = generator, _MASK_RES
    weights = torch.tensor(spec.mask_weights, dtype=torch.float64)
    kind = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=g)

    # facial regions: a non-empty random subset of the four, like the data set's fake codes
    chosen = batch_ops.bernoulli(g, n * len(REGIONS), spec.region_p).view(n, len(REGIONS))
    empty = ~chosen.any(1)
    chosen[empty, torch.randint(0, len(REGIONS), (n,), generator=g)[empty]] = True
    region_masks = torch.zeros(n, 1, res, res, device=device)
    for r, prior in enumerate(REGIONS.values()):
        m = _ellipses(n, *_jittered(n, prior, spec, g), res, device)
        region_masks = torch.maximum(region_masks, m * chosen[:, r].to(device).view(n, 1, 1, 1))
    face = _ellipses(n, *_jittered(n, FACE, spec, g), res, device)
    # a blob: the face's pixels where smooth noise is above a per-image level (relative to the noise's
    # range over the face, so the blob is never empty)
    noise = torch.rand(n, 1, 5, 5, generator=g).to(device)
    noise = F.interpolate(noise, size=(res, res), mode="bicubic", align_corners=False)
    level = batch_ops.uniform(g, n, 0.55, 0.8).to(device).view(n, 1, 1, 1)
    on_face = face > 0
    lo = torch.where(on_face, noise, torch.inf).amin(dim=(2, 3), keepdim=True)
    hi = torch.where(on_face, noise, -torch.inf).amax(dim=(2, 3), keepdim=True)
    blob = (((noise - lo) / (hi - lo + 1e-6) >= level) & on_face).float()
    # a random ellipse anywhere on the face
    free = (batch_ops.uniform(g, n, 0.3, 0.7), batch_ops.uniform(g, n, 0.3, 0.8),
            batch_ops.uniform(g, n, 0.06, 0.2), batch_ops.uniform(g, n, 0.06, 0.2),
            batch_ops.uniform(g, n, -90.0, 90.0))
    ellipse = _ellipses(n, *free, res, device)

    masks = torch.stack([region_masks, face, blob, ellipse], 0)[kind.to(device), torch.arange(n, device=device)]
    # elastic deformation: a smooth random displacement field (Face X-ray / SBI deform the hull)
    shift = (torch.rand(n, 2, 4, 4, generator=g) * 2 - 1) * (2 * spec.elastic)
    field = F.interpolate(shift.to(device), size=(res, res), mode="bicubic", align_corners=False)
    base = F.affine_grid(torch.eye(2, 3, device=device).expand(n, 2, 3), [n, 1, res, res], align_corners=False)
    masks = F.grid_sample(masks, base + field.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    # soft edges
    sigma = batch_ops.uniform(g, n, *spec.edge_sigma) * res
    kernel = batch_ops.odd_at_least_one(4 * spec.edge_sigma[1] * res + 1)
    masks = batch_ops.gaussian_blur(masks, (kernel, kernel), sigma)
    return F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def _jitter_source(images: torch.Tensor, g: torch.Generator, spec: PseudoFakeSpec) -> torch.Tensor:
    """The copy that gets pasted: colour, sharpness, scale and position jittered (SBI's source transforms)."""
    n, _, h, w = images.shape
    shift = (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1) * spec.color_shift
    out = (images + shift.to(images.device, images.dtype)).clamp(0.0, 1.0)
    out = batch_ops.adjust_brightness(out, batch_ops.uniform(g, n, 1 - spec.brightness, 1 + spec.brightness))
    out = batch_ops.adjust_contrast(out, batch_ops.uniform(g, n, 1 - spec.contrast, 1 + spec.contrast))
    out = batch_ops.adjust_saturation(out, batch_ops.uniform(g, n, 1 - spec.saturation, 1 + spec.saturation))
    # sharpness: down-scale and back up (a softer paste), or unsharp-mask (a crisper one), or neither
    pick = torch.rand(n, generator=g)
    soften = pick < spec.quality_p[0]
    sharpen = (pick >= spec.quality_p[0]) & (pick < spec.quality_p[0] + spec.quality_p[1])
    factor = float(batch_ops.uniform(g, 1, 2.0, 4.0))
    if soften.any():
        small = F.interpolate(out, size=(max(1, int(h / factor)), max(1, int(w / factor))), mode="bilinear",
                              antialias=True, align_corners=False)
        soft = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        out = torch.where(soften.to(out.device).view(n, 1, 1, 1), soft, out)
    amount = batch_ops.uniform(g, n, 0.3, 1.0)
    if sharpen.any():
        blurred = batch_ops.gaussian_blur(out, (5, 5), torch.full((n,), 1.0))
        crisp = (out + batch_ops.per_image(amount, out) * (out - blurred)).clamp(0.0, 1.0)
        out = torch.where(sharpen.to(out.device).view(n, 1, 1, 1), crisp, out)
    t = spec.translate
    return batch_ops.affine(out, scale=batch_ops.uniform(g, n, *spec.scale),
                            translate=(torch.rand(n, 2, generator=g) * 2 - 1) * t, padding_mode="border")


def blend_pseudo_fakes(images: torch.Tensor, generator: torch.Generator, spec: PseudoFakeSpec = DEFAULT_SPEC,
                       return_masks: bool = False):
    """Pseudo-fakes of real images (N, 3, H, W) in [0, 1]; returns the blended images (and the masks
    times blend ratio, i.e. the fraction of each pixel taken from the source)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected real images shaped (N, 3, H, W), got {tuple(images.shape)}")
    n, _, h, w = images.shape
    if n == 0:
        return (images, images[:, :1]) if return_masks else images
    g = generator
    # source: the image itself, or another real face of the same batch (a derangement-free pick)
    other = batch_ops.bernoulli(g, n, spec.other_face_p) & (n > 1)
    partner = (torch.arange(n) + torch.randint(1, max(n, 2), (n,), generator=g)) % n
    source_index = torch.where(other, partner, torch.arange(n)).to(images.device)
    source = _jitter_source(images[source_index], g, spec)
    masks = make_masks(n, h, w, g, spec, device=images.device)
    ratios = torch.tensor(spec.blend_ratios)[torch.randint(0, len(spec.blend_ratios), (n,), generator=g)]
    alpha = masks * ratios.to(images.device, images.dtype).view(n, 1, 1, 1)
    blended = images * (1.0 - alpha) + source * alpha
    return (blended, alpha) if return_masks else blended


def add_pseudo_fakes(images: torch.Tensor, labels: torch.Tensor, rate: float, generator: torch.Generator, *,
                     mean, std, spec: PseudoFakeSpec = DEFAULT_SPEC, real_label: int = 0,
                     fake_label: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Append pseudo-fakes to a normalized training batch: round(rate x its real images) of them,
    chosen at random, each blended from a de-normalized copy and normalized again, label `fake_label`.

    The reals stay in the batch, so a pseudo-fake and its source are seen side by side (SBI's pairs)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"pseudo-fake rate {rate} must be between 0 and 1")
    real = torch.nonzero(labels.cpu() == real_label, as_tuple=False).flatten()
    k = int(round(rate * real.numel()))
    if k == 0:
        return images, labels
    pick = real[torch.randperm(real.numel(), generator=generator)[:k]].to(images.device)
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    reals01 = (images[pick].float() * s + m).clamp(0.0, 1.0)
    fakes = (blend_pseudo_fakes(reals01, generator, spec) - m) / s
    fake_labels = torch.full((k,), fake_label, dtype=labels.dtype, device=labels.device)
    return torch.cat([images, fakes.to(images.dtype)]), torch.cat([labels, fake_labels])


def train_batch_transform(*, seed: int, pseudo_fakes: float = 0.0, train_crop: int = 0, mean=None, std=None,
                          spec: PseudoFakeSpec = DEFAULT_SPEC, rank: int = 0):
    """The on-device step between a training loader and the model, or None when it has nothing to do:
    pseudo-fakes (on the full image, where the face priors hold), then one random crop per image.

    Returns transform(images, labels, epoch, step) -> (images, labels); its randomness is a pure
    function of (seed, epoch, step), so `--resume` replays it exactly, and of `rank`, the process of a
    data-parallel run, whose batches are its own.
    """
    if not pseudo_fakes and not train_crop:
        return None
    mean, std = mean or MEAN, std or STD

    def transform(images, labels, epoch: int, step: int):
        stream = f"batch:{seed}:{epoch}:{step}" + (f":rank{rank}" if rank else "")
        g = torch.Generator().manual_seed(zlib.crc32(stream.encode()))
        if pseudo_fakes:
            images, labels = add_pseudo_fakes(images, labels, pseudo_fakes, g, mean=mean, std=std, spec=spec)
        if train_crop:
            images = batch_ops.random_crops(images, train_crop, g)
        return images, labels

    return transform
