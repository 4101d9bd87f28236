"""JPEG ghost maps as batched tensor math, on the CPU or a GPU.

`jpeg_ghosts.raw_maps` (the reference) re-saves each file with PIL, with its own tables and at
qualities 50-95, and measures the squared change per 8x8 block and YCbCr plane: 11 encodes and 12
decodes a file. Here the same 3 x 11 maps come from the decoded planes directly, in the DCT domain:

- One orthonormal 8x8 DCT of each plane (a matmul with the 64x64 basis). JPEG's DCT is that
  transform, so re-quantizing a block with table Q changes it by d - Q*round(d/Q) per coefficient,
  and by Parseval the mean squared change over the block's pixels is sum((d - Q*round(d/Q))^2) / 64.
  No inverse DCT, no re-encode, no rounding of pixels.
- Qualities 50-95: each block's re-quantization error with PIL's tables for that quality (luma
  table on Y, chroma table on Cb/Cr), on the planes the reference compares with (the decoded RGB
  in YCbCr). PIL saves those at 4:2:0, so Cb/Cr are first averaged over 2x2 pixels as libjpeg's
  encoder does; each averaged block's error goes to the four cells it covers, plus the error of the
  averaging itself (each pixel against its group's mean).
- "keep" (the file's own tables): a block re-saved with the tables it was decoded from changes only
  where a coefficient lands on another quantization step than the file stored. The stored steps are
  read from the decoder's own YCbCr planes (round(DCT / Q)); the encoder sees those planes after the
  decoder's and then the encoder's colour conversion (libjpeg's integer arithmetic, reproduced
  exactly), which move a few pixels by one and clip saturated colours. The map is the energy of the
  coefficients that land on another step, each counted with a linear ramp of half-width
  `SNAP_SOFTNESS` steps around the half-step boundary (the reference's integer DCT decides the
  close calls). Chroma at the file's own sampling, as PIL's keep rule re-saves it.

These are an approximation of the reference, not its numbers (docs/ghost-maps.md has the measured
correlation per channel group): a model trained on `raw_maps` needs retraining on these maps.

Input: (N, 3, H, W) uint8 planes, either YCbCr as the JPEG decoder produced them (PIL's
`draft("YCbCr")`, what `load_ghost_input` gives) or RGB (what DALI, nvJPEG and torchvision give).
From RGB the keep maps lose most of their match (the stored steps cannot be read back through the
RGB rounding); the quality maps are the same. float32 throughout, on every device: the maps do not
depend on which CPU computes them.

On the CPU the work is many passes over large tensors: freshly allocated ones cost page faults
under glibc's default allocator, so run workers with an allocator that keeps freed memory
(docs/ghost-maps.md). Run it one thread a process (as DataLoader workers do).

One module, though long: the formulation (DCT basis, tables, colour conversions, keep maps) is one
piece of numerics whose parts are only checked against the reference together.
"""
from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from realfake.pipelines.images import InvalidImageError, load_jpeg
from realfake.pipelines.jpeg_ghosts import BLOCK, CHANNELS, LOG_EPS, MCU, QUALITIES, grid_cells
from realfake.pipelines.jpeg_headers import JpegHeaderError, fast_maps_problem, keep_tables, read_header

SNAP_SOFTNESS = 0.05  # keep maps: half-width, in quantization steps, of the ramp around half a step
# Chunks of at most this many pixels a call (a 600x600 image is 0.36 M): bounded memory at any batch.
CHUNK_PIXELS = {"cpu": 1 << 19, "cuda": 1 << 23}
# libjpeg's fixed-point colour conversions (jccolor.c, jdcolor.c): 16 fraction bits, rounded.
_SCALE_BITS = 16
_HALF = 1 << (_SCALE_BITS - 1)
_ONE_OVER = 1.0 / (1 << _SCALE_BITS)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALE_BITS) + 0.5)


# --------------------------------------------------------------------------- tables and bases

@functools.cache
def quality_tables() -> torch.Tensor:
    """(10, 2, 64) float32: the luma and chroma tables (natural order) PIL writes at qualities 50, 55,
    ..., 95, read back from a tiny image saved at each (so they are PIL's own, not a copy)."""
    from PIL import Image

    tables = []
    for quality in QUALITIES[1:]:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=quality)
        with Image.open(buf) as img:
            tables.append([img.quantization[0], img.quantization[1]])
    return torch.tensor(tables, dtype=torch.float32)


@functools.cache
def dct_basis() -> torch.Tensor:
    """(64, 64) float32 orthonormal 2-D DCT-II of an 8x8 block flattened row-major: coefficients =
    block @ basis.T, in the natural order of JPEG's quantization tables."""
    k = torch.arange(BLOCK, dtype=torch.float64)
    scale = torch.where(k == 0, math.sqrt(1 / BLOCK), math.sqrt(2 / BLOCK))[:, None]
    c = scale * torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / (2 * BLOCK))
    return torch.kron(c, c).float()


# --------------------------------------------------------------------------- colour
# libjpeg's integer conversions, computed exactly in float32: every product and partial sum is an
# integer below 2**24, and the shifts are floors of divisions by 2**16. `dim` is the channel dimension.

def ycbcr_to_rgb(ycc: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """libjpeg's decoder conversion (jdcolor.c) of integer YCbCr to RGB: float32 integers 0-255, what
    PIL gives as the decoded RGB image."""
    y, cb, cr = ycc.float().unbind(dim)
    out = torch.empty_like(ycc, dtype=torch.float32)
    r, g, b = out.unbind(dim)
    torch.sub(cr, 128, out=r)
    torch.sub(cb, 128, out=g)
    torch.mul(g, _fix(1.77200), out=b).add_(_HALF)
    g.mul_(-_fix(0.34414)).add_(r, alpha=-_fix(0.71414)).add_(_HALF)
    r.mul_(_fix(1.40200)).add_(_HALF)
    return out.mul_(_ONE_OVER).floor_().add_(y.unsqueeze(dim)).clamp_(0, 255)


def rgb_to_ycbcr_encoder(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """libjpeg's encoder conversion (jccolor.c) of RGB to YCbCr: float32 integers, what a re-save
    quantizes."""
    r, g, b = rgb.float().unbind(dim)
    offset = (128 << _SCALE_BITS) + _HALF - 1
    out = torch.empty_like(rgb, dtype=torch.float32)
    y, cb, cr = out.unbind(dim)
    torch.mul(r, _fix(0.29900), out=y).add_(g, alpha=_fix(0.58700)).add_(b, alpha=_fix(0.11400)).add_(_HALF)
    torch.mul(b, _fix(0.5), out=cb).add_(offset).add_(r, alpha=-_fix(0.16874)).add_(g, alpha=-_fix(0.33126))
    torch.mul(r, _fix(0.5), out=cr).add_(offset).add_(g, alpha=-_fix(0.41869)).add_(b, alpha=-_fix(0.08131))
    return out.mul_(_ONE_OVER).floor_()


def rgb_to_ycbcr(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """JFIF's RGB -> YCbCr in float32, unrounded."""
    r, g, b = rgb.float().unbind(dim)
    out = torch.empty_like(rgb, dtype=torch.float32)
    y, cb, cr = out.unbind(dim)
    torch.mul(r, 0.299, out=y).add_(g, alpha=0.587).add_(b, alpha=0.114)
    torch.mul(b, 0.5, out=cb).add_(128).add_(r, alpha=-0.168736).add_(g, alpha=-0.331264)
    torch.mul(r, 0.5, out=cr).add_(128).add_(g, alpha=-0.418688).add_(b, alpha=-0.081312)
    return out


# --------------------------------------------------------------------------- block errors
# Planes are held as blocks: (n, planes, Hb, Wb, 64), each 8x8 block's pixels row-major. The encoder's
# 2x2 (or 1x2) chroma averaging stays inside a block, so the subsampled planes come from the same
# layout without going back to rows of pixels.

def _blocks(planes: torch.Tensor) -> torch.Tensor:
    """(n, c, H, W) uint8, H and W multiples of 8 -> (n, c, H/8, W/8, 64) float32 blocks."""
    n, c, height, width = planes.shape
    view = planes.reshape(n, c, height // BLOCK, BLOCK, width // BLOCK, BLOCK).transpose(3, 4)
    out = torch.empty(view.shape, dtype=torch.float32, device=planes.device)
    return out.copy_(view).reshape(n, c, height // BLOCK, width // BLOCK, BLOCK * BLOCK)


def _dct(blocks: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """DCT coefficients (natural order) of (..., 64) blocks, level-shifted by 128 as JPEG does (which
    only lowers the DC coefficient, by 128 * 8)."""
    coefs = blocks @ basis.T
    coefs[..., 0] -= 128 * BLOCK
    return coefs


def _requantize_energy(coefs: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel change of each block re-quantized with each table:
    coefs (..., 64), tables (k, 64) -> (..., k)."""
    flat = coefs.reshape(-1, 64)
    steps, rounded = torch.empty_like(flat), torch.empty_like(flat)
    out = flat.new_empty((tables.shape[0], flat.shape[0]))
    for i, table in enumerate(tables.unbind(0)):  # one table at a time: temporaries the size of coefs
        torch.mul(flat, 1 / table, out=steps)
        torch.round(steps, out=rounded)
        torch.mv(steps.sub_(rounded).square_(), table * table / 64, out=out[i])
    return out.T.reshape(*coefs.shape[:-1], tables.shape[0])


def _keep_energy(coefs: torch.Tensor, delta: torch.Tensor, tables: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Expected mean squared pixel change of each block re-saved with the tables it was decoded from.

    coefs (n, p, Hb, Wb, 64): DCT of the decoder's planes, which lie on the file's steps (overwritten); delta (same
    shape): what the encoder sees less those planes, zero in most blocks (the colour round trip moves
    a few pixels by one), so only the blocks it touches are transformed; tables (n, p, 1, 1, 64).
    A coefficient changes step when the encoder's value lies more than half a step from the file's;
    counted with a linear ramp of half-width SNAP_SOFTNESS around that boundary. -> (n, p, Hb, Wb)."""
    inverse = 1 / tables
    offset = coefs.mul_(inverse)
    offset -= torch.round(offset)  # in steps, from the file's step
    flat, changes = offset.view(-1, 64), delta.reshape(-1, 64)
    touched = (changes.amax(1).ne(0) | changes.amin(1).ne(0)).nonzero().squeeze(1)
    per_plane = inverse.reshape(-1, 64)[touched // (coefs.shape[2] * coefs.shape[3])]
    flat.index_add_(0, touched, (changes.index_select(0, touched) @ basis.T).mul_(per_plane))
    changed = offset.abs_().sub_(0.5 - SNAP_SOFTNESS).mul_(0.5 / SNAP_SOFTNESS).clamp_(0, 1)
    weights = (tables * tables / 64).flatten(-3, -2).transpose(-2, -1)  # (n, p, 64, 1)
    return (changed.flatten(-3, -2) @ weights).view(changed.shape[:-1])


def _subsample(blocks: torch.Tensor, fy: int, fx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's chroma subsampling, from (n, c, Hb, Wb, 64) blocks with Hb, Wb even:
    (the averaged planes as blocks, (n, c, Hb/fy, Wb/fx, 64); the squared error of the averaging per
    full-size block, (n, c, Hb, Wb)). The error is each pixel's distance to its group's mean (the
    decoder's upsampling read as replication): mean(p^2) - mean(group mean^2), centred at 128."""
    n, c, hb, wb, _ = blocks.shape
    sy, sx = BLOCK // fy, BLOCK // fx
    centred = blocks - 128
    means = centred @ _group_means(fy, fx, blocks.device).T  # (n, c, hb, wb, sy * sx)
    error = centred.square_() @ centred.new_full((64,), 1 / 64) - means.square() @ means.new_full((sy * sx,), 1 / (sy * sx))
    small = means.view(n, c, hb // fy, fy, wb // fx, fx, sy, sx).permute(0, 1, 2, 4, 3, 6, 5, 7)
    return small.reshape(n, c, hb // fy, wb // fx, 64).add_(128), error.clamp_(min=0)


@functools.cache
def _group_means(fy: int, fx: int, device: torch.device) -> torch.Tensor:
    """(64 / (fy * fx), 64): the means of the fy x fx pixel groups of a row-major 8x8 block."""
    sy, sx = BLOCK // fy, BLOCK // fx
    rows = torch.arange(BLOCK).repeat_interleave(BLOCK) // fy * sx + torch.arange(BLOCK).repeat(BLOCK) // fx
    return torch.zeros(sy * sx, 64).index_put_((rows, torch.arange(64)), torch.tensor(1 / (fy * fx))).to(device)


def _to_cells(energy: torch.Tensor, fy: int, fx: int, h: int, w: int) -> torch.Tensor:
    """(..., Hb, Wb) per block of a plane subsampled by (fy, fx) -> (..., h, w) per full-size cell."""
    if fy > 1:
        energy = energy.repeat_interleave(fy, -2)
    if fx > 1:
        energy = energy.repeat_interleave(fx, -1)
    return energy[..., :h, :w]


def pad_edges(planes: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Extend (..., H, W) to (..., rows, cols) by repeating the last row and column, as libjpeg's encoder pads."""
    height, width = planes.shape[-2:]
    if cols > width:
        planes = torch.cat([planes, planes[..., -1:].expand(*planes.shape[:-1], cols - width)], -1)
    if rows > height:
        planes = torch.cat([planes, planes[..., -1:, :].expand(*planes.shape[:-2], rows - height, cols)], -2)
    return planes


def _pad_to_mcu(planes: torch.Tensor) -> torch.Tensor:
    """Whole 16x16 MCUs, the last row and column repeated as the encoder pads them."""
    height, width = planes.shape[-2:]
    return pad_edges(planes, height + -height % MCU, width + -width % MCU)


# PIL subsampling code -> chroma factors (rows, columns) of a re-save; -1 re-saves at PIL's default, 4:2:0.
SUBSAMPLING_FACTORS = {0: (1, 1), 1: (1, 2), 2: (2, 2), -1: (2, 2)}


def check_batch(pixels: torch.Tensor, keep_tables: torch.Tensor, keep_subsampling: Sequence[int],
                what: str) -> list[int]:
    """Refuse a batch a maps function cannot take (`what` names its pixels); the subsampling codes as ints."""
    if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.dtype != torch.uint8:
        raise ValueError(f"{what} must be (N, 3, H, W) uint8, got {tuple(pixels.shape)} {pixels.dtype}")
    n, _, height, width = pixels.shape
    if height < BLOCK or width < BLOCK:
        raise ValueError(f"{what} of {width}x{height} pixels: ghost maps need at least 8x8")
    if keep_tables.shape != (n, 3, 64):
        raise ValueError(f"keep_tables must be ({n}, 3, 64), got {tuple(keep_tables.shape)}")
    codes = [int(c) for c in keep_subsampling]
    if len(codes) != n or any(c not in SUBSAMPLING_FACTORS for c in codes):
        raise ValueError(f"keep_subsampling needs one of {sorted(SUBSAMPLING_FACTORS)} per image, got {codes}")
    return codes


def _maps_chunk(planes: torch.Tensor, keep: torch.Tensor, tables: torch.Tensor, basis: torch.Tensor,
                fy: int, fx: int, color: str) -> torch.Tensor:
    """The maps of n images of one size and keep subsampling: planes (n, 3, H, W) uint8, keep (n, 3, 64)
    float32, tables `quality_tables()`, basis `dct_basis()` -> (n, CHANNELS, H/8, W/8) float32."""
    n, _, height, width = planes.shape
    h, w = height // BLOCK, width // BLOCK  # the reference's cells: whole blocks only
    blocks = _blocks(_pad_to_mcu(planes))  # (n, 3, hb, wb, 64)
    if color == "ycbcr":
        decoded, rgb = blocks, ycbcr_to_rgb(blocks, dim=1)
        seen = rgb_to_ycbcr(rgb, dim=1)  # what the reference compares with, unrounded
    else:  # the decoder's planes, read back from its RGB: rounding the JFIF inverse recovers 98.6-99.99%
        rgb = blocks  # of the pixels of CIPLAB files (the rest are colours the conversion clipped)
        seen = rgb_to_ycbcr(rgb, dim=1)
        decoded = seen.round().clamp_(0, 255)
    delta = rgb_to_ycbcr_encoder(rgb, dim=1).sub_(decoded)  # what a re-save quantizes, less the decoded planes
    del rgb
    keep = keep[:, :, None, None, :]

    # Keep: luma, and chroma at the file's own sampling.
    full = 3 if (fy, fx) == (1, 1) else 1
    energy = _keep_energy(_dct(decoded[:, :full], basis), delta[:, :full], keep[:, :full], basis)
    keep_luma = energy[:, :1, :h, :w]
    if full == 3:
        keep_chroma = energy[:, 1:, :h, :w]
    else:
        small_decoded, _ = _subsample(decoded[:, 1:], fy, fx)
        small_delta, _ = _subsample(delta[:, 1:] + 128, fy, fx)
        keep_chroma = _keep_energy(_dct(small_decoded, basis), small_delta - 128, keep[:, 1:], basis)
        keep_chroma = _to_cells(keep_chroma, fy, fx, h, w) + _subsample(seen[:, 1:], fy, fx)[1][..., :h, :w]
    # Qualities: luma, and chroma at 4:2:0 plus the error of its averaging.
    quality_luma = _requantize_energy(_dct(seen[:, 0], basis), tables[:, 0])[:, :h, :w].movedim(-1, 1)
    small, averaging = _subsample(seen[:, 1:], 2, 2)
    quality_chroma = _requantize_energy(_dct(small, basis), tables[:, 1]).movedim(-1, 2)  # (n, 2, 10, hb/2, wb/2)
    quality_chroma = _to_cells(quality_chroma, 2, 2, h, w) + averaging[:, :, None, :h, :w]

    maps = [keep_luma, keep_chroma]
    for q in range(tables.shape[0]):
        maps += [quality_luma[:, q:q + 1], quality_chroma[:, :, q]]
    return torch.cat(maps, 1)


def ghost_maps(planes: torch.Tensor, keep_tables: torch.Tensor, keep_subsampling: Sequence[int], *,
               color: str = "ycbcr", chunk_pixels: int | None = None) -> torch.Tensor:
    """Raw ghost maps of a batch: (N, CHANNELS, H/8, W/8) float32 on the planes' device, in the
    layout of `jpeg_ghosts.raw_maps` (per quality "keep", 50, ..., 95: Y, Cb, Cr), in stored
    orientation.

    planes: (N, 3, H, W) uint8 of images as cropped for the maps (`mcu_crop`), YCbCr planes as the
    decoder gave them (color="ycbcr") or decoded RGB (color="rgb"). keep_tables: (N, 3, 64) the tables
    a re-save "with the file's own tables" uses for Y, Cb, Cr (`jpeg_headers.keep_tables`); keep_subsampling:
    PIL's subsampling code of each file (`JpegHeader.pil_subsampling`: 0 4:4:4, 1 4:2:2, 2 4:2:0,
    -1 other, re-saved at 4:2:0 as PIL does). A grayscale file is its Y plane with Cb = Cr = 128
    (or R = G = B). Works through the batch in chunks of at most `chunk_pixels` (default by device).
    """
    if color not in ("ycbcr", "rgb"):
        raise ValueError(f"color must be 'ycbcr' or 'rgb', not {color!r}")
    codes = check_batch(planes, keep_tables, keep_subsampling, "planes")
    n, _, height, width = planes.shape
    budget = chunk_pixels or CHUNK_PIXELS.get(planes.device.type, CHUNK_PIXELS["cpu"])
    step = max(1, budget // (height * width))
    keep_tables = keep_tables.to(planes.device, torch.float32).clamp(1, 32767)
    tables, basis = quality_tables().to(planes.device), dct_basis().to(planes.device)
    out = torch.empty((n, CHANNELS, height // BLOCK, width // BLOCK), dtype=torch.float32, device=planes.device)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32/bf16 matmuls would move coefficients across steps
    try:
        for code in sorted(set(codes)):
            index = [i for i, c in enumerate(codes) if c == code]
            fy, fx = SUBSAMPLING_FACTORS[code]
            for start in range(0, len(index), step):
                part = index[start:start + step]
                if part[-1] - part[0] == len(part) - 1:  # a run of images: a view, no copy
                    part = slice(part[0], part[-1] + 1)
                else:
                    part = torch.as_tensor(part, device=planes.device)
                out[part] = _maps_chunk(planes[part], keep_tables[part], tables, basis, fy, fx, color)
    finally:
        torch.set_float32_matmul_precision(precision)
    return out


# --------------------------------------------------------------------------- crop, turn, normalize

def mcu_crop(planes: torch.Tensor, image_size: int) -> torch.Tensor:
    """(..., H, W) -> the centre crop of at most image_size a side that `raw_maps` re-saves: starting
    on the 16-pixel MCU grid, so the blocks are the file's own."""
    height, width = planes.shape[-2:]
    side_h, side_w = min(height, image_size), min(width, image_size)
    top, left = (height - side_h) // 2 // MCU * MCU, (width - side_w) // 2 // MCU * MCU
    return planes[..., top:top + side_h, left:left + side_w]


def orient(maps: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn (..., h, w) maps by an EXIF orientation as PIL's ImageOps.exif_transpose turns pixels."""
    if orientation == 2:
        return maps.flip(-1)
    if orientation == 3:
        return maps.flip(-2, -1)
    if orientation == 4:
        return maps.flip(-2)
    if orientation == 5:
        return maps.transpose(-2, -1)
    if orientation == 6:
        return maps.rot90(-1, (-2, -1))
    if orientation == 7:
        return maps.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return maps.rot90(1, (-2, -1))
    return maps


def normalize(maps: torch.Tensor, cells: int) -> torch.Tensor:
    """`jpeg_ghosts.normalize` for (..., C, h, w): log-scale, centre each map on its own mean, and
    pad with zeros (centred) to (..., C, cells, cells)."""
    logged = torch.log(maps.float() + LOG_EPS)
    logged = logged - logged.mean((-2, -1), keepdim=True)
    h, w = min(logged.shape[-2], cells), min(logged.shape[-1], cells)
    top, left = (cells - h) // 2, (cells - w) // 2
    out = logged.new_zeros((*logged.shape[:-2], cells, cells))
    out[..., top:top + h, left:left + w] = logged[..., :h, :w]
    return out


# --------------------------------------------------------------------------- files

class NeedsReference(Exception):
    """A JPEG the batched maps do not handle (`jpeg_headers.fast_maps_problem`): compute its maps
    with the PIL reference (`jpeg_ghosts.raw_maps`) instead."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}: use the PIL reference maps (jpeg_ghosts.raw_maps) for this file")


@dataclass
class GhostInput:
    """One file, ready for `ghost_maps`: what a DataLoader worker hands over."""

    planes: torch.Tensor  # (3, h, w) uint8 YCbCr as decoded, cropped as raw_maps crops, stored orientation
    keep_tables: torch.Tensor  # (3, 64) float32: tables of a re-save with the file's own tables
    keep_subsampling: int  # PIL's subsampling code of the file
    orientation: int  # EXIF orientation (1-8)


def fast_maps_header(path: str | os.PathLike, data: bytes | None = None):
    """The header of a file the batched maps handle. Raises InvalidImageError with the reference's reason
    for files it rejects too (not a JPEG, truncated, ...), NeedsReference for JPEGs only it handles."""
    try:
        header = read_header(path if data is None else data)
    except OSError as exc:
        raise InvalidImageError(path, f"unreadable: {exc.strerror or exc}") from exc
    except JpegHeaderError as exc:
        load_jpeg(path, data=data)[0].close()  # raises the reference's reason (not a JPEG, truncated, ...)
        raise NeedsReference(path, str(exc)) from exc  # PIL reads it: leave it to the reference
    problem = fast_maps_problem(header)
    if problem is not None:
        raise NeedsReference(path, problem)
    return header


def load_ghost_input(path: str | os.PathLike, image_size: int, *, data: bytes | None = None) -> GhostInput:
    """Decode one JPEG (PIL, to its YCbCr planes) for the batched maps, with its tables from the header.
    `data`: the file's bytes held in memory (a laundered copy), `path` naming it in errors.

    Raises InvalidImageError for files the reference rejects too (empty, corrupt, truncated, not a JPEG,
    too small) and NeedsReference for JPEGs that only the reference handles."""
    header = fast_maps_header(path, data)
    img, orientation = load_jpeg(path, ycbcr=True, data=data)
    with img:
        if img.mode not in ("YCbCr", "L"):
            raise NeedsReference(path, f"decoded as {img.mode}")
        width, height = img.size
        if min(width, image_size) < BLOCK or min(height, image_size) < BLOCK:
            raise InvalidImageError(path, f"too small ({width}x{height}: ghost maps need 8x8 pixels)")
        pixels = torch.from_numpy(np.array(img))
    if pixels.dim() == 2:  # grayscale: Y, with neutral chroma
        planes = torch.cat([pixels[None], torch.full((2, height, width), 128, dtype=torch.uint8)])
    else:
        planes = pixels.permute(2, 0, 1)
    planes = mcu_crop(planes, image_size).contiguous()
    tables = torch.tensor(keep_tables(header), dtype=torch.float32)
    return GhostInput(planes=planes, keep_tables=tables, keep_subsampling=header.pil_subsampling,
                      orientation=orientation)


def maps_of_inputs(inputs: Sequence[GhostInput], image_size: int, *,
                   device: str | torch.device = "cpu", color: str = "ycbcr") -> torch.Tensor:
    """The model input of each file: (N, CHANNELS, cells, cells) float32 on `device`, like
    `jpeg_ghosts.ghost_maps` (normalized, in display orientation). Files of one crop size go through
    `ghost_maps` together. `color="rgb"`: the inputs' planes are decoded RGB (DALI, nvJPEG), see
    `ghost_maps`."""
    return model_input(inputs, [item.planes for item in inputs], image_size, device,
                       lambda planes, tables, codes: ghost_maps(planes, tables, codes, color=color))


def model_input(inputs: Sequence, pixels: Sequence[torch.Tensor], image_size: int, device: str | torch.device,
                raw_maps: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]) -> torch.Tensor:
    """(N, CHANNELS, cells, cells) float32 on `device`: `raw_maps(pixels, keep_tables, codes)` of the inputs
    of each crop size together (their `pixels`), then turned and normalized per file."""
    cells = grid_cells(image_size)
    out = torch.empty((len(inputs), CHANNELS, cells, cells), dtype=torch.float32, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(pixels):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    for index in by_size.values():
        batch = torch.stack([pixels[i] for i in index]).to(device, non_blocking=True)
        tables = torch.stack([inputs[i].keep_tables for i in index]).to(device)
        raw = raw_maps(batch, tables, [inputs[i].keep_subsampling for i in index])
        for row, i in enumerate(index):
            out[i] = normalize(orient(raw[row], inputs[i].orientation), cells)
    return out
