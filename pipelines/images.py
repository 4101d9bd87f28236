"""Validate and load one image file, the same way everywhere.

`check_image` is what `data prepare` (and folder scoring) use to decide whether a file is usable: it
decodes the whole file, so a truncated or corrupt JPEG is caught here and not in the middle of an
epoch. `load_rgb` is how the torchvision backend turns a file into RGB, mirroring DALI's
`decoders.image(output_type=RGB)`: EXIF orientation applied, alpha dropped, grey/palette/CMYK to RGB.

Accepted formats are the ones every backend decodes: JPEG (incl. MPO, a multi-picture JPEG that
some cameras write), PNG, BMP and WebP, matching `walk.IMAGE_EXTENSIONS`. GIF (animated, palette)
and TIFF (multi-page, many compressions DALI and torchvision do not share) are rejected as
`unsupported format`. The format is read from the content, not from the file name.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL format name -> accepted. MPO is what PIL calls a JPEG with extra preview frames.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP")
# Decompression-bomb guard: PIL's own default limit (~89.5 megapixels, ~270 MB as RGB), turned into
# a rejection instead of a warning. Pass `max_pixels=` to change it. PIL independently refuses
# images above 2x its `Image.MAX_IMAGE_PIXELS`; raise that too to accept anything bigger.
DEFAULT_MAX_PIXELS = 89_478_485

# Magic numbers of formats PIL knows: a file that starts like an image but cannot be opened is
# `corrupt`, one that does not is `not an image`.
_ACCEPTED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")  # JPEG, PNG, BMP; WebP: see _is_webp
_MAGIC = _ACCEPTED_MAGIC + (b"GIF8", b"II*\x00", b"MM\x00*")
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}

# Short, machine-friendly reasons (rejected.csv, score error files). `unreadable` is followed by
# ": <os error>".
REASONS = ("empty file", "truncated", "corrupt", "not an image", "unsupported format", "unreadable", "too large",
           "not a JPEG")


class InvalidImageError(ValueError):
    """A file that cannot be used as an image; `reason` is one of REASONS (unreadable: with detail)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, i.e. after EXIF orientation (what every loader produces)
    height: int
    mode: str  # PIL mode of the stored pixels: RGB, L, P, RGBA, CMYK, I;16, ...
    format: str  # PIL format name: JPEG, PNG, BMP, WEBP, MPO
    encoding: str = ""  # see `encoding_of`


def encoding_of(img: Image.Image) -> str:
    """How the file was compressed, beyond its pixels: for a JPEG a short hash of its quantization
    tables (an encoder at one quality setting always writes the same tables, so files saved by
    different tools or at different qualities differ here), for other formats the format name.
    `data prepare` uses it to find encodings that only one class has: a cue a model can learn
    instead of the retouching (see docs/quality.md)."""
    if img.format in ("JPEG", "MPO"):
        tables = sorted((index, tuple(table)) for index, table in (getattr(img, "quantization", None) or {}).items())
        return f"JPEG q-tables {hashlib.sha1(repr(tables).encode()).hexdigest()[:8]}"
    return str(img.format)


def file_encoding(path: str | os.PathLike) -> str:
    """`encoding_of` a file, from its header alone; "" for a file PIL cannot open."""
    try:
        with Image.open(path) as img:
            return encoding_of(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return ""


def _is_webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _looks_like_image(head: bytes) -> bool:
    return head.startswith(_MAGIC) or _is_webp(head)


def _open_failure_reason(f, head: bytes) -> str:
    """Why PIL could not even identify the file: cut short, damaged, or no image at all."""
    if not _looks_like_image(head):
        return "not an image"
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 32))
    tail = f.read()
    # A JPEG ends with the EOI marker and a PNG with its IEND chunk: without them the file was cut
    # off (an interrupted download or copy), which PIL only reports once the headers are complete.
    if head.startswith(b"\xff\xd8\xff") and b"\xff\xd9" not in tail:
        return "truncated"
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        return "truncated"
    return "corrupt"


def _decode(path: str | os.PathLike, max_pixels: int | None, draft_size: tuple[int, int] | None = None,
            ycbcr: bool = False, data: bytes | None = None):
    """Open and fully decode `path` (or `data`, the bytes of a file that `path` names in errors);
    return (decoded image, info) or raise InvalidImageError."""
    try:
        # closed by the with-block below; PIL reads lazily from it
        f = io.BytesIO(data) if data is not None else open(path, "rb")
    except OSError as exc:
        raise InvalidImageError(path, f"unreadable: {exc.strerror or exc}") from exc
    with f:
        try:
            head = f.read(16)
            if not head:
                raise InvalidImageError(path, "empty file")
            f.seek(0)
            try:
                img = Image.open(f)
            except Image.DecompressionBombError as exc:
                raise InvalidImageError(path, "too large") from exc
            except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError) as exc:
                raise InvalidImageError(path, _open_failure_reason(f, head)) from exc
            if img.format not in ACCEPTED_FORMATS:
                raise InvalidImageError(path, "unsupported format")
            width, height = img.size
            if too_large(width, height, max_pixels):
                raise InvalidImageError(path, "too large")
            if draft_size is not None and img.format in ("JPEG", "MPO"):
                # DCT-domain downscale while decoding: keeps at least draft_size pixels.
                img.draft("RGB", draft_size)
            elif ycbcr and img.format in ("JPEG", "MPO") and img.mode == "RGB":
                img.draft("YCbCr", img.size)  # the decoder's planes, before its conversion to RGB
            try:
                img.load()
            except Image.DecompressionBombError as exc:
                raise InvalidImageError(path, "too large") from exc
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
                # PIL says "image file is truncated" / "Truncated File Read" for a short file and
                # something else ("broken data stream", "unrecognized data stream") for bad bytes.
                reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
                raise InvalidImageError(path, reason) from exc
        except InvalidImageError:
            raise
        except OSError as exc:  # a read error on the open file (e.g. I/O error on a bad disk)
            raise InvalidImageError(path, f"unreadable: {exc.strerror or exc}") from exc
    orientation = img.getexif().get(0x0112)
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return img, ImageInfo(width=width, height=height, mode=img.mode, format=img.format)


def check_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode `path` (not only its header) and describe it; raise InvalidImageError if unusable.

    Images of any mode (L, P, RGBA, CMYK, 16-bit) are valid: loaders convert them to RGB.
    """
    img, info = _decode(path, max_pixels)
    info = replace(info, encoding=encoding_of(img))  # here only: loaders decode without needing it
    img.close()
    return info


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: PIL's convert() clips to 0-255 (most of the image turns white); scale the
        # way decoders that output uint8 do.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0, 0, 255).round().astype(np.uint8), "L")
    return img.convert("RGB")


def load_rgb(
    path: str | os.PathLike,
    draft_size: tuple[int, int] | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
) -> Image.Image:
    """Decode `path` to an RGB PIL image with EXIF orientation applied (as DALI does by default).

    `draft_size=(w, h)`: for JPEGs, let libjpeg decode at the smallest 1/2, 1/4 or 1/8 scale that
    still covers (w, h) -- much faster when the target is far smaller than the file; resize after.
    `data`: the file's bytes, held in memory (a laundered copy), with `path` naming it in errors.
    Raises InvalidImageError like `check_image`.
    """
    img, _ = _decode(path, max_pixels, draft_size, data=data)
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def load_jpeg(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
              ycbcr: bool = False, data: bytes | None = None) -> tuple[Image.Image, int]:
    """Decode a JPEG as stored (no EXIF rotation: its 8x8 block grid is in stored orientation) and return
    (the decoded PIL JPEG image, its EXIF orientation, 1 if none). Readers of compression traces (JPEG
    ghost maps) need the file's own quantization tables, so any other format raises "not a JPEG".
    `ycbcr`: a colour JPEG comes back in mode YCbCr, the decoder's planes without its RGB conversion.
    `data`: the file's bytes, held in memory (a laundered copy), with `path` naming it in errors."""
    img, info = _decode(path, max_pixels, ycbcr=ycbcr, data=data)
    if info.format not in ("JPEG", "MPO"):
        img.close()
        raise InvalidImageError(path, "not a JPEG")
    return img, int(img.getexif().get(0x0112) or 1)


def too_large(width: int, height: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> bool:
    """The decompression-bomb rule of `load_rgb` and `check_image`: more pixels than `max_pixels`, or
    more than PIL itself opens (2x `Image.MAX_IMAGE_PIXELS`, read at call time)."""
    pixels, pil_limit = width * height, Image.MAX_IMAGE_PIXELS
    return (max_pixels is not None and pixels > max_pixels) or (pil_limit is not None and pixels > 2 * pil_limit)


def sniff_problem(path: str | os.PathLike) -> str | None:
    """`header_problem` for files that DALI's own screen parses next (`dali_loader.screen_headers`,
    which also applies `too_large`): a file that starts like an accepted format (JPEG, PNG, BMP,
    WebP) passes on its first 16 bytes; any other gets header_problem's reason.

    Why: folder scoring runs this in a Python thread for every file, where header_problem's PIL marker
    parsing (under the GIL) would cost about as much as a GPU's decode of the file; DALI's screen
    parses the headers in C++ threads, without the GIL.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if head.startswith(_ACCEPTED_MAGIC) or _is_webp(head):
        return None
    return header_problem(path)


def header_problem(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why `path` cannot be an accepted image, from its header alone (no decode), or None.

    The reasons are `load_rgb`'s for what a header shows: DALI would decode a TIFF or a decompression
    bomb that the torchvision path rejects. Unlike `check_image` it decodes nothing. Folder scoring
    with DALI calls it (through `sniff_problem`) for files that do not start like an accepted format.
    """
    try:
        f = open(path, "rb")
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    with f:
        try:
            head = f.read(16)
            if not head:
                return "empty file"
            f.seek(0)
            try:
                with Image.open(f) as img:
                    if img.format not in ACCEPTED_FORMATS:
                        return "unsupported format"
                    width, height = img.size
            except Image.DecompressionBombError:
                return "too large"
            except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError):
                return _open_failure_reason(f, head)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
    if too_large(width, height, max_pixels):
        return "too large"
    return None


