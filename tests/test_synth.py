"""The synthetic face set: layout and names, same seed -> same bytes, and fakes edited only locally."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from realfake.pipelines.synth import REGIONS, make_fake, make_real, synth

FAKE_NAME = re.compile(r"^(easy|mid|hard)_(\d{3})_([01]{4})\.jpg$")


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_layout_counts_and_names(tmp_path):
    root = synth(tmp_path, n=17, size=48, seed=3)
    assert root == tmp_path / "real_and_fake_face"
    real = sorted(p.name for p in (root / "training_real").iterdir())
    fake = sorted(p.name for p in (root / "training_fake").iterdir())
    assert real == [f"real_{i:05d}.jpg" for i in range(1, 10)]  # the odd image is real
    assert len(fake) == 8
    parsed = [FAKE_NAME.match(name) for name in fake]
    assert all(parsed), fake
    groups = [m.group(1) for m in parsed]
    assert {g: groups.count(g) for g in ("easy", "mid", "hard")} == {"easy": 2, "mid": 4, "hard": 2}  # 1:2:1
    for g in ("easy", "mid", "hard"):  # numbered from 1 within each group
        assert sorted(int(m.group(2)) for m in parsed if m.group(1) == g) == list(range(1, groups.count(g) + 1))
    assert all("1" in m.group(3) for m in parsed)  # every fake has at least one edited region
    with Image.open(root / "training_real" / real[0]) as img:
        assert (img.format, img.mode, img.size, img.info.get("progressive")) == ("JPEG", "RGB", (48, 48), 1)
    marker = json.loads((root / "synth.json").read_text())
    assert marker["real"] == 9 and marker["fake"] == 8 and marker["seed"] == 3


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = synth(tmp_path / "a", n=8, size=48, seed=0)
    b = synth(tmp_path / "b", n=8, size=48, seed=0)
    c = synth(tmp_path / "c", n=8, size=48, seed=1)
    assert _files(a) == _files(b)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "training_real/real_00001.jpg").read_bytes() != (c / "training_real/real_00001.jpg").read_bytes()
    # image k does not depend on n
    d = synth(tmp_path / "d", n=4, size=48, seed=0)
    assert (d / "training_real/real_00002.jpg").read_bytes() == (a / "training_real/real_00002.jpg").read_bytes()


def test_baseline_option(tmp_path):
    root = synth(tmp_path, n=2, size=48, progressive=False)
    with Image.open(root / "training_real" / "real_00001.jpg") as img:
        assert "progressive" not in img.info


@pytest.mark.parametrize("index", range(8))
def test_fake_differs_from_its_source_only_inside_the_edited_regions(index):
    size = 96
    sample = make_fake(seed=0, index=index, size=size)
    src = sample.source.astype(int)
    fake = sample.fake.astype(int)
    diff = np.abs(fake - src).max(axis=-1)
    outside = sample.mask == 0
    assert (diff[outside] == 0).all()  # byte-identical outside the blend mask
    inside = sample.mask > 0.5
    assert 0 < inside.mean() < 0.2  # a local edit, not a new picture
    assert np.abs(fake - src)[inside].mean() > 4  # and a visible one where the mask is solid
    assert sample.code != "0000" and len(sample.code) == len(REGIONS)
    assert sample.group == ("easy", "mid", "hard", "mid")[index % 4]


def test_edit_code_names_the_edited_regions():
    # the mask of region r is non-zero exactly when bit r of the code is 1: rebuild the face boxes
    from realfake.pipelines.synth import render_face

    for index in range(6):
        sample = make_fake(seed=0, index=index, size=128)
        rng = np.random.default_rng([0, 1, index])  # make_fake's own stream: the face is drawn first
        face = render_face(rng, 128)
        assert (face.pixels == sample.source).all()
        for bit, name in zip(sample.code, REGIONS, strict=True):
            box = face.regions[name]
            if bit == "1":
                assert sample.mask[box.y0:box.y1, box.x0:box.x1].max() > 0.9, (index, name)
        edited = np.zeros_like(sample.mask, dtype=bool)
        for bit, name in zip(sample.code, REGIONS, strict=True):
            if bit == "1":
                box = face.regions[name]
                edited[box.y0:box.y1, box.x0:box.x1] = True
        assert (sample.mask[~edited] == 0).all()


def test_written_fakes_are_the_edited_pixels(tmp_path):
    root = synth(tmp_path, n=4, size=64, seed=0)
    first_fake = sorted((root / "training_fake").iterdir())[0]  # fake 0 is easy_001_...
    assert first_fake.name.startswith("easy_001_")
    decoded = np.asarray(Image.open(first_fake).convert("RGB"), dtype=float)
    sample = make_fake(0, 0, 64)
    assert first_fake.name == f"easy_001_{sample.code}.jpg"
    # JPEG error only (noise and 4:2:0 chroma make it a few levels at 64 px); another face is far off
    error = np.abs(decoded - sample.fake).mean()
    assert error < 8 and np.abs(decoded - make_fake(0, 1, 64).fake).mean() > 3 * error
    real = np.asarray(Image.open(root / "training_real" / "real_00001.jpg").convert("RGB"), dtype=float)
    assert np.abs(real - make_real(0, 0, 64)).mean() < 8


def test_rerun_replaces_a_synthetic_set_but_never_other_data(tmp_path):
    synth(tmp_path, n=10, size=40)
    root = synth(tmp_path, n=4, size=40)
    assert len(_files(root)) == 4  # no stale files from the bigger set
    other = tmp_path / "mine"
    (other / "real_and_fake_face" / "training_real").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a synthetic set"):
        synth(other, n=4, size=40)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        synth("unused", n=1)
    with pytest.raises(ValueError, match="size"):
        synth("unused", n=4, size=8)


def test_cli_synth(tmp_path):
    from realfake.jobs.cli import main

    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "s"), "--n", "6", "--size", "40"])
    assert result.exit_code == 0, result.output
    assert "3 real + 3 fake" in result.output
    assert len(_files(tmp_path / "s" / "real_and_fake_face")) == 6
    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "t"), "--n", "1"])
    assert result.exit_code == 2 and result.output.strip().startswith("error:") and "Traceback" not in result.output
