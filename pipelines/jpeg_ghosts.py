"""JPEG ghost maps: the input of the `ghost_cnn` model, read from each file's compression history.

A retouched face is a JPEG whose pasted or re-touched parts went through other compressions (another
quality, another 8x8 grid, a resize) than the rest. Re-saving the file at one JPEG quality changes
the blocks already compressed at that quality least: Farid's "JPEG ghosts" (Exposing Digital
Forgeries from JPEG Ghosts, IEEE TIFS 2009). Here each image is re-saved with its own quantization
tables and at the standard qualities 50, 55, ..., 95; the squared difference to the decoded
original, per YCbCr plane and averaged over each 8x8 block, gives 3 x 11 = 33 maps of (H/8, W/8)
cells. Maps are log-scaled and each is centred on its own mean, so a model sees where the history
differs from place to place, not the file's overall quality (docs/quality.md: why this input).

Images are read as stored (the block grid is in stored orientation) and the maps turned afterwards by
the EXIF orientation, like the pixels every other loader gives. An image larger than `image_size`
is centre-cropped on the 16-pixel MCU grid before re-saving (so the re-save sees the blocks the
file has); a smaller one gives smaller maps, padded with zeros (the centred mean) to the model's grid.

Costs 11 encodes and 12 decodes a file. The same maps as batched tensor math (the "dct" kind of
GHOST_MAPS) are `jpeg_ghosts_torch`; `ghost_inputs` computes a file's maps of either kind, and
`ghost_loaders` streams them, keeping them on disk by content hash (`cache_folder`, one folder per
kind and size): later epochs, seeds, evaluations and engine builds read them back. Only JPEG files
have ghosts: anything else is the error "not a JPEG".
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin
from realfake.pipelines.images import InvalidImageError, load_jpeg

QUALITIES = ("keep", *range(50, 100, 5))
BLOCK = 8  # the JPEG block: one map cell
MCU = 16  # crops start on the 4:2:0 MCU grid, so the chroma blocks stay the file's own
CHANNELS = 3 * len(QUALITIES)
LOG_EPS = 0.01  # floor of log(): blocks that re-save exactly (flat areas) are 0 error
MAPS_VERSION = 1  # part of the cache folder names: change it when the maps of either kind change
# How the maps are computed (`ghost_maps` of a run and an engine): pil, the re-saves above (the
# reference); dct, the same maps as batched DCT-domain tensor math (`jpeg_ghosts_torch`), an
# approximation a model must be trained on. `ghost_inputs` computes either.
GHOST_MAPS = ("pil", "dct")


def grid_cells(image_size: int) -> int:
    """Map cells a side for a model of `image_size` pixels."""
    return image_size // BLOCK


def _ycbcr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB").convert("YCbCr"), dtype=np.float32).transpose(2, 0, 1)


def _resave(img: Image.Image, quality, source: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    if quality == "keep":
        # What PIL's quality="keep" does, which only works on the file object itself (not on a crop).
        kw = {"qtables": source.quantization}
        sampling = JpegImagePlugin.get_sampling(source)
        if sampling != -1:
            kw["subsampling"] = sampling
        img.save(buf, format="JPEG", **kw)
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _orient(maps: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (C, H, W) maps as PIL's ImageOps.exif_transpose turns the image's pixels."""
    turned = {
        2: lambda m: m[:, :, ::-1],
        3: lambda m: m[:, ::-1, ::-1],
        4: lambda m: m[:, ::-1, :],
        5: lambda m: m.transpose(0, 2, 1),
        6: lambda m: np.rot90(m, -1, axes=(1, 2)),
        7: lambda m: m.transpose(0, 2, 1)[:, ::-1, ::-1],
        8: lambda m: np.rot90(m, 1, axes=(1, 2)),
    }.get(orientation, lambda m: m)(maps)
    return np.ascontiguousarray(turned)


def _centre_crop(img: Image.Image, image_size: int) -> tuple[Image.Image, int, int]:
    """(crop, h, w): the stored image's centre crop of at most image_size a side, started on the MCU grid,
    and the rows and columns of it that whole 8x8 blocks cover (what the maps describe)."""
    # A square bound: the same on the stored and the displayed (EXIF-turned) sides.
    side_w, side_h = min(img.size[0], image_size), min(img.size[1], image_size)
    left, top = (img.size[0] - side_w) // 2 // MCU * MCU, (img.size[1] - side_h) // 2 // MCU * MCU
    crop = img if (side_w, side_h) == img.size else img.crop((left, top, left + side_w, top + side_h))
    return crop, side_h // BLOCK * BLOCK, side_w // BLOCK * BLOCK


def raw_maps(path: str | os.PathLike, image_size: int, *, data: bytes | None = None) -> np.ndarray:
    """(CHANNELS, h, w) float32 mean squared re-save error per 8x8 block and YCbCr plane, h and w at most
    image_size / 8, in display orientation. Raises InvalidImageError (incl. "not a JPEG"). `data`: the
    file's bytes held in memory (a laundered copy), `path` naming it in errors."""
    img, orientation = load_jpeg(path, data=data)
    with img:
        crop, h, w = _centre_crop(img, image_size)
        if h == 0 or w == 0:
            raise InvalidImageError(path, f"too small ({img.size[0]}x{img.size[1]}: ghost maps need 8x8 pixels)")
        base = _ycbcr(crop)
        maps = []
        try:
            for quality in QUALITIES:
                err = (base - _ycbcr(_resave(crop, quality, img))) ** 2
                maps.append(err[:, :h, :w].reshape(3, h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean((2, 4)))
        except (OSError, ValueError) as exc:  # a JPEG PIL decodes but cannot write back (odd tables/modes)
            raise InvalidImageError(path, "unsupported format") from exc
    return _orient(np.concatenate(maps), orientation)


def normalize(maps: np.ndarray, cells: int) -> np.ndarray:
    """Log-scale, centre each map on its own mean, and pad with zeros (centred) to (C, cells, cells)."""
    logged = np.log(maps.astype(np.float32) + LOG_EPS)
    logged -= logged.mean(axis=(1, 2), keepdims=True)
    out = np.zeros((logged.shape[0], cells, cells), dtype=np.float32)
    h, w = min(logged.shape[1], cells), min(logged.shape[2], cells)
    top, left = (cells - h) // 2, (cells - w) // 2
    out[:, top:top + h, left:left + w] = logged[:, :h, :w]
    return out


def ghost_view(path: str | os.PathLike, image_size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The pixels `ghost_maps` describes, where its cells lie: (uint8 (G, G, 3) canvas with G = 8 *
    grid_cells(image_size), black where the maps are padding; (x0, y0, x1, y1) of the image on it).
    For drawing evidence of a ghost-map model over the photo it saw. Raises InvalidImageError."""
    img, orientation = load_jpeg(path)
    with img:
        crop, h, w = _centre_crop(img, image_size)
        if h == 0 or w == 0:
            raise InvalidImageError(path, f"too small ({img.size[0]}x{img.size[1]}: ghost maps need 8x8 pixels)")
        pixels = np.asarray(crop.convert("RGB"))[:h, :w].transpose(2, 0, 1)
    pixels = _orient(pixels, orientation).transpose(1, 2, 0)
    cells = grid_cells(image_size)
    rows, cols = min(pixels.shape[0] // BLOCK, cells), min(pixels.shape[1] // BLOCK, cells)
    top, left = (cells - rows) // 2 * BLOCK, (cells - cols) // 2 * BLOCK  # as `normalize` pads
    canvas = np.zeros((cells * BLOCK, cells * BLOCK, 3), dtype=np.uint8)
    canvas[top:top + rows * BLOCK, left:left + cols * BLOCK] = pixels[:rows * BLOCK, :cols * BLOCK]
    return canvas, (left, top, left + cols * BLOCK, top + rows * BLOCK)


def ghost_maps(path: str | os.PathLike, image_size: int, *, data: bytes | None = None) -> np.ndarray:
    """The model input of one file: float32 (CHANNELS, image_size/8, image_size/8)."""
    return normalize(raw_maps(path, image_size, data=data), grid_cells(image_size))


def check_kind(kind: str) -> str:
    """`kind` if it is one of GHOST_MAPS, else a one-line ValueError."""
    if kind not in GHOST_MAPS:
        raise ValueError(f"unknown kind of ghost maps {kind!r}: choose one of {', '.join(GHOST_MAPS)}")
    return kind


def cache_folder(data_dir: str | os.PathLike, image_size: int, kind: str = "pil") -> Path:
    """Where a prepared data set keeps its files' maps of one kind and size (one .npy per content
    sha256): a folder per kind, so maps of two kinds never mix."""
    name = {"pil": "jpeg-ghosts", "dct": "jpeg-ghosts-dct"}[check_kind(kind)]
    return Path(data_dir) / "cache" / f"{name}-v{MAPS_VERSION}-{image_size}px"


def cache_paths_for(data_dir: str | os.PathLike, image_size: int, sha256s: Sequence[str],
                    kind: str = "pil") -> list[Path]:
    """The cache file of each file (by content sha256) of a prepared data set, for maps of `kind`."""
    folder = cache_folder(data_dir, image_size, kind)
    folder.mkdir(parents=True, exist_ok=True)
    return [folder / f"{sha}.npy" for sha in sha256s]
