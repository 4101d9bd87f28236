"""The reference ("pil") ghost maps, bit for bit, as batched integer tensor math on the CPU or a GPU.

`jpeg_ghosts.raw_maps` re-saves each file with PIL (libjpeg-turbo underneath) and compares. Every step
of such a re-save is integer arithmetic that libjpeg-turbo defines exactly, its SIMD code included, so
here each step is that arithmetic on tensors, and the maps equal the reference's (tested):

1. encoder colour conversion (jccolor.c, 16-bit fixed point);
2. edge padding and chroma downsampling (jcprepare.c, jcsample.c: 2x2 or 2x1 sums with alternating
   rounding bias);
3. the integer "islow" forward DCT (jfdctint.c), quantization with rounding (jcdctmgr.c);
4. dequantization and the integer inverse DCT with range limiting (jidctint.c);
5. "fancy" (triangle filter) chroma upsampling (jdsample.c);
6. decoder colour conversion (jdcolor.c);
7. Pillow's own RGB -> YCbCr conversion of the original and the re-save (a table read from Pillow
   once, so it is Pillow's arithmetic whatever its version), squared difference, mean per 8x8 block.

Unlike `jpeg_ghosts_torch` (the "dct" kind, an approximation a model must be retrained on), these are
the maps every "pil" engine was trained on: an existing engine reads them unchanged. The input is the
decoded RGB: PIL's decode gives the reference's maps exactly; a GPU decoder (nvJPEG) that rounds some
pixels differently from libjpeg gives maps that differ by that much (docs/ghost-maps.md).

The cost is 11 encodes and decodes a file (pixel arithmetic in int64, the DCTs as float64 matmuls, both
exact): a GPU's work. On a CPU PIL's SIMD code is faster (docs/ghost-maps.md), so the CPU path keeps PIL.

Files this does not handle (anything but 8-bit 3-component YCbCr: grayscale, CMYK, 12-bit, ...)
raise `jpeg_ghosts_torch.NeedsReference` from `load_exact_input`; the caller uses the PIL reference.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from realfake.pipelines.images import InvalidImageError, load_jpeg
from realfake.pipelines.jpeg_ghosts import BLOCK, CHANNELS, QUALITIES
from realfake.pipelines.jpeg_ghosts_torch import (
    CHUNK_PIXELS,
    SUBSAMPLING_FACTORS,
    NeedsReference,
    check_batch,
    fast_maps_header,
    mcu_crop,
    model_input,
    pad_edges,
    quality_tables,
)
from realfake.pipelines.jpeg_headers import keep_tables

# libjpeg's islow DCT constants (jfdctint.c, jidctint.c): FIX(x) = round(x * 2**13).
_CONST_BITS, _PASS1_BITS = 13, 2
_F0298, _F0390, _F0541, _F0765 = 2446, 3196, 4433, 6270
_F0899, _F1175, _F1501, _F1847 = 7373, 9633, 12299, 15137
_F1961, _F2053, _F2562, _F3072 = 16069, 16819, 20995, 25172
# libjpeg's colour conversions: 16 fraction bits, FIX(x) = round(x * 2**16).
_SCALE_BITS = 16
_HALF = 1 << (_SCALE_BITS - 1)


def _fix16(x: float) -> int:
    return int(x * (1 << _SCALE_BITS) + 0.5)


# --------------------------------------------------------------------------- colour

@functools.cache
def _pillow_ycbcr_table(device: str = "cpu") -> torch.Tensor:
    """(2**24, 3) uint8 on `device`: Pillow's RGB -> YCbCr of every colour, indexed by r << 16 | g << 8 | b
    (kept per device: 48 MB, used 12 times a batch)."""
    from PIL import Image

    if device != "cpu":
        return _pillow_ycbcr_table("cpu").to(device)
    v = np.arange(1 << 24, dtype=np.uint32)
    cube = np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    return torch.from_numpy(np.asarray(Image.fromarray(cube).convert("YCbCr")).reshape(-1, 3).copy())


def pillow_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> the same as Pillow's `convert("YCbCr")`, uint8."""
    table = _pillow_ycbcr_table(str(rgb.device))
    r, g, b = rgb.long().unbind(1)
    return table[(r << 16) | (g << 8) | b].permute(0, 3, 1, 2)


def _encoder_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """jccolor.c rgb_ycc_convert: (N, 3, H, W) uint8 -> int64 YCbCr."""
    r, g, b = rgb.long().unbind(1)
    offset = (128 << _SCALE_BITS) + _HALF - 1
    y = (_fix16(0.29900) * r + _fix16(0.58700) * g + _fix16(0.11400) * b + _HALF) >> _SCALE_BITS
    cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b + offset) >> _SCALE_BITS
    cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b + offset) >> _SCALE_BITS
    return torch.stack([y, cb, cr], 1)


def _decoder_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """jdcolor.c ycc_rgb_convert: int64 planes -> (N, 3, H, W) uint8 RGB."""
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix16(1.40200) * cr + _HALF) >> _SCALE_BITS)
    g = y + ((-_fix16(0.34414) * cb - _fix16(0.71414) * cr + _HALF) >> _SCALE_BITS)
    b = y + ((_fix16(1.77200) * cb + _HALF) >> _SCALE_BITS)
    return torch.stack([r, g, b], 1).clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- sampling

def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _downsample(plane: torch.Tensor, fy: int, fx: int) -> torch.Tensor:
    """jcsample.c h2v2/h2v1_downsample of a full-size chroma plane (N, H, W), padded as libjpeg pads it
    (columns at full size to whole blocks of the output, rows to the next multiple of fy), to
    (N, ceil(H/fy), blocks * 8). The rounding bias alternates per output column: 1, 2 (2x2), 0, 1 (2x1)."""
    height, width = plane.shape[-2:]
    cols = _ceil(_ceil(width, fx), BLOCK) * BLOCK
    plane = pad_edges(plane, _ceil(height, fy) * fy, cols * fx)
    n, rows = plane.shape[0], plane.shape[1] // fy
    sums = plane.reshape(n, rows, fy, cols, fx).sum((2, 4))
    bias = torch.tensor([1, 2] if fy == 2 else [0, 1], device=plane.device).repeat(cols // 2)
    return (sums + bias) >> (fy + fx - 2)


def _upsample(plane: torch.Tensor, fy: int, fx: int, height: int, width: int) -> torch.Tensor:
    """jdsample.c h2v2/h2v1_fancy_upsample: the decoded chroma plane's first ceil(H/fy) x ceil(W/fx)
    samples (edge samples repeated for the filter's context, as libjpeg does) -> (N, H, W)."""
    small = plane[:, :_ceil(height, fy), :_ceil(width, fx)]
    if fy == 2:  # rows: 3/4 the nearer sample row, 1/4 the further; then the columns on the column sums
        above = torch.cat([small[:, :1], small[:, :-1]], 1)
        below = torch.cat([small[:, 1:], small[:, -1:]], 1)
        small = torch.stack([3 * small + above, 3 * small + below], 2).flatten(1, 2)
        left = torch.cat([small[..., :1], small[..., :-1]], -1)
        right = torch.cat([small[..., 1:], small[..., -1:]], -1)
        full = torch.stack([(3 * small + left + 8) >> 4, (3 * small + right + 7) >> 4], -1).flatten(-2)
    else:
        left = torch.cat([small[..., :1], small[..., :-1]], -1)
        right = torch.cat([small[..., 1:], small[..., -1:]], -1)
        full = torch.stack([(3 * small + left + 1) >> 2, (3 * small + right + 2) >> 2], -1).flatten(-2)
    return full[:, :height, :width]


# --------------------------------------------------------------------------- DCT
# libjpeg's islow DCTs are butterflies of integer adds and multiplies by constants, with one rounding
# right shift (DESCALE) at the end of each 1-D pass. So each pass is an integer 8x8 matrix, read off
# the butterfly below, then a rounding shift per output: one small matmul, exact in float64 (every sum
# stays below 2**36), where the butterfly itself would be ~50 elementwise operations a pass.

def _fdct_butterfly(d: Sequence[int], first: bool) -> tuple[list[int], list[int]]:
    """jfdctint.c jpeg_fdct_islow, one pass over 8 values: (outputs before their shift, shifts)."""
    tmp0, tmp7, tmp1, tmp6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
    tmp2, tmp5, tmp3, tmp4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    if first:  # outputs 0 and 4 are scaled up by PASS1_BITS, not shifted down
        out0, out4 = (tmp10 + tmp11) << _PASS1_BITS, (tmp10 - tmp11) << _PASS1_BITS
    else:
        out0, out4 = tmp10 + tmp11, tmp10 - tmp11
    z1 = (tmp12 + tmp13) * _F0541
    out2, out6 = z1 + tmp13 * _F0765, z1 - tmp12 * _F1847
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F1175
    tmp4, tmp5, tmp6, tmp7 = tmp4 * _F0298, tmp5 * _F2053, tmp6 * _F3072, tmp7 * _F1501
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    outs = [out0, tmp7 + z1 + z4, out2, tmp6 + z2 + z3, out4, tmp5 + z2 + z4, out6, tmp4 + z1 + z3]
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS
    even = 0 if first else _PASS1_BITS
    return outs, [even, shift, shift, shift, even, shift, shift, shift]


def _idct_butterfly(i: Sequence[int], first: bool) -> tuple[list[int], list[int]]:
    """jidctint.c jpeg_idct_islow, one pass over 8 values: (outputs before their shift, shifts)."""
    z1 = (i[2] + i[6]) * _F0541
    tmp2, tmp3 = z1 - i[6] * _F1847, z1 + i[2] * _F0765
    tmp0, tmp1 = (i[0] + i[4]) << _CONST_BITS, (i[0] - i[4]) << _CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    tmp0, tmp1, tmp2, tmp3 = i[7], i[5], i[3], i[1]
    z1, z2, z3, z4 = tmp0 + tmp3, tmp1 + tmp2, tmp0 + tmp2, tmp1 + tmp3
    z5 = (z3 + z4) * _F1175
    tmp0, tmp1, tmp2, tmp3 = tmp0 * _F0298, tmp1 * _F2053, tmp2 * _F3072, tmp3 * _F1501
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    tmp0, tmp1, tmp2, tmp3 = tmp0 + z1 + z3, tmp1 + z2 + z4, tmp2 + z2 + z3, tmp3 + z1 + z4
    outs = [tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0,
            tmp13 - tmp0, tmp12 - tmp1, tmp11 - tmp2, tmp10 - tmp3]
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
    return outs, [shift] * BLOCK


@functools.cache
def _pass(butterfly, first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(matrix.T, rounding offset, 1 / 2**shift) of one pass, float64: the butterfly applied to each unit
    vector gives a column of its matrix (it is linear up to the shift)."""
    columns = [butterfly([int(k == j) for k in range(BLOCK)], first)[0] for j in range(BLOCK)]
    shifts = butterfly([0] * BLOCK, first)[1]
    matrix = torch.tensor(columns, dtype=torch.float64)  # row j: the outputs of unit vector j, i.e. matrix.T
    offset = torch.tensor([(1 << n) >> 1 for n in shifts], dtype=torch.float64)
    return matrix, offset, torch.tensor([2.0 ** -n for n in shifts], dtype=torch.float64)


def _apply(x: torch.Tensor, butterfly, first: bool, dim: int) -> torch.Tensor:
    """One pass along `dim` (8 long) of float64 integers: the matmul, then each output's rounding shift."""
    matrix, offset, scale = (t.to(x.device) for t in _pass(butterfly, first))
    x = x.movedim(dim, -1)
    return (x @ matrix).add_(offset).mul_(scale).floor_().movedim(-1, dim)


def _fdct(plane: torch.Tensor) -> torch.Tensor:
    """jpeg_fdct_islow of every block of a padded plane: (N, H, W) int64 samples, H and W multiples of 8
    -> (N, H/8, W/8, 8, 8) float64 coefficients, scaled by 8 as libjpeg leaves them."""
    n, height, width = plane.shape
    blocks = (plane - 128).double().reshape(n, height // BLOCK, BLOCK, width // BLOCK, BLOCK).transpose(2, 3)
    return _apply(_apply(blocks, _fdct_butterfly, True, -1), _fdct_butterfly, False, -2)


def _quantized_idct(coefs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantize `coefs` (`_fdct`'s) with `table` (N, 64, natural order), dequantize and decode with
    jpeg_idct_islow: (N, H, W) int64 samples 0-255."""
    n, hb, wb = coefs.shape[:3]
    step = table.double().reshape(n, 1, 1, BLOCK, BLOCK)
    divisor = step * 8
    # jcdctmgr.c: round half away from zero, (|c| + divisor/2) // divisor with the sign put back.
    quantized = coefs.abs().add_(torch.floor(divisor / 2)).div_(divisor).floor_().mul_(coefs.sign())
    samples = _apply(_apply(quantized.mul_(step), _idct_butterfly, True, -2), _idct_butterfly, False, -1)
    samples = samples.add_(128).clamp_(0, 255).long()
    return samples.transpose(2, 3).reshape(n, hb * BLOCK, wb * BLOCK)


def _luma_coefs(ycc: torch.Tensor) -> torch.Tensor:
    """Y's coefficients, padded to whole 16x16 MCUs: the padding beyond a block never reaches a visible
    block, so every re-save of the image, whatever its sampling, shares them."""
    height, width = ycc.shape[-2:]
    return _fdct(pad_edges(ycc[:, 0], _ceil(height, 2 * BLOCK) * 2 * BLOCK, _ceil(width, 2 * BLOCK) * 2 * BLOCK))


def _chroma_coefs(ycc: torch.Tensor, fy: int, fx: int) -> list[torch.Tensor]:
    """Cb's and Cr's coefficients at chroma sampling 1/fy x 1/fx, padded and downsampled as libjpeg does."""
    height, width = ycc.shape[-2:]
    out = []
    for c in (1, 2):
        if (fy, fx) == (1, 1):
            small = pad_edges(ycc[:, c], _ceil(height, BLOCK) * BLOCK, _ceil(width, BLOCK) * BLOCK)
        else:
            small = _downsample(ycc[:, c], fy, fx)
            small = pad_edges(small, _ceil(small.shape[1], BLOCK) * BLOCK, small.shape[2])
        out.append(_fdct(small))
    return out


def _decode(luma: torch.Tensor, chroma: Sequence[torch.Tensor], tables: torch.Tensor, fy: int, fx: int,
            height: int, width: int) -> torch.Tensor:
    """The RGB a decoder gives for these coefficients quantized with `tables` (N, 3, 64): (N, 3, H, W) uint8."""
    y = _quantized_idct(luma, tables[:, 0])[:, :height, :width]
    planes = []
    for c, coefs in zip((1, 2), chroma, strict=True):
        decoded = _quantized_idct(coefs, tables[:, c])
        planes.append(decoded[:, :height, :width] if (fy, fx) == (1, 1) else _upsample(decoded, fy, fx, height, width))
    return _decoder_rgb(y, *planes)


def resave(rgb: torch.Tensor, tables: torch.Tensor, fy: int, fx: int) -> torch.Tensor:
    """What PIL gives back for a baseline JPEG re-save of (N, 3, H, W) uint8 RGB with `tables` (N, 3, 64),
    natural order, for Y, Cb, Cr, and chroma sampled 1/fy x 1/fx: (N, 3, H, W) uint8 RGB."""
    ycc = _encoder_ycbcr(rgb)
    return _decode(_luma_coefs(ycc), _chroma_coefs(ycc, fy, fx), tables.long(), fy, fx, *rgb.shape[-2:])


# --------------------------------------------------------------------------- maps

def _block_errors(base: torch.Tensor, resaved: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Mean squared difference per 8x8 block of two (N, 3, H, W) uint8 images, over h x w whole blocks:
    exact in float32 (squares of integers up to 255, summed 64 at a time), as the reference's numpy sum."""
    n, c = base.shape[:2]
    err = base[..., :h * BLOCK, :w * BLOCK].float().sub_(resaved[..., :h * BLOCK, :w * BLOCK].float())
    return err.mul_(err).reshape(n, c, h, BLOCK, w, BLOCK).mean((3, 5))


def _maps_chunk(rgb: torch.Tensor, keep: torch.Tensor, code: int, quality: torch.Tensor) -> torch.Tensor:
    """The 11 re-saves of images of one size and keep sampling: they share the encoder's colour conversion
    and DCT (per chroma sampling); only quantization and decoding differ."""
    n, _, height, width = rgb.shape
    h, w = height // BLOCK, width // BLOCK
    base = pillow_ycbcr(rgb)
    ycc = _encoder_ycbcr(rgb)
    luma, chroma = _luma_coefs(ycc), {}
    maps = []
    for i, q in enumerate(QUALITIES):
        if q == "keep":
            tables, factors = keep, SUBSAMPLING_FACTORS[code]
        else:  # PIL's quality re-saves: the luma table on Y, the chroma table on Cb and Cr, 4:2:0
            tables, factors = quality[i - 1][[0, 1, 1]].expand(n, 3, 64), (2, 2)
        if factors not in chroma:
            chroma[factors] = _chroma_coefs(ycc, *factors)
        resaved = _decode(luma, chroma[factors], tables, *factors, height, width)
        maps.append(_block_errors(base, pillow_ycbcr(resaved), h, w))
    return torch.cat(maps, 1)


def raw_maps(rgb: torch.Tensor, keep_tables: torch.Tensor, keep_subsampling: Sequence[int], *,
             chunk_pixels: int | None = None) -> torch.Tensor:
    """`jpeg_ghosts.raw_maps` of a batch: (N, 3, H, W) uint8 decoded RGB of images as cropped for the maps
    (`mcu_crop`), keep_tables (N, 3, 64) as `jpeg_headers.keep_tables`, keep_subsampling PIL's code of each
    file -> (N, CHANNELS, H/8, W/8) float32 on rgb's device, stored orientation."""
    codes = check_batch(rgb, keep_tables, keep_subsampling, "rgb")
    n, _, height, width = rgb.shape
    step = max(1, (chunk_pixels or CHUNK_PIXELS.get(rgb.device.type, CHUNK_PIXELS["cpu"])) // (height * width))
    keep_tables = keep_tables.to(rgb.device).long().clamp(1, 32767)
    quality = quality_tables().to(rgb.device).long()
    out = torch.empty((n, CHANNELS, height // BLOCK, width // BLOCK), dtype=torch.float32, device=rgb.device)
    for code in sorted(set(codes)):
        index = torch.as_tensor([i for i, c in enumerate(codes) if c == code], device=rgb.device)
        for start in range(0, len(index), step):
            part = index[start:start + step]
            out[part] = _maps_chunk(rgb[part], keep_tables[part], code, quality)
    return out


# --------------------------------------------------------------------------- files

@dataclass
class ExactInput:
    """One file, ready for `raw_maps`: its decoded RGB, cropped as the reference crops, and its tables."""

    rgb: torch.Tensor  # (3, h, w) uint8, stored orientation
    keep_tables: torch.Tensor  # (3, 64) the tables' integers, in any dtype
    keep_subsampling: int
    orientation: int


def load_exact_input(path: str | os.PathLike, image_size: int, *, data: bytes | None = None) -> ExactInput:
    """Decode one JPEG with PIL to RGB (as the reference does), tables and sampling from its header.
    Raises InvalidImageError as the reference does, and NeedsReference for files only it handles."""
    header = fast_maps_header(path, data)
    if header.color != "ycbcr":
        raise NeedsReference(path, f"{header.color} components")
    img, orientation = load_jpeg(path, data=data)
    with img:
        if img.mode != "RGB":
            raise NeedsReference(path, f"decoded as {img.mode}")
        width, height = img.size
        if min(width, image_size) < BLOCK or min(height, image_size) < BLOCK:
            raise InvalidImageError(path, f"too small ({width}x{height}: ghost maps need 8x8 pixels)")
        rgb = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return ExactInput(rgb=mcu_crop(rgb, image_size).contiguous(),
                      keep_tables=torch.tensor(keep_tables(header), dtype=torch.int64),
                      keep_subsampling=header.pil_subsampling, orientation=orientation)


def maps_of_inputs(inputs: Sequence[ExactInput], image_size: int, *,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """The model input of each file, (N, CHANNELS, cells, cells) float32 on `device`: equal to
    `jpeg_ghosts.ghost_maps` of the file. Files of one crop size go through `raw_maps` together."""
    return model_input(inputs, [item.rgb for item in inputs], image_size, device, raw_maps)
