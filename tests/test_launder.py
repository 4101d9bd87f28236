"""Laundering transforms (`pipelines.launder`) and laundered copies of data sets (`data launder`)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _score_helpers import write_bad_files
from PIL import Image, ImageCms, JpegImagePlugin
from realfake.pipelines import launder
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.launder_dataset import launder_dataset
from realfake.pipelines.manifest import read_manifest


def _photo(width: int = 96, height: int = 80, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth image with texture (low-frequency colour fields plus mild noise): JPEG keeps it well,
    and every offset looks different, so a crop's position can be recovered."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), rng.uniform(0, 6.28)
        channels.append(128 + 90 * np.sin(fx * x + phase) * np.cos(fy * y + phase / 2))
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 4, (height, width, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _jpeg(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


SOURCE = _jpeg(_photo(), quality=93, subsampling=0)


# ------------------------------------------------------------------------------------------ each transform


@pytest.mark.parametrize("quality", [70, 85, 95])
def test_jpeg_quality_is_read_back_from_the_quantization_tables(quality):
    out = _open(launder.launder_bytes(SOURCE, f"jpeg:q={quality}"))
    settings = launder.jpeg_settings(out)
    assert (settings.quality, settings.exact) == (quality, True)
    # independent of jpeg_settings: the luminance table is libjpeg's for that quality
    assert list(out.quantization[0]) == list(launder.ijg_tables(quality)[0])


def test_source_quality_is_not_kept():
    assert launder.jpeg_settings(_open(SOURCE)).quality == 93
    assert launder.jpeg_settings(_open(launder.launder_bytes(SOURCE, "jpeg:q=75"))).quality == 75


@pytest.mark.parametrize(("spec", "sampling"), [("jpeg:q=90", 2), ("jpeg:q=90,sub=444", 0), ("jpeg:q=90,sub=422", 1),
                                                ("resize:scale=0.5,q=80,sub=444", 0), ("crop:dx=2,q=80", 2)])
def test_chroma_subsampling_is_the_specs(spec, sampling):
    out = _open(launder.launder_bytes(SOURCE, spec))
    assert JpegImagePlugin.get_sampling(out) == sampling  # PIL reads it from the frame header
    luma_factors = out.layer[0][1:3]
    assert luma_factors == {0: (1, 1), 1: (2, 1), 2: (2, 2)}[sampling]


def test_progressive_and_optimize_change_the_coding_not_the_pixels():
    base = launder.launder_bytes(SOURCE, "jpeg:q=85")
    for spec in ("jpeg:q=85,prog=1", "jpeg:q=85,opt=1", "jpeg:q=85,prog=1,opt=1"):
        other = launder.launder_bytes(SOURCE, spec)
        assert other != base
        assert bool(_open(other).info.get("progressive")) == ("prog=1" in spec)
        assert np.array_equal(np.asarray(_open(other)), np.asarray(_open(base)))


@pytest.mark.parametrize(("scale", "expected"), [(0.5, (48, 40)), (0.75, (72, 60)), (0.9, (86, 72))])
def test_resize_scales_the_size(scale, expected):
    out = _open(launder.launder_bytes(SOURCE, f"resize:scale={scale},q=90"))
    assert out.size == expected


def test_resize_filters_differ_and_follow_the_content():
    lanczos = np.asarray(_open(launder.launder_bytes(SOURCE, "resize:scale=0.5,q=95")), dtype=np.float64)
    bicubic = np.asarray(_open(launder.launder_bytes(SOURCE, "resize:scale=0.5,q=95,filter=bicubic")), dtype=np.float64)
    assert not np.array_equal(lanczos, bicubic)
    reference = np.asarray(_open(SOURCE).resize((48, 40), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(lanczos - reference).mean() < 6 and np.abs(bicubic - reference).mean() < 6


def test_crop_drops_dx_columns_on_the_left_and_dy_rows_on_top():
    out = _open(launder.launder_bytes(SOURCE, "crop:dx=3,dy=5,q=95"))
    assert out.size == (96 - 3, 80 - 5)
    original = np.asarray(_open(SOURCE), dtype=np.float64)
    laundered = np.asarray(out, dtype=np.float64)[:64, :80]
    errors = {(dx, dy): np.abs(original[dy:dy + 64, dx:dx + 80] - laundered).mean()
              for dx in range(8) for dy in range(8)}
    assert min(errors, key=errors.get) == (3, 5)


def test_transforms_are_deterministic_and_distinct():
    outputs = {spec: launder.launder_bytes(SOURCE, spec) for spec in launder.FAMILY}
    assert all(launder.launder_bytes(SOURCE, spec) == data for spec, data in outputs.items())
    assert len(set(outputs.values())) == len(outputs)


def test_image_and_bytes_and_file_give_the_same_bytes(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(SOURCE)
    spec = "crop:dx=1,dy=2,q=88"
    from_bytes = launder.launder_bytes(SOURCE, spec)
    assert launder.launder_file(path, spec) == from_bytes
    with Image.open(path) as img:
        assert launder.launder_image(img, launder.parse(spec)) == from_bytes


# ------------------------------------------------------------------------------------------ specs


def test_family_covers_the_ranges_in_a_table_sized_list():
    family = launder.family()
    assert 10 <= len(family) <= 14 and len(set(family)) == len(family)
    assert [t.spec for t in family] == list(launder.FAMILY)  # canonical spellings
    kinds = Counter(t.kind for t in family)
    assert set(kinds) == {"jpeg", "resize", "crop"}
    qualities = [t.quality for t in family]
    assert min(qualities) == 70 and max(qualities) == 95
    assert {t.subsampling for t in family if t.kind == "jpeg"} == {"420", "444"}
    scales = [t.scale for t in family if t.kind == "resize"]
    assert min(scales) == 0.5 and max(scales) == 0.9
    assert {t.resample for t in family if t.kind == "resize"} == {"lanczos", "bicubic"}
    assert all(1 <= max(t.dx, t.dy) <= 7 and t.dx < 8 and t.dy < 8 for t in family if t.kind == "crop")


@pytest.mark.parametrize(("spec", "expected"), [
    ("jpeg:q=85", launder.Transform("jpeg", 85)),
    (" jpeg : q = 85 , sub = 444 ", launder.Transform("jpeg", 85, "444")),
    ("resize:q=80,scale=0.75", launder.Transform("resize", 80, scale=0.75)),
    ("resize:scale=0.6,q=80,filter=bicubic,prog=1", launder.Transform("resize", 80, scale=0.6, resample="bicubic",
                                                                      progressive=True)),
    ("crop:dy=5,q=90", launder.Transform("crop", 90, dy=5)),
])
def test_parse_reads_the_grammar_and_spec_writes_it_back(spec, expected):
    parsed = launder.parse(spec)
    assert parsed == expected
    assert launder.parse(parsed.spec) == parsed


@pytest.mark.parametrize(("spec", "fragment"), [
    ("", "empty launder spec"),
    ("jpg:q=85", "unknown kind 'jpg'"),
    ("jpeg", "jpeg needs q=QUALITY"),
    ("jpeg:q=0", "q=0 must be a JPEG quality"),
    ("jpeg:q=85.5", "q=85.5 must be a JPEG quality"),
    ("jpeg:q85", "'q85' is not key=value"),
    ("jpeg:q=85,q=90", "q is given twice"),
    ("jpeg:q=85,scale=0.5", "jpeg takes q, sub, prog, opt, not 'scale'"),
    ("jpeg:q=85,sub=411", "sub=411 must be one of 444, 422, 420"),
    ("jpeg:q=85,prog=yes", "prog=yes must be 0 or 1"),
    ("resize:q=85", "resize needs scale=FACTOR"),
    ("resize:scale=0,q=85", "scale=0 must be a factor"),
    ("resize:scale=0.5,q=85,filter=nearest", "filter=nearest must be one of lanczos, bicubic"),
    ("crop:q=85", "crop needs dx or dy above 0"),
    ("crop:dx=-1,q=85", "dx=-1 must be a pixel offset"),
    ("random", "'random' draws one transform per file"),
])
def test_bad_specs_get_one_line_errors_naming_the_spec(spec, fragment):
    with pytest.raises(ValueError) as info:
        launder.parse(spec)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    if spec:
        assert repr(spec.strip()) in message


def test_draw_is_a_pure_function_of_seed_epoch_index():
    draws = [launder.draw(7, 3, i) for i in range(200)]
    assert draws == [launder.draw(7, 3, i) for i in range(200)]
    assert draws != [launder.draw(8, 3, i) for i in range(200)]
    assert draws != [launder.draw(7, 4, i) for i in range(200)]
    assert all(launder.parse(t.spec) == t for t in draws)
    assert {t.kind for t in draws} == {"jpeg", "resize", "crop"} and {t.subsampling for t in draws} == {"420", "444"}
    assert all(70 <= t.quality <= 95 for t in draws)
    assert all(0.5 <= t.scale <= 0.9 for t in draws if t.kind == "resize")
    assert all(0 <= t.dx <= 7 and 0 <= t.dy <= 7 and (t.dx, t.dy) != (0, 0) for t in draws if t.kind == "crop")
    with pytest.raises(ValueError, match="must be >= 0"):
        launder.draw(-1, 0, 0)


# ------------------------------------------------------------------------------------------ inputs


def test_exif_orientation_is_applied_and_not_kept():
    img = _photo(96, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 96x80, displayed turned 90 degrees clockwise: 80x96
    stored = _jpeg(img, quality=95, exif=exif.tobytes())
    out = _open(launder.launder_bytes(stored, "crop:dx=2,dy=3,q=95"))
    assert out.size == (80 - 2, 96 - 3)
    assert out.getexif().get(0x0112) is None
    displayed = np.asarray(img.transpose(Image.Transpose.ROTATE_270), dtype=np.float64)[3:, 2:]
    assert np.abs(np.asarray(out, dtype=np.float64) - displayed).mean() < 4


def test_metadata_dropped_but_icc_profile_kept():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "camera maker"
    source = _jpeg(_photo(), quality=90, icc_profile=icc, exif=exif.tobytes(), comment=b"edited with X")
    out = _open(launder.launder_bytes(source, "jpeg:q=80"))
    assert out.info.get("icc_profile") == icc
    assert "exif" not in out.info and "comment" not in out.info


@pytest.mark.parametrize(("mode", "fmt", "out_mode"), [
    ("L", "JPEG", "L"), ("CMYK", "JPEG", "CMYK"), ("RGBA", "PNG", "RGB"), ("P", "PNG", "RGB"), ("RGB", "WEBP", "RGB"),
])
def test_modes_and_formats(mode, fmt, out_mode):
    buf = io.BytesIO()
    _photo(mode=mode).save(buf, fmt)
    out = _open(launder.launder_bytes(buf.getvalue(), "resize:scale=0.5,q=85,sub=444"))
    assert (out.format, out.mode, out.size) == ("JPEG", out_mode, (48, 40))
    assert launder.jpeg_settings(out).quality == 85


def test_bad_files_give_the_reason_and_name_the_file(tmp_path):
    reasons = write_bad_files(tmp_path)
    for name, reason in reasons.items():
        with pytest.raises(InvalidImageError) as info:
            launder.launder_file(tmp_path / name, "jpeg:q=85")
        assert info.value.reason == reason and str(tmp_path / name) in str(info.value)
    with pytest.raises(InvalidImageError, match="unreadable"):
        launder.launder_file(tmp_path / "missing.jpg", "jpeg:q=85")
    tiny = tmp_path / "tiny.jpg"
    tiny.write_bytes(_jpeg(_photo(4, 4), quality=90))
    with pytest.raises(ValueError, match=r"tiny\.jpg: 4x4 is too small for crop:dx=5,q=90"):
        launder.launder_file(tiny, "crop:dx=5,q=90")


# ------------------------------------------------------------------------------------------ data launder


def _rel_to_data_root(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("real_and_fake_face"):])


def test_prepared_copy_keeps_names_labels_groups_and_splits(prepared, tmp_path):
    out = tmp_path / "out"
    summary = launder_dataset(prepared, out, launder.parse("resize:q=80,scale=0.75"), progress=False, workers=1)
    source = read_manifest(prepared)
    copy = read_manifest(out)
    assert (summary.files, summary.laundered, summary.kept, summary.rejected) == (len(source), len(source), 0, [])
    assert len(copy) == len(source)
    by_rel = {_rel_to_data_root(r.path): r for r in copy}
    for row in source:
        new = by_rel[_rel_to_data_root(row.path)]  # same relative path and file name
        assert Path(new.path).is_relative_to(out)
        assert (new.label, new.class_name, new.split, new.group) == (row.label, row.class_name, row.split, row.group)
        assert (new.width, new.height) == (48, 48)
        with Image.open(new.path) as img:
            assert img.size == (48, 48) and launder.jpeg_settings(img).quality == 80
        assert new.sha256 != row.sha256
    assert all(hashlib.sha256(Path(r.path).read_bytes()).hexdigest() == r.sha256 for r in copy)
    record = list(csv.DictReader(open(out / "launder.csv", newline="")))
    assert {r["transform"] for r in record} == {"resize:scale=0.75,q=80"} and len(record) == len(source)
    assert json.loads((out / "launder.json").read_text())["complete"] is True


def test_one_split_keeps_that_splits_assignment(prepared, tmp_path):
    summary = launder_dataset(prepared, tmp_path / "out", "jpeg:q=75", split="test", progress=False, workers=1)
    source = read_manifest(prepared, "test")
    copy = read_manifest(tmp_path / "out")
    assert summary.split_counts == {"test": len(source)}
    assert sorted((_rel_to_data_root(r.path), r.label, r.group) for r in copy) == \
        sorted((_rel_to_data_root(r.path), r.label, r.group) for r in source)
    assert read_manifest(tmp_path / "out", "test") == copy


def test_random_draws_per_file_reproducibly_and_independently_of_split(prepared, tmp_path):
    def record(out):
        return {_rel_to_data_root(r["path"]): r["transform"] for r in csv.DictReader(open(out / "launder.csv"))}

    launder_dataset(prepared, tmp_path / "a", "random", seed=5, progress=False, workers=1)
    launder_dataset(prepared, tmp_path / "b", "random", seed=5, progress=False, workers=2)
    launder_dataset(prepared, tmp_path / "c", "random", seed=6, progress=False, workers=1)
    launder_dataset(prepared, tmp_path / "t", "random", seed=5, split="test", progress=False, workers=1)
    a, b, c, t = (record(tmp_path / name) for name in "abct")
    assert a == b and a != c
    assert len(set(a.values())) > len(a) // 2  # one draw per file, not one for all
    assert t == {rel: spec for rel, spec in a.items() if rel in t}
    assert all((tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes() for rel in a)


def test_folder_source_lists_bad_files_and_renames_non_jpegs(tmp_path):
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    _photo(seed=1).save(src / "real" / "a.jpg", quality=90)
    _photo(seed=2).save(src / "real" / "b.png")
    _photo(seed=3).save(src / "real" / "c.png")
    _photo(seed=4).save(src / "real" / "c.jpg", quality=90)  # c.png would become c.jpg too
    reasons = write_bad_files(src / "fake")
    (src / "fake" / "sub").mkdir()
    _photo(seed=5).save(src / "fake" / "sub" / "d.JPG", quality=90)
    summary = launder_dataset(src, tmp_path / "out", "jpeg:q=85", progress=False, workers=1)
    root = tmp_path / "out" / "src"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == \
        ["fake/sub/d.JPG", "real/a.jpg", "real/b.jpg", "real/c.jpg"]
    rejected = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(open(tmp_path / "out" / "rejected.csv"))}
    assert {k: v for k, v in rejected.items() if k in reasons} == reasons
    assert "name clash" in rejected["c.png"] and "c.jpg" in rejected["c.png"]
    assert len(summary.rejected) == len(reasons) + 1 and summary.manifest_path is None
    assert summary.files == 4 + 1 + len(reasons)
    assert _open((root / "real" / "b.jpg").read_bytes()).format == "JPEG"


def test_rerun_resumes_and_other_settings_are_refused(prepared, tmp_path):
    out = tmp_path / "out"
    first = launder_dataset(prepared, out, "crop:dx=3,q=85", progress=False, workers=1)
    files = sorted(p for p in out.rglob("*.jpg"))
    before = {p: p.read_bytes() for p in files}
    manifest = (out / "manifest.csv").read_bytes()
    files[0].unlink()
    stale = files[1].with_name(f".{files[1].name}.123.launder-tmp")
    stale.write_bytes(b"half a file")
    again = launder_dataset(prepared, out, "crop:dx=3,q=85", progress=False, workers=1)
    assert (again.laundered, again.kept) == (1, first.laundered - 1)
    assert {p: p.read_bytes() for p in files} == before and not stale.exists()
    assert (out / "manifest.csv").read_bytes() == manifest
    with pytest.raises(ValueError, match=r"other settings \(transform 'crop:dx=3,q=85' -> 'crop:dx=3,q=86'\)"):
        launder_dataset(prepared, out, "crop:dx=3,q=86", progress=False, workers=1)
    with pytest.raises(ValueError, match="other settings .*split"):
        launder_dataset(prepared, out, "crop:dx=3,q=85", split="test", progress=False, workers=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and was not written by `data launder`"):
        launder_dataset(prepared, tmp_path / "busy", "jpeg:q=85", progress=False, workers=1)


def test_out_may_not_overlap_the_source(synth_src, prepared, tmp_path):
    for out in (synth_src.parent, synth_src / "laundered", synth_src / "training_real"):
        with pytest.raises(ValueError, match="overlaps the source data set"):
            launder_dataset(synth_src, out, "jpeg:q=85", progress=False, workers=1)
    with pytest.raises(ValueError, match="overlaps the source data set"):
        launder_dataset(prepared, synth_src.parent, "jpeg:q=85", progress=False, workers=1)


def test_bad_arguments(prepared, synth_src, tmp_path):
    with pytest.raises(ValueError, match="launder spec 'jpeg:q=200'"):
        launder_dataset(prepared, tmp_path / "o", "jpeg:q=200", progress=False)
    with pytest.raises(ValueError, match="--split test needs a prepared DATA_DIR"):
        launder_dataset(synth_src, tmp_path / "o", "jpeg:q=85", split="test", progress=False)
    with pytest.raises(ValueError, match="not found"):
        launder_dataset(tmp_path / "nothing", tmp_path / "o", "jpeg:q=85", progress=False)
    assert not (tmp_path / "o").exists()


def test_evaluate_scores_reads_the_laundered_copy(prepared, tmp_path):
    from realfake.jobs.tasks.evaluate import run_evaluate_scores
    from realfake.jobs.tasks.outputs.common import RESULT_COLUMNS
    from realfake.jobs.tasks.outputs.writers import open_writer

    out = tmp_path / "out"
    launder_dataset(prepared, out, "jpeg:q=70", split="test", progress=False, workers=1)
    scored = sorted((out / "real_and_fake_face").rglob("*.jpg"))  # what `realfake score` walks
    writer = open_writer(out / "scores.csv", RESULT_COLUMNS, resume=False)
    writer.write([{"path": str(p), "size": p.stat().st_size, "mtime": "2026-12-06T00:00:00+00:00",
                   "p_fake": 0.9 if "training_fake" in str(p) else 0.1, "label": "", "decision": "",
                   "reason": "", "threshold": 0.5, "engine_id": "e1"} for p in scored])
    writer.close()
    summary = run_evaluate_scores(out / "scores.csv", out, "test")
    assert summary["n"] == len(read_manifest(prepared, "test")) and summary["accuracy"] == 1.0


def test_cli_end_to_end_in_a_subprocess(prepared, tmp_path):
    def realfake(*args):
        return subprocess.run([sys.executable, "-m", "realfake.jobs.cli", "data", "launder", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "out"
    done = realfake(prepared, "--out", out, "--transform", "jpeg:q=90,sub=444", "--split", "valid", "--no-progress")
    assert done.returncode == 0, done.stderr
    n_valid = len(read_manifest(prepared, "valid"))
    assert f"{n_valid} laundered, 0 already there, 0 rejected" in done.stdout
    assert f"manifest    {out / 'manifest.csv'} (valid {n_valid};" in done.stdout
    assert len(read_manifest(out, "valid")) == n_valid

    bad = realfake(prepared, "--out", tmp_path / "bad", "--transform", "resize:scale=3,q=90")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: launder spec 'resize:scale=3,q=90': scale=3 must be a factor from 0.1 to 2 (e.g. scale=0.75)"]

    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "fake").mkdir()
    _photo(seed=1).save(src / "real" / "r.jpg", quality=90)
    _photo(seed=2).save(src / "fake" / "f.jpg", quality=90)
    (src / "fake" / "notes.jpg").write_text("not a photo")
    partial = realfake(src, "--out", tmp_path / "folder_out", "--transform", "random", "--seed", "3", "--no-progress")
    assert partial.returncode == 1, partial.stderr
    assert "1 rejected" in partial.stdout and f"not an image: {src / 'fake' / 'notes.jpg'}" in partial.stdout
