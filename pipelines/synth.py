"""A synthetic real/fake face set in the public archive's layout, for the demo and the tests.

    OUT/real_and_fake_face/training_real/real_00001.jpg ...
    OUT/real_and_fake_face/training_fake/{easy,mid,hard}_NNN_CCCC.jpg ...
    OUT/real_and_fake_face/synth.json      how it was made (prepare ignores loose files here)

"Real" faces are drawn shapes (skin-toned head, hair, eyes, brows, nose, mouth, ears, neck) with a
random pose, size and colouring on a varied background, plus lighting and sensor-like noise. A fake is
a face drawn the same way and then retouched like the CIPLAB fakes: one or more of the regions
left eye, right eye, nose, mouth are replaced by a patch -- taken from another face, or a
colour/scale-jittered copy of the same region -- lightened and blended in with a soft mask. CCCC
says which regions, in that order (image-left eye first), as in the archive's names; the prefix is
how visible the edit is (easy: more regions, strong lift, sharper seam; hard: one or two, mild, soft).
Fakes are easy/mid/hard in the archive's proportions 1:2:1.

Every file carries a compression history like CIPLAB's, where a fake is a camera JPEG whose
features were retouched with material of another history and the whole face saved again:

    real:  drawn face -> camera JPEG (quality drawn per image) -> the set's own save
    fake:  drawn face -> camera JPEG -> decoded, regions pasted from material of another history
           -> the set's own save

The pasted material is a JPEG of its own (another face's, or the same face's saved separately) at a
quality at least MIN_QUALITY_GAP away from the camera's, cut where its 8x8 block grid does not meet
the face's, and resized into place. The set's own save draws one of FINAL_QUALITIES per image for
reals and fakes alike, and both classes went through two saves: neither the quantization tables nor
double compression as such tell the classes apart, only the places whose history differs (what
`pipelines.jpeg_ghosts` maps show).

Every image comes from its own numpy Generator seeded with (seed, kind, index), so the same seed
gives the same bytes (PIL's JPEG encoder at the drawn qualities), and image k does not depend on n.

One module, though long: faces, edits and the compression history are drawn from one generator per
image, so that the same seed gives the same bytes; split, the draws would need threading through.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from realfake.pipelines.prepare import EDIT_REGIONS

ROOT_NAME = "real_and_fake_face"
REAL_DIR, FAKE_DIR = "training_real", "training_fake"
MARKER_NAME = "synth.json"
REGIONS = EDIT_REGIONS  # order of the CCCC code bits, as the archive's names (prepare.edited_regions reads them)
GROUP_CYCLE = ("easy", "mid", "hard", "mid")  # fake k gets GROUP_CYCLE[k % 4]: the archive's 1:2:1
# Compression history (see the module docstring). Qualities are PIL's 1..95 scale; ranges inclusive.
CAMERA_QUALITIES = (60, 85)  # the camera JPEG every face starts as
PASTE_QUALITIES = (50, 95)  # the pasted material's own JPEG ...
MIN_QUALITY_GAP = 15  # ... at least this far from the camera's
FINAL_QUALITIES = (88, 92, 95)  # the set's own save of every file, real or fake
_SUPERSAMPLE = 2  # draw at 2x and box-downsample: anti-aliased edges without a slow renderer

_SKIN_TONES = np.array(
    [(255, 224, 196), (241, 194, 164), (224, 172, 135), (198, 134, 99), (160, 105, 70), (110, 70, 45)],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [(20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 160, 90), (150, 60, 30), (150, 150, 150)],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array([(70, 45, 25), (110, 75, 40), (60, 110, 160), (80, 120, 80), (110, 115, 120)])
# Pose spread: centre shift (fraction of the image), head half width (fraction of the image), roll
# (degrees), yaw (sideways feature shift, fraction of the half width). Faces are roughly centred
# crops, as in the archive.
_POSE = dict(shift=0.03, half_width=(0.2, 0.27), roll=8.0, yaw=0.06)
_REGION_SCALE = 1.5  # edited box around a feature, relative to the feature: the retouch takes skin with it
# How visible each group's edit is: `lift` brightens the pasted patch (the smoothed, lightened look of
# a retouch) and `gain` jitters its colour per channel; `scale` zooms a self-copy; `blur` feathers the
# mask (fraction of the region size); `donor_p` is the chance the patch comes from another face;
# `regions` how many of the four are edited. The lift is what lets a small CNN learn the set in a few
# epochs: with colour jitter alone (even strong) the report's Model 1 stayed at chance after 8.
_EDIT_STRENGTH = {
    "easy": dict(lift=(1.3, 1.6), gain=0.15, scale=(1.25, 1.5), blur=0.04, donor_p=0.7, regions=(2, 4)),
    "mid": dict(lift=(1.2, 1.4), gain=0.1, scale=(1.15, 1.35), blur=0.06, donor_p=0.6, regions=(1, 3)),
    "hard": dict(lift=(1.1, 1.25), gain=0.06, scale=(1.1, 1.25), blur=0.09, donor_p=0.5, regions=(1, 2)),
}


class Box(NamedTuple):
    x0: int
    y0: int
    x1: int
    y1: int


@dataclass(frozen=True)
class Face:
    pixels: np.ndarray  # (H, W, 3) uint8
    regions: dict[str, Box]  # REGIONS -> bounding box of that feature in pixels


@dataclass(frozen=True)
class RealSample:
    pixels: np.ndarray  # the drawn face, (H, W, 3) uint8
    camera: np.ndarray  # its camera JPEG, decoded: what the set's own save gets
    camera_quality: int
    final_quality: int


@dataclass(frozen=True)
class FakeSample:
    source: np.ndarray  # the face before the edit, (H, W, 3) uint8
    fake: np.ndarray  # after the edit
    mask: np.ndarray  # (H, W) float in [0, 1]: blend weight of the pasted patch; 0 outside edited boxes
    group: str  # easy | mid | hard
    code: str  # CCCC: 1 where REGIONS[i] was edited
    edited: np.ndarray  # the same edit on the decoded camera JPEG of `source`: what the set's own save gets
    camera_quality: int
    final_quality: int
    paste_qualities: tuple[int, ...]  # quality of each edited region's material, in REGIONS order


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _colour(base: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[int, int, int]:
    c = base * rng.uniform(1 - jitter, 1 + jitter, size=3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _mix(palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    i = int(rng.integers(len(palette) - 1))
    t = rng.uniform()
    return palette[i] * (1 - t) + palette[i + 1] * t


def _low_freq(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Smooth random field in [0, 1], (size, size, channels): lighting, blotches, backgrounds."""
    coarse = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    img = Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse)
    field = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return field.reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A two-colour gradient with blurry blobs (walls, rooms, foliage), as an RGBA image."""
    c0 = rng.uniform(30, 230, size=3)
    c1 = rng.uniform(30, 230, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    cells = 32  # built small and upsampled: both parts are smooth, so nothing is lost
    yy, xx = np.mgrid[0:cells, 0:cells] / (cells - 1)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
    bg += (_low_freq(rng, cells, 5, 3) - 0.5) * 60
    small = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).convert("RGBA")
    return small.resize((size, size), Image.BICUBIC)


def _rotate_point(x: float, y: float, cx: float, cy: float, angle_deg: float) -> tuple[float, float]:
    # Matches PIL's Image.rotate(angle, center=(cx, cy)): counter-clockwise on screen (y down).
    a = math.radians(angle_deg)
    dx, dy = x - cx, y - cy
    return cx + dx * math.cos(a) + dy * math.sin(a), cy - dx * math.sin(a) + dy * math.cos(a)


def render_face(rng: np.random.Generator, size: int) -> Face:
    """Draw one face-like image (size x size RGB) and the boxes of its eyes, nose and mouth."""
    s = _SUPERSAMPLE
    big = size * s
    shift = _POSE["shift"]
    cx, cy = big * (0.5 + _u(rng, -shift, shift)), big * (0.54 + _u(rng, -shift, shift))
    a = big * _u(rng, *_POSE["half_width"])  # half width of the head
    b = a * _u(rng, 1.2, 1.38)  # half height
    roll = _u(rng, -_POSE["roll"], _POSE["roll"])
    yaw = a * _u(rng, -_POSE["yaw"], _POSE["yaw"])  # features shift sideways: a cheap turn of the head
    skin_base = _mix(_SKIN_TONES, rng)
    skin = _colour(skin_base, rng, 0.05)
    shade = _colour(skin_base * 0.82, rng, 0.04)
    hair = _colour(_mix(_HAIR_COLOURS, rng), rng, 0.1)

    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    # Neck and shoulders, then hair behind the head, then the head.
    neck_w = a * _u(rng, 0.45, 0.6)
    d.rectangle([cx - neck_w, cy + b * 0.6, cx + neck_w, big], fill=shade)
    shirt = tuple(int(v) for v in rng.integers(20, 235, size=3))
    d.ellipse([cx - a * 2.2, cy + b * 1.05, cx + a * 2.2, cy + b * 2.6], fill=shirt)
    hair_h = b * _u(rng, 1.05, 1.35)
    d.ellipse([cx - a * _u(rng, 1.05, 1.3), cy - hair_h, cx + a * _u(rng, 1.05, 1.3), cy + b * _u(rng, 0.0, 0.7)],
              fill=hair)
    ear_w, ear_h = a * 0.16, b * 0.22
    for side in (-1, 1):
        ex = cx + side * a * 0.97
        d.ellipse([ex - ear_w, cy - ear_h, ex + ear_w, cy + ear_h], fill=shade)
    d.ellipse([cx - a, cy - b, cx + a, cy + b], fill=skin)
    # Fringe: a chord of hair over the forehead.
    fringe = _u(rng, 0.55, 0.8)
    d.chord([cx - a * 1.02, cy - b * 1.05, cx + a * 1.02, cy - b * (1.05 - 2 * (1 - fringe))], 180, 360, fill=hair)

    fx = cx + yaw
    eye_y = cy - b * _u(rng, 0.08, 0.2)
    eye_sep = a * _u(rng, 0.36, 0.46)
    ew = a * _u(rng, 0.17, 0.24)
    eh = ew * _u(rng, 0.42, 0.58)
    iris = _colour(_IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))].astype(np.float64), rng, 0.1)
    brow_gap = eh * _u(rng, 1.2, 1.8)
    brow_w = max(2, int(eh * _u(rng, 0.3, 0.55)))
    brow_tilt = eh * _u(rng, -0.3, 0.3)
    eye_centres = []
    for side in (-1, 1):
        ex = fx + side * eye_sep
        eye_centres.append((ex, eye_y))
        d.ellipse([ex - ew, eye_y - eh, ex + ew, eye_y + eh], fill=(245, 243, 238), outline=shade, width=s)
        r = eh * 0.85
        d.ellipse([ex - r, eye_y - r, ex + r, eye_y + r], fill=iris)
        d.ellipse([ex - r * 0.45, eye_y - r * 0.45, ex + r * 0.45, eye_y + r * 0.45], fill=(12, 10, 10))
        d.ellipse([ex + r * 0.2, eye_y - r * 0.55, ex + r * 0.45, eye_y - r * 0.3], fill=(250, 250, 250))
        by = eye_y - brow_gap
        d.line([ex - ew * 1.1, by + side * brow_tilt, ex + ew * 1.1, by - side * brow_tilt], fill=hair, width=brow_w)

    nose_y = cy + b * _u(rng, 0.1, 0.2)
    nose_w = a * _u(rng, 0.14, 0.22)
    nose_top = eye_y + eh
    d.polygon([(fx, nose_top), (fx - nose_w, nose_y), (fx + nose_w, nose_y)], fill=_colour(skin_base * 0.9, rng, 0.03))
    nr = nose_w * 0.28
    for side in (-1, 1):
        nx = fx + side * nose_w * 0.5
        d.ellipse([nx - nr, nose_y - nr * 0.6, nx + nr, nose_y + nr * 0.6], fill=_colour(skin_base * 0.45, rng, 0.05))

    mouth_y = cy + b * _u(rng, 0.4, 0.52)
    mw = a * _u(rng, 0.26, 0.36)
    mh = mw * _u(rng, 0.22, 0.4)
    lips = _colour(skin_base * np.array([0.78, 0.5, 0.5]), rng, 0.08)
    smile = _u(rng, 0.0, 1.0)
    d.chord([fx - mw, mouth_y - mh, fx + mw, mouth_y + mh], 0 if smile > 0.5 else 180, 180 if smile > 0.5 else 360,
            fill=lips)
    d.ellipse([fx - mw * 0.9, mouth_y - mh * 0.55, fx + mw * 0.9, mouth_y + mh * 0.35], fill=lips)
    d.line([fx - mw * 0.9, mouth_y, fx + mw * 0.9, mouth_y], fill=_colour(skin_base * 0.35, rng, 0.05), width=s)

    # Downsample first, rotate at the final size (4x fewer pixels; bilinear is enough after the
    # supersampling). PIL premultiplies alpha in both, so edges do not darken.
    layer = layer.reduce(s).rotate(roll, resample=Image.BILINEAR, center=(cx / s, cy / s))
    img = Image.alpha_composite(_background(rng, size), layer).convert("RGB")

    # Lighting (smooth, from one side) and skin blotches, then sensor noise.
    pixels = np.asarray(img, dtype=np.float32)
    light = 0.82 + 0.3 * _low_freq(rng, size, 3, 1)
    pixels = pixels * light + (_low_freq(rng, size, 16, 3) - 0.5) * 14
    pixels += rng.standard_normal(size=pixels.shape, dtype=np.float32) * _u(rng, 2.0, 6.0)
    pixels = np.clip(pixels, 0, 255).round().astype(np.uint8)

    def box(x: float, y: float, hw: float, hh: float) -> Box:
        x, y = _rotate_point(x, y, cx, cy, roll)
        hw, hh = hw * _REGION_SCALE, hh * _REGION_SCALE
        return Box(*(int(round(v / s)) for v in (x - hw, y - hh, x + hw, y + hh)))

    regions = {
        "left_eye": box(*eye_centres[0], ew * 1.35, eh * 1.6),
        "right_eye": box(*eye_centres[1], ew * 1.35, eh * 1.6),
        "nose": box(fx, (nose_top + nose_y) / 2 + nr, nose_w * 1.3, (nose_y - nose_top) / 2 + nr * 2),
        "mouth": box(fx, mouth_y, mw * 1.3, mh * 1.6),
    }
    # Small images: a region is at least a few pixels, so that an edit is something a model can see.
    min_side = max(6, round(size * 0.08))
    regions = {k: _clip_box(_grow(v, min_side), size) for k, v in regions.items()}
    return Face(pixels=pixels, regions=regions)


def _grow(bx: Box, min_side: int) -> Box:
    x0, y0, x1, y1 = bx
    if x1 - x0 < min_side:
        x0 = (x0 + x1 - min_side) // 2
        x1 = x0 + min_side
    if y1 - y0 < min_side:
        y0 = (y0 + y1 - min_side) // 2
        y1 = y0 + min_side
    return Box(x0, y0, x1, y1)


def _clip_box(bx: Box, size: int) -> Box:
    return Box(max(0, bx.x0), max(0, bx.y0), min(size, bx.x1), min(size, bx.y1))


def _soft_mask(w: int, h: int, blur_frac: float) -> np.ndarray:
    """An ellipse filling a w x h box, feathered, exactly 0 on the box border."""
    radius = max(1.0, blur_frac * min(w, h))
    # 2 sigma inside the box the feathered edge is down to ~2%; the border itself is then set to 0.
    inset = int(math.ceil(2 * radius))
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).ellipse([inset, inset, w - 1 - inset, h - 1 - inset], fill=255)
    m = m.filter(ImageFilter.GaussianBlur(radius))
    mask = np.asarray(m, dtype=np.float64) / 255.0
    mask[[0, -1], :] = 0.0
    mask[:, [0, -1]] = 0.0
    return mask


def _patch(src: np.ndarray, bx: Box, out_w: int, out_h: int, scale: float) -> np.ndarray:
    """The region `bx` of `src`, zoomed by `scale` around its centre, resized to out_w x out_h."""
    cw, ch = (bx.x1 - bx.x0) / scale, (bx.y1 - bx.y0) / scale
    mx, my = (bx.x0 + bx.x1) / 2, (bx.y0 + bx.y1) / 2
    crop = (mx - cw / 2, my - ch / 2, mx + cw / 2, my + ch / 2)
    img = Image.fromarray(src).resize((out_w, out_h), Image.BICUBIC, box=crop)
    return np.asarray(img, dtype=np.float64)


def _recompress(pixels: np.ndarray, quality: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """`pixels` saved as a JPEG at `quality` (4:2:0, in memory) and decoded. `offset` (dy, dx) moves
    the 8x8 block grid (16x16 for the chroma) that far down and right, edges repeated: the picture
    as if cut from a larger one at another place."""
    dy, dx = offset
    padded = np.pad(pixels, ((dy, 0), (dx, 0), (0, 0)), mode="edge")
    buf = io.BytesIO()
    Image.fromarray(padded).save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))[dy:, dx:]


def _history(rng: np.random.Generator) -> tuple[int, int]:
    """(camera quality, final quality) of one file: drawn alike for reals and fakes."""
    camera = int(rng.integers(CAMERA_QUALITIES[0], CAMERA_QUALITIES[1] + 1))
    final = int(FINAL_QUALITIES[int(rng.integers(len(FINAL_QUALITIES)))])
    return camera, final


def _paste_quality(rng: np.random.Generator, camera: int) -> int:
    """A quality for pasted material, at least MIN_QUALITY_GAP from the camera's."""
    lo, hi = PASTE_QUALITIES
    choices = [q for q in range(lo, hi + 1) if abs(q - camera) >= MIN_QUALITY_GAP]
    return int(choices[int(rng.integers(len(choices)))])


def _off_grid(rng: np.random.Generator) -> tuple[int, int]:
    """A shift of the block grid that moves it off the 8x8 grid on at least one axis."""
    while True:
        dy, dx = (int(v) for v in rng.integers(0, 16, size=2))
        if dy % 8 or dx % 8:
            return dy, dx


def make_real(seed: int, index: int, size: int = 256) -> np.ndarray:
    return render_face(np.random.default_rng([seed, 0, index]), size).pixels


def real_sample(seed: int, index: int, size: int = 256) -> RealSample:
    """Real number `index` (0-based): the drawn face and its camera JPEG."""
    rng = np.random.default_rng([seed, 0, index])
    pixels = render_face(rng, size).pixels
    camera_quality, final_quality = _history(rng)
    return RealSample(pixels=pixels, camera=_recompress(pixels, camera_quality), camera_quality=camera_quality,
                      final_quality=final_quality)


def make_fake(seed: int, index: int, size: int = 256) -> FakeSample:
    """Fake number `index` (0-based): a face, then the local retouch that makes it fake.

    The retouch is made twice with the same patches and masks: on the drawn face (`fake`: the edit
    alone, for checking it) and on the face's camera JPEG (`edited`: what the file holds)."""
    rng = np.random.default_rng([seed, 1, index])
    group = fake_group(index)
    strength = _EDIT_STRENGTH[group]
    face = render_face(rng, size)
    donor = render_face(rng, size)
    lo, hi = strength["regions"]
    n_regions = int(rng.integers(lo, hi + 1))
    chosen = sorted(rng.choice(len(REGIONS), size=n_regions, replace=False).tolist())
    camera_quality, final_quality = _history(rng)

    out = face.pixels.astype(np.float64)
    on_camera = _recompress(face.pixels, camera_quality).astype(np.float64)
    mask_all = np.zeros((size, size), dtype=np.float64)
    edited: dict[str, int] = {}  # region -> quality of its material
    for i in chosen:
        name = REGIONS[i]
        bx = face.regions[name]
        w, h = bx.x1 - bx.x0, bx.y1 - bx.y0
        if w < 4 or h < 4:
            continue  # (nearly) pushed off the canvas by the pose: the code records only real edits
        # The material comes from a JPEG of its own: another quality, another block grid.
        paste_quality = _paste_quality(rng, camera_quality)
        offset = _off_grid(rng)
        if rng.uniform() < strength["donor_p"]:
            patch = _patch(_recompress(donor.pixels, paste_quality, offset), donor.regions[name], w, h, 1.0)
        else:
            # Mostly enlarged (bigger eyes, fuller lips), sometimes shrunk.
            scale = _u(rng, *strength["scale"]) ** (1 if rng.uniform() < 0.7 else -1)
            patch = _patch(_recompress(face.pixels, paste_quality, offset), bx, w, h, scale)
        patch = patch * rng.uniform(*strength["lift"]) * rng.uniform(1 - strength["gain"], 1 + strength["gain"], size=3)
        m = _soft_mask(w, h, strength["blur"])[..., None]
        for target in (out, on_camera):
            target[bx.y0:bx.y1, bx.x0:bx.x1] = target[bx.y0:bx.y1, bx.x0:bx.x1] * (1 - m) + patch * m
        mask_all[bx.y0:bx.y1, bx.x0:bx.x1] = np.maximum(mask_all[bx.y0:bx.y1, bx.x0:bx.x1], m[..., 0])
        edited[name] = paste_quality
    if not edited:
        raise AssertionError(f"fake {index} (seed {seed}) got no edit")  # cannot happen: eyes stay in frame
    code = "".join("1" if r in edited else "0" for r in REGIONS)
    fake = np.clip(out, 0, 255).round().astype(np.uint8)
    return FakeSample(source=face.pixels, fake=fake, mask=mask_all, group=group, code=code,
                      edited=np.clip(on_camera, 0, 255).round().astype(np.uint8), camera_quality=camera_quality,
                      final_quality=final_quality, paste_qualities=tuple(edited[r] for r in REGIONS if r in edited))


def fake_group(index: int) -> str:
    return GROUP_CYCLE[index % len(GROUP_CYCLE)]


def fake_name(index: int, code: str) -> str:
    """Archive-style name of fake `index` (0-based): {group}_{NNN}_{CCCC}.jpg, NNN counted from 1 per group."""
    group = fake_group(index)
    cycles, rest = divmod(index, len(GROUP_CYCLE))
    number = cycles * GROUP_CYCLE.count(group) + GROUP_CYCLE[:rest].count(group) + 1
    return f"{group}_{number:03d}_{code}.jpg"


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int, progressive: bool) -> None:
    # The set's own save. Given quality and subsampling, no optimize pass: the same pixels give the same bytes.
    Image.fromarray(pixels).save(path, "JPEG", quality=quality, subsampling="4:2:0", progressive=progressive)


def synth(
    out: str | Path, n: int = 400, size: int = 256, seed: int = 0, *, progressive: bool = True,
    progress: bool = False,
) -> Path:
    """Write `n` synthetic faces (half real, half fake; the odd one real) under OUT/real_and_fake_face.

    Returns that folder (pass it, or OUT, to `prepare`). JPEGs are progressive by default, like every
    file of the CIPLAB set; `progressive=False` writes baseline ones (what GPU hardware decoders take).
    A previous synthetic set in the same place (it has a synth.json) is replaced; any other existing
    folder there is an error, so that real data is never overwritten.
    """
    if n < 2:
        raise ValueError(f"--n {n} is too small: a synthetic set needs at least 2 images (1 real, 1 fake)")
    if not 32 <= size <= 4096:
        raise ValueError(f"--size {size} is out of range: choose 32..4096 pixels")
    root = Path(out) / ROOT_NAME
    if root.exists():
        if not (root / MARKER_NAME).is_file():
            raise ValueError(
                f"{root} already exists and is not a synthetic set (no {MARKER_NAME}): choose another OUT folder"
            )
        shutil.rmtree(root)  # ours: regenerate from scratch so no stale file from a larger n remains
    real_dir, fake_dir = root / REAL_DIR, root / FAKE_DIR
    real_dir.mkdir(parents=True)
    fake_dir.mkdir()

    from tqdm import tqdm

    n_fake = n // 2
    n_real = n - n_fake

    def write_real(i: int) -> str:
        sample = real_sample(seed, i, size)
        _save_jpeg(sample.camera, real_dir / f"real_{i + 1:05d}.jpg", sample.final_quality, progressive)
        return "real"

    def write_fake(k: int) -> str:
        sample = make_fake(seed, k, size)
        _save_jpeg(sample.edited, fake_dir / fake_name(k, sample.code), sample.final_quality, progressive)
        return sample.group

    # Each image is a pure function of (seed, kind, index), so threads change nothing but the time
    # (PIL and numpy release the GIL for most of the work).
    jobs = [(write_real, i) for i in range(n_real)] + [(write_fake, k) for k in range(n_fake)]
    groups: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda job: job[0](job[1]), jobs)
        for kind in tqdm(results, total=n, desc="synth", unit="img",
                         disable=None if progress else True):
            if kind != "real":
                groups[kind] = groups.get(kind, 0) + 1

    marker = {
        "generator": "realfake.pipelines.synth",
        "n": n, "size": size, "seed": seed, "progressive": progressive,
        "camera_qualities": list(CAMERA_QUALITIES), "paste_qualities": list(PASTE_QUALITIES),
        "min_quality_gap": MIN_QUALITY_GAP, "final_qualities": list(FINAL_QUALITIES),
        "real": n_real, "fake": n_fake, "fake_groups": groups,
    }
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return root
