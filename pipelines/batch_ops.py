"""Image ops on whole batches with one random parameter per image, on whatever device the batch is on.

torchvision's v2 functional ops take one parameter for a whole batch (one angle, one sigma); drawing
one per image would mean a Python loop of small kernels per image. These ops take a tensor of
parameters instead and do the batch in one or two kernels (affine_grid + grid_sample, grouped
convolutions), so the GPU cache loader and the pseudo-fake maker cost nothing on the CPU. Each op
matches its torchvision v2 counterpart image by image (tested).

Images are float (N, C, H, W) in [0, 1]. Random parameters are drawn with `uniform` from a CPU
`torch.Generator`, so a batch's augmentation is the same on every device and after `--resume`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


def uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """n floats in [low, high), drawn on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator)


def bernoulli(generator: torch.Generator, n: int, p: float) -> torch.Tensor:
    """n booleans, each True with probability p, drawn on the CPU."""
    return torch.rand(n, generator=generator) < p


def per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) parameters as (N, 1, 1, 1) on the batch's device and dtype, for broadcasting."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def affine(images: torch.Tensor, *, angle_deg: torch.Tensor | None = None, scale: torch.Tensor | None = None,
           translate: torch.Tensor | None = None, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Rotate (counter-clockwise, degrees, as torchvision's rotate), scale and translate each image
    about its centre. translate: (N, 2) as fractions of width and height. Pixels from outside the
    image are 0 (padding_mode "zeros", torchvision's fill=0) or repeat the border ("border")."""
    n, _, h, w = images.shape
    angle = torch.zeros(n) if angle_deg is None else angle_deg.float().cpu()
    zoom = torch.ones(n) if scale is None else scale.float().cpu()
    shift = torch.zeros(n, 2) if translate is None else translate.float().cpu()
    rad = angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad) / zoom, torch.sin(rad) / zoom
    # theta maps output to input coordinates in affine_grid's normalized [-1, 1] space. The aspect
    # factors keep the rotation a rotation in pixels on non-square images.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    # Output = shifted input: input coordinate = theta_linear @ (output - 2 * shift).
    theta[:, 0, 2] = -2.0 * (shift[:, 0] * theta[:, 0, 0] + shift[:, 1] * theta[:, 0, 1])
    theta[:, 1, 2] = -2.0 * (shift[:, 0] * theta[:, 1, 0] + shift[:, 1] * theta[:, 1, 1])
    grid = F.affine_grid(theta.to(device=images.device, dtype=images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where `flip` (N,) is True."""
    where = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(where, images.flip(-1), images)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness with one factor per image."""
    return (images * per_image(factor, images)).clamp_(0.0, 1.0)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_contrast with one factor per image: blend with the image's mean gray."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    f = per_image(factor, images)
    return (f * images + (1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_saturation with one factor per image: blend with the grayscale image."""
    f = per_image(factor, images)
    return (f * images + (1.0 - f) * grayscale(images)).clamp_(0.0, 1.0)


def gaussian_kernels(kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """(N, kernel_size) normalized 1-D Gaussian kernels, torchvision's `_get_gaussian_kernel1d` per sigma."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size)
    pdf = torch.exp(-0.5 * (x.view(1, -1) / sigma.float().cpu().view(-1, 1)) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, kernel_size: tuple[int, int], sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's gaussian_blur with one sigma per image (same on both axes); kernel_size is
    (width, height) as torchvision's, odd; reflect padding as torchvision's."""
    kx, ky = kernel_size
    if kx % 2 == 0 or ky % 2 == 0 or kx < 1 or ky < 1:
        raise ValueError(f"blur kernel size {kernel_size} must be two odd positive numbers")
    n, c, h, w = images.shape
    # One group per (image, channel): a single grouped convolution blurs the batch with N sigmas.
    flat = images.reshape(1, n * c, h, w)
    if kx > 1:
        weight = gaussian_kernels(kx, sigma).repeat_interleave(c, dim=0).view(n * c, 1, 1, kx)
        flat = F.conv2d(F.pad(flat, (kx // 2, kx // 2, 0, 0), mode="reflect"),
                        weight.to(images.device, images.dtype), groups=n * c)
    if ky > 1:
        weight = gaussian_kernels(ky, sigma).repeat_interleave(c, dim=0).view(n * c, 1, ky, 1)
        flat = F.conv2d(F.pad(flat, (0, 0, ky // 2, ky // 2), mode="reflect"),
                        weight.to(images.device, images.dtype), groups=n * c)
    return flat.reshape(n, c, h, w)


def gaussian_blur_where(images: torch.Tensor, apply: torch.Tensor, kernel_size: tuple[int, int],
                        sigma: torch.Tensor) -> torch.Tensor:
    """Blur only the images where `apply` is True (the others are returned untouched)."""
    index = torch.nonzero(apply, as_tuple=False).flatten()
    if index.numel() == 0:
        return images
    out = images.clone()
    device_index = index.to(images.device)
    out[device_index] = gaussian_blur(images[device_index], kernel_size, sigma[index])
    return out


def odd_at_least_one(value: float) -> int:
    """The odd integer nearest to value (at least 1): a kernel size scaled to another resolution."""
    return max(1, 2 * math.floor((value - 1) / 2 + 0.5) + 1)


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size crop per image (uniform position), as torchvision's RandomCrop."""
    n, _, h, w = images.shape
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the images ({h}x{w}): use a smaller crop")
    if size == h and size == w:
        return images
    top = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
    return torch.stack([img[:, t:t + size, x:x + size] for img, t, x in zip(images, top, left, strict=True)])
