"""Laundering transforms: what happens to a photo between the camera and a batch scorer.

A JPEG ghost model (`jpeg_ghosts.py`, `ghost_cnn`) reads a file's compression history, and a plain
re-save rewrites that history. Photos reach a scorer re-saved, resized and cropped all the time, so
each such change is a named, parameterized transform here, applied to a file's bytes or to a PIL
image, always ending in one JPEG re-save, and deterministic: the same input and spec give the same
bytes under one Pillow version (its libjpeg-turbo encoder and its resampling have no randomness).

Spec strings (what users type; `parse` reads them, `Transform.spec` writes them back):

    jpeg:q=85                       re-save at quality 85 (IJG scale), chroma 4:2:0
    jpeg:q=90,sub=444               ... with full-resolution chroma (4:4:4); sub=420|422|444
    jpeg:q=85,prog=1,opt=1          progressive scan, optimized Huffman tables (0|1, default 0)
    resize:scale=0.75,q=85          downscale by 0.75 (Lanczos), then re-save; filter=bicubic for bicubic
    crop:dx=3,dy=5,q=90             drop 3 columns on the left, 5 rows at the top, then re-save

`KIND[:key=value,...]`: keys in any order, `q` required for every kind, `scale` for resize (0.1-2),
`dx`/`dy` for crop (0-63 pixels, not both 0; an offset that is not a multiple of 8 moves the 8x8 block
grid). A bad spec raises ValueError naming the spec, the problem and an example.

Encoder settings. PIL is libjpeg-turbo underneath and its defaults are `cjpeg`'s: `cjpeg -quality Q`
and PIL `quality=Q` give byte-identical files (4:2:0, baseline, standard Huffman tables, integer
"islow" DCT, JFIF 1.01 with 1:1 density), and so do `-sample 1x1`/`subsampling=0`,
`-optimize`/`optimize=True` and `-progressive`/`progressive=True`. Progressive scans and optimized
Huffman tables change only the entropy coding: the decoded pixels are those of the baseline file, so
they cannot change a ghost map (they are kept as options because other tools default to them). The
one encoder setting PIL does not expose is the DCT method (`cjpeg -dct fast|float`); see
docs/robustness.md for what it would change.

Every transform, before its own step:
- applies the EXIF orientation to the pixels and saves without EXIF (as messengers and web uploads
  do): the laundered file shows what the original showed, crops are taken at the displayed top/left,
  and the new 8x8 grid is the displayed one. EXIF, XMP and comments are dropped; an ICC profile is
  kept (it says what the colours mean, not how the file was compressed).
- keeps grayscale (L) one-component and CMYK four-component (JPEG stores both; `sub` does not apply);
  converts every other mode (palette, alpha, 16-bit, PNG/BMP/WebP inputs) to RGB the way the
  project's loaders do (`images.load_rgb`: alpha dropped), so a PNG comes out as a JPEG.

For training, `draw(seed, epoch, index)` picks a transform from the ranges of the family (kind, q
70-95, 4:2:0 or 4:4:4, scale 0.5-0.9, Lanczos or bicubic, an off-grid offset of 0-7 pixels): a pure
function of its three integers, so a resumed run draws the same.

API:
    parse(spec) -> Transform                  FAMILY, family() -> the robustness table's rows
    draw(seed, epoch, index) -> Transform     Transform.spec, str(Transform)
    drawn(seed, epoch, index, p) -> Transform | None   (draw with probability p: training's per-epoch laundering)
    launder_image(img, transform) -> bytes    launder_bytes(data, transform, name=) -> bytes
    launder_file(path, transform) -> bytes    jpeg_settings(img) -> JpegSettings (quality, sampling)
Labels are never a transform's business: `launder_dataset.py` writes a laundered copy of a data set.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError
from realfake.pipelines.images import ACCEPTED_FORMATS, InvalidImageError, to_rgb, too_large

KINDS = ("jpeg", "resize", "crop")
SUBSAMPLINGS = {"444": 0, "422": 1, "420": 2}  # spec value -> PIL's `subsampling`
FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}
RANDOM = "random"  # the spec that asks `launder_dataset` for one `draw` per file

# The default family: one row each in a robustness table. Qualities 70-95 at 4:2:0 (PIL's and
# cjpeg's default) and two at 4:4:4; downscales 0.5-0.9 with Lanczos and one with bicubic; off-grid
# crops of 1, 4 and 7 pixels (one each way, one diagonal, one on the 4:2:0 MCU's half).
FAMILY = (
    "jpeg:q=95",
    "jpeg:q=90",
    "jpeg:q=85",
    "jpeg:q=75",
    "jpeg:q=70",
    "jpeg:q=95,sub=444",
    "jpeg:q=85,sub=444",
    "resize:scale=0.9,q=90",
    "resize:scale=0.75,q=85",
    "resize:scale=0.75,q=85,filter=bicubic",
    "resize:scale=0.5,q=85",
    "crop:dx=1,q=90",
    "crop:dx=3,dy=5,q=90",
    "crop:dx=4,dy=4,q=85",
)

# Ranges of `draw` (inclusive): those the family covers.
DRAW_QUALITY = (70, 95)
DRAW_SCALE = (0.5, 0.9)
DRAW_OFFSET = (0, 7)
DRAW_P444 = 0.25  # share of 4:4:4 draws; the rest 4:2:0, the common default

_KEYS = {  # kind -> keys it takes (beyond the encoder's q, sub, prog, opt)
    "jpeg": (),
    "resize": ("scale", "filter"),
    "crop": ("dx", "dy"),
}
_ENCODER_KEYS = ("q", "sub", "prog", "opt")
_KIND_EXAMPLES = {"jpeg": "jpeg:q=85", "resize": "resize:scale=0.75,q=85", "crop": "crop:dx=3,dy=5,q=90"}
_EXAMPLES = "e.g. jpeg:q=85, jpeg:q=90,sub=444, resize:scale=0.75,q=85 or crop:dx=3,dy=5,q=90"


@dataclass(frozen=True)
class Transform:
    """One laundering transform: an optional resize or crop, then a JPEG re-save."""

    kind: str  # jpeg | resize | crop
    quality: int  # of the final re-save, IJG scale (1-100)
    subsampling: str = "420"  # chroma sampling of the re-save: 420 | 422 | 444
    progressive: bool = False
    optimize: bool = False
    scale: float = 1.0  # resize: new side = round(side * scale)
    resample: str = "lanczos"  # resize: lanczos | bicubic
    dx: int = 0  # crop: columns dropped on the left
    dy: int = 0  # crop: rows dropped at the top

    @property
    def spec(self) -> str:
        """The canonical spec string: `parse(t.spec) == t`; defaults are left out."""
        parts = []
        if self.kind == "resize":
            parts.append(f"scale={self.scale:g}")
        if self.kind == "crop":
            parts += [f"{k}={v}" for k, v in (("dx", self.dx), ("dy", self.dy)) if v]
        parts.append(f"q={self.quality}")
        if self.subsampling != "420":
            parts.append(f"sub={self.subsampling}")
        if self.kind == "resize" and self.resample != "lanczos":
            parts.append(f"filter={self.resample}")
        parts += [f"{k}=1" for k, on in (("prog", self.progressive), ("opt", self.optimize)) if on]
        return f"{self.kind}:{','.join(parts)}"

    def __str__(self) -> str:
        return self.spec


def parse(spec: str | Transform) -> Transform:
    """The Transform a spec string names (a Transform is returned as is); ValueError for a bad spec."""
    if isinstance(spec, Transform):
        return spec
    text = str(spec).strip()
    if not text:
        raise ValueError(f"empty launder spec: write KIND:key=value,... ({_EXAMPLES})")
    kind, _, rest = text.partition(":")
    kind = kind.strip()
    if kind == RANDOM:
        raise ValueError(f"launder spec {text!r}: 'random' draws one transform per file (data launder "
                         f"--transform random); one transform is KIND:key=value,... ({_EXAMPLES})")
    if kind not in KINDS:
        raise ValueError(f"launder spec {text!r}: unknown kind {kind!r}: choose {', '.join(KINDS)} ({_EXAMPLES})")
    allowed = (*_KEYS[kind], *_ENCODER_KEYS)
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"launder spec {text!r}: {item!r} is not key=value ({_EXAMPLES})")
        if key not in allowed:
            raise ValueError(f"launder spec {text!r}: {kind} takes {', '.join(allowed)}, not {key!r} ({_EXAMPLES})")
        if key in values:
            raise ValueError(f"launder spec {text!r}: {key} is given twice: keep one")
        values[key] = value

    def number(key, cast, low, high, what):
        if key not in values:
            return None
        try:
            value = cast(values[key])
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"launder spec {text!r}: {key}={values[key]} must be {what}")
        return value

    def flag(key):
        if values.get(key, "0") not in ("0", "1"):
            raise ValueError(f"launder spec {text!r}: {key}={values[key]} must be 0 or 1")
        return values.get(key) == "1"

    quality = number("q", int, 1, 100, "a JPEG quality, an integer from 1 to 100 (e.g. q=85)")
    if quality is None:
        raise ValueError(f"launder spec {text!r}: {kind} needs q=QUALITY, the quality of its JPEG re-save "
                         f"(e.g. {_KIND_EXAMPLES[kind]})")
    sub = values.get("sub", "420")
    if sub not in SUBSAMPLINGS:
        raise ValueError(f"launder spec {text!r}: sub={sub} must be one of {', '.join(SUBSAMPLINGS)} "
                         "(chroma 4:4:4, 4:2:2 or 4:2:0)")
    fields = dict(kind=kind, quality=quality, subsampling=sub, progressive=flag("prog"), optimize=flag("opt"))
    if kind == "resize":
        scale = number("scale", float, 0.1, 2.0, "a factor from 0.1 to 2 (e.g. scale=0.75)")
        if scale is None:
            raise ValueError(f"launder spec {text!r}: resize needs scale=FACTOR (e.g. {_KIND_EXAMPLES['resize']})")
        resample = values.get("filter", "lanczos")
        if resample not in FILTERS:
            raise ValueError(f"launder spec {text!r}: filter={resample} must be one of {', '.join(FILTERS)}")
        fields.update(scale=scale, resample=resample)
    if kind == "crop":
        dx = number("dx", int, 0, 63, "a pixel offset from 0 to 63") or 0
        dy = number("dy", int, 0, 63, "a pixel offset from 0 to 63") or 0
        if dx == dy == 0:
            raise ValueError(f"launder spec {text!r}: crop needs dx or dy above 0 (a crop of nothing is "
                             f"jpeg:q={quality}); e.g. crop:dx=3,dy=5,q=90")
        fields.update(dx=dx, dy=dy)
    return Transform(**fields)


def family() -> list[Transform]:
    """The default family (FAMILY), parsed."""
    return [parse(spec) for spec in FAMILY]


def draw(seed: int, epoch: int, index: int) -> Transform:
    """A transform drawn from the family's ranges for item `index` of `epoch` under `seed`: the same
    three integers give the same transform on any machine and after any resume."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"draw(seed={seed}, epoch={epoch}, index={index}): all three must be >= 0")
    rng = np.random.default_rng([seed, epoch, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    quality = int(rng.integers(DRAW_QUALITY[0], DRAW_QUALITY[1] + 1))
    sub = "444" if rng.random() < DRAW_P444 else "420"
    if kind == "resize":
        scale = round(float(rng.uniform(*DRAW_SCALE)), 2)
        resample = ("lanczos", "bicubic")[int(rng.integers(2))]
        return Transform(kind, quality, sub, scale=scale, resample=resample)
    if kind == "crop":
        span = DRAW_OFFSET[1] - DRAW_OFFSET[0] + 1
        offset = int(rng.integers(1, span * span))  # (dx, dy) in the offset square, never (0, 0)
        return Transform(kind, quality, sub, dx=DRAW_OFFSET[0] + offset % span, dy=DRAW_OFFSET[0] + offset // span)
    return Transform(kind, quality, sub)


def drawn(seed: int, epoch: int, index: int, p: float) -> Transform | None:
    """What training does to item `index` in `epoch` when it launders a share `p` of its images: `draw`'s
    transform with probability p, else None (the file as saved). The coin has its own stream, so it does
    not move `draw`'s choice; both are pure functions of (seed, epoch, index), so a resumed run draws
    the same."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"launder probability {p} must be between 0 and 1")
    if p == 0.0:
        return None
    coin = np.random.default_rng([seed, epoch, index, _COIN_STREAM]).random()
    return draw(seed, epoch, index) if coin < p else None


_COIN_STREAM = 1  # the fourth seed word of `drawn`'s coin, apart from draw's three


# --------------------------------------------------------------------------------------------------
# Applying a transform


def launder_image(img: Image.Image, transform: Transform | str, *, name: str = "image") -> bytes:
    """The JPEG bytes of `img` (a decoded PIL image of any mode, EXIF orientation not yet applied)
    after `transform`. `name` goes into errors: ValueError for an image the transform cannot take
    (a crop or downscale that leaves no pixels)."""
    t = parse(transform)
    icc = img.info.get("icc_profile")
    img = ImageOps.exif_transpose(img)
    if img.mode not in ("RGB", "L", "CMYK"):
        img = to_rgb(img)  # palette, alpha, 16-bit: the RGB every loader of the project sees
    if t.kind == "resize":
        size = (max(1, round(img.width * t.scale)), max(1, round(img.height * t.scale)))
        img = img.resize(size, FILTERS[t.resample])  # PIL widens the filter when shrinking: antialiased
    elif t.kind == "crop":
        if t.dx >= img.width or t.dy >= img.height:
            raise ValueError(f"{name}: {img.width}x{img.height} is too small for {t.spec}")
        img = img.crop((t.dx, t.dy, img.width, img.height))
    options = dict(quality=t.quality, progressive=t.progressive, optimize=t.optimize, comment=b"")
    if img.mode == "RGB":
        options["subsampling"] = SUBSAMPLINGS[t.subsampling]
    if icc:
        options["icc_profile"] = icc
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **options)
    return buf.getvalue()


def decode_bytes(data: bytes, name: str = "image") -> Image.Image:
    """Fully decode an image file held in memory; InvalidImageError with the reasons of
    `images.check_image` (empty file, not an image, truncated, corrupt, unsupported format, too large)."""
    if not data:
        raise InvalidImageError(name, "empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ACCEPTED_FORMATS:
            raise InvalidImageError(name, "unsupported format")
        if too_large(*img.size):
            raise InvalidImageError(name, "too large")
        img.load()
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(name, "too large") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(name, "not an image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        if isinstance(exc, InvalidImageError):
            raise
        raise InvalidImageError(name, "truncated" if "truncated" in str(exc).lower() else "corrupt") from exc
    return img


def launder_bytes(data: bytes, transform: Transform | str, *, name: str = "image") -> bytes:
    """The laundered JPEG bytes of an image file's bytes; InvalidImageError for a file that does not
    decode, ValueError for one the transform cannot take."""
    with decode_bytes(data, name) as img:
        return launder_image(img, transform, name=name)


def launder_file(path: str | os.PathLike, transform: Transform | str) -> bytes:
    """`launder_bytes` of a file on disk (errors name the file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InvalidImageError(path, f"unreadable: {exc.strerror or exc}") from exc
    return launder_bytes(data, transform, name=str(path))


# --------------------------------------------------------------------------------------------------
# Reading back what a JPEG holds


# The IJG (libjpeg) base tables, ITU-T T.81 Annex K, in natural (row-major) order as PIL gives them.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32)])


def ijg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(luminance, chrominance) tables libjpeg writes for `quality` (baseline: values 1-255)."""
    quality = min(max(int(quality), 1), 100)
    percent = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(np.clip((base * percent + 50) // 100, 1, 255) for base in (_IJG_LUMA, _IJG_CHROMA))


@dataclass(frozen=True)
class JpegSettings:
    quality: int  # the IJG quality whose luminance table is nearest the file's
    exact: bool  # the file's tables are exactly that quality's (a libjpeg/PIL/cjpeg-made file)
    subsampling: str  # 444 | 422 | 420, or "" (grayscale, CMYK or another layout)
    progressive: bool


def jpeg_settings(img: Image.Image) -> JpegSettings:
    """The encoder settings an opened JPEG shows in its header: quality (from the quantization tables),
    chroma sampling, progressive or not. ValueError for an image that is not a JPEG."""
    tables = getattr(img, "quantization", None)
    if img.format not in ("JPEG", "MPO") or not tables:
        raise ValueError(f"{getattr(img, 'filename', '') or 'image'}: not a JPEG, no quantization tables to read")
    luma = np.asarray(tables[0])
    distance = [int(np.abs(ijg_tables(q)[0] - luma).sum()) for q in range(1, 101)]
    quality = int(np.argmin(distance)) + 1
    exact = distance[quality - 1] == 0 and all(
        np.array_equal(np.asarray(tables[i]), ijg_tables(quality)[1]) for i in tables if i > 0)
    sampling = {v: k for k, v in SUBSAMPLINGS.items()}.get(JpegImagePlugin.get_sampling(img), "")
    return JpegSettings(quality, exact, sampling, bool(img.info.get("progressive")))
