"""The synthetic set's compression history: every file saved twice alike, the fakes' pasted regions of
another history, and that region standing out in the JPEG ghost maps."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from realfake.pipelines import synth
from realfake.pipelines.images import file_encoding
from realfake.pipelines.jpeg_ghosts import BLOCK, normalize, raw_maps

SIZE = 128


def _encoded(pixels: np.ndarray, quality: int, path) -> None:
    Image.fromarray(pixels).save(path, "JPEG", quality=quality, subsampling="4:2:0")


def _region_standout(path, mask: np.ndarray) -> float:
    """How far the ghost-map cells under the pasted region lie from the image's typical cell: the
    distance (over all 33 normalized maps) from the image's median cell, averaged over the cells
    weighted by how much of each the mask covers, over the median distance."""
    maps = normalize(raw_maps(path, SIZE), SIZE // BLOCK)
    distance = np.sqrt(((maps - np.median(maps, axis=(1, 2), keepdims=True)) ** 2).sum(0))
    cells = SIZE // BLOCK
    coverage = mask[:cells * BLOCK, :cells * BLOCK].reshape(cells, BLOCK, cells, BLOCK).mean((1, 3))
    return float((distance * coverage).sum() / coverage.sum() / np.median(distance))


def test_the_pasted_region_stands_out_in_the_ghost_maps(tmp_path):
    # Against two controls on the same faces and the same two saves: the face left unedited, and the
    # same pixel edit made before the camera JPEG (so the region shares the face's history). Only the
    # pasted material's own history makes the region stand out.
    fake, unedited, same_history = [], [], []
    for index in range(16):
        sample = synth.make_fake(seed=0, index=index, size=SIZE)
        variants = {
            "fake": sample.edited,
            "unedited": synth._recompress(sample.source, sample.camera_quality),
            "same_history": synth._recompress(sample.fake, sample.camera_quality),
        }
        for name, pixels in variants.items():
            _encoded(pixels, sample.final_quality, tmp_path / f"{name}.jpg")
        fake.append(_region_standout(tmp_path / "fake.jpg", sample.mask))
        unedited.append(_region_standout(tmp_path / "unedited.jpg", sample.mask))
        same_history.append(_region_standout(tmp_path / "same_history.jpg", sample.mask))
    assert np.mean(fake) > 1.25 * np.mean(unedited), (fake, unedited)
    assert np.mean(fake) > 1.25 * np.mean(same_history), (fake, same_history)
    assert sum(f > u for f, u in zip(fake, unedited, strict=True)) >= 12
    assert sum(f > s for f, s in zip(fake, same_history, strict=True)) >= 12


def test_reals_and_fakes_are_not_told_apart_by_their_quantization_tables(tmp_path):
    root = synth.synth(tmp_path, n=48, size=64, seed=0)
    real = [file_encoding(p) for p in sorted((root / synth.REAL_DIR).iterdir())]
    fake = [file_encoding(p) for p in sorted((root / synth.FAKE_DIR).iterdir())]
    assert len(set(real)) == len(synth.FINAL_QUALITIES)  # the set's own save: one quality drawn per file
    assert set(real) == set(fake)  # and drawn alike for both classes
    # no table says "fake" much more often than "real"
    for encoding in set(real):
        assert abs(real.count(encoding) - fake.count(encoding)) <= len(real) // 3, (real, fake)


def test_every_file_is_saved_at_its_final_quality_after_a_camera_jpeg(tmp_path):
    root = synth.synth(tmp_path, n=6, size=64, seed=2)
    real = synth.real_sample(2, 0, 64)
    fake = synth.make_fake(2, 0, 64)

    def tables(quality):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=quality)
        return Image.open(buf).quantization

    with Image.open(root / synth.REAL_DIR / "real_00001.jpg") as img:
        assert img.quantization == tables(real.final_quality)
        assert np.abs(np.asarray(img, dtype=float) - real.camera).mean() < 4  # the camera JPEG, saved again
    with Image.open(root / synth.FAKE_DIR / synth.fake_name(0, fake.code)) as img:
        assert img.quantization == tables(fake.final_quality)
        assert np.abs(np.asarray(img, dtype=float) - fake.edited).mean() < 4
    # the camera JPEG is a JPEG at the camera quality: re-saving it there changes little, unlike the drawn face
    assert np.abs(synth._recompress(real.camera, real.camera_quality).astype(float) - real.camera).mean() < \
        0.5 * np.abs(real.camera.astype(float) - real.pixels).mean()
    marker = json.loads((root / synth.MARKER_NAME).read_text())
    assert marker["final_qualities"] == list(synth.FINAL_QUALITIES)


@pytest.mark.parametrize("index", range(6))
def test_fakes_carry_material_of_another_quality_only_inside_the_edit(index):
    sample = synth.make_fake(seed=1, index=index, size=96)
    lo, hi = synth.CAMERA_QUALITIES
    assert lo <= sample.camera_quality <= hi and sample.final_quality in synth.FINAL_QUALITIES
    assert len(sample.paste_qualities) == sample.code.count("1")
    assert all(abs(q - sample.camera_quality) >= synth.MIN_QUALITY_GAP for q in sample.paste_qualities)
    # outside the blend mask the file's pixels are the camera JPEG's, untouched
    camera = synth._recompress(sample.source, sample.camera_quality)
    outside = sample.mask == 0
    assert (sample.edited[outside] == camera[outside]).all()
    assert np.abs(sample.edited.astype(int) - camera)[sample.mask > 0.5].mean() > 4


def test_off_grid_shifts_never_keep_the_block_grid():
    rng = np.random.default_rng(0)
    shifts = [synth._off_grid(rng) for _ in range(200)]
    assert all(dy % 8 or dx % 8 for dy, dx in shifts)
    assert all(0 <= dy < 16 and 0 <= dx < 16 for dy, dx in shifts)
