"""`data prepare`: layouts (archive, zip, generic folders), validation, duplicates, split, errors."""
from __future__ import annotations

import csv
import json
import shutil
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from realfake.jobs.cli import main
from realfake.pipelines.manifest import read_manifest
from realfake.pipelines.prepare import group_of, parse_split, prepare


def _noise(path: Path, seed: int, size: int = 12, mode: str = "RGB", fmt: str | None = None) -> Path:
    """A tiny image with unique content (random pixels, seeded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, fmt)
    return path


def _class_folders(root: Path, n_real: int, n_fake: int, real="real", fake="fake", seed0=0) -> Path:
    for i in range(n_real):
        _noise(root / real / f"r{i:03d}.jpg", seed0 + i)
    for i in range(n_fake):
        _noise(root / fake / f"f{i:03d}.jpg", seed0 + 10_000 + i)
    return root


def _rejected(data_dir: Path) -> dict[str, str]:
    with open(data_dir / "rejected.csv", newline="") as f:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}


def _cli(*args):
    return CliRunner().invoke(main, ["data", *map(str, args)])


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ layouts


def test_archive_layout_wrapped_in_folders(synth_src, tmp_path):
    src = tmp_path / "archive"
    shutil.copytree(synth_src, src / "download" / "real_and_fake_face")
    summary = prepare(src, tmp_path / "data", progress=False)
    assert summary.files == {"real": 24, "fake": 24} and summary.accepted == {"real": 24, "fake": 24}
    assert summary.rejected_count == 0 and summary.duplicate_groups == []
    rows = read_manifest(tmp_path / "data")
    assert len(rows) == 48
    for r in rows:
        assert Path(r.path).is_absolute() and Path(r.path).is_file()
        assert (r.label, r.class_name) == ((0, "real") if "training_real" in r.path else (1, "fake"))
        assert r.group == ("real" if r.label == 0 else Path(r.path).name.split("_")[0])
        assert (r.width, r.height) == (64, 64)
    assert {r.group for r in rows} == {"real", "easy", "mid", "hard"}
    assert [r.path for r in rows] == sorted(r.path for r in rows)


def test_prepared_fixture_matches_the_contract(prepared):
    rows = read_manifest(prepared)
    by_split = Counter((r.split, r.class_name) for r in rows)
    assert by_split == {("train", "real"): 20, ("train", "fake"): 20, ("valid", "real"): 2,
                        ("valid", "fake"): 2, ("test", "real"): 2, ("test", "fake"): 2}
    summary = json.loads((prepared / "prepare.json").read_text())
    assert summary["counts"]["train"] == {"real": 20, "fake": 20, "total": 40}


def test_zip_of_the_archive_is_extracted_into_out(synth_src, tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(synth_src.rglob("*")):
            zf.write(path, Path("real_and_fake_face_detection") / "real_and_fake_face" / path.relative_to(synth_src))
    out = tmp_path / "data"
    summary = prepare(archive, out, progress=False)
    assert summary.source_kind == "zip" and summary.accepted == {"real": 24, "fake": 24}
    rows = read_manifest(out)
    assert all(Path(r.path).is_relative_to((out / "images").resolve()) for r in rows)
    # The split is drawn over contents, so the zip and the folder give the same split.
    folder_rows = read_manifest(prepare(synth_src, tmp_path / "from_folder", progress=False).data_dir)
    assert {r.sha256: r.split for r in rows} == {r.sha256: r.split for r in folder_rows}
    # A rerun replaces its own extraction.
    first = (out / "manifest.csv").read_bytes()
    prepare(archive, out, progress=False)
    assert (out / "manifest.csv").read_bytes() == first


def test_zip_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("real/a.jpg", b"x")
        zf.writestr("../../escaped.jpg", b"x")
    with pytest.raises(ValueError, match="outside the extraction folder"):
        prepare(archive, tmp_path / "out" / "data", progress=False)
    assert not list(tmp_path.rglob("escaped.jpg"))


def test_zip_does_not_overwrite_a_folder_it_did_not_make(synth_src, tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(synth_src.rglob("*.jpg")):
            zf.write(path, path.relative_to(synth_src.parent))
    (tmp_path / "out" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="not made by `data prepare`"):
        prepare(archive, tmp_path / "out", progress=False)


def test_double_copy_like_the_kaggle_archive_uses_the_shallowest(synth_src, tmp_path):
    src = tmp_path / "kaggle"
    shutil.copytree(synth_src, src / "real_and_fake_face")
    shutil.copytree(synth_src, src / "real_and_fake_face_detection" / "real_and_fake_face")
    summary = prepare(src, tmp_path / "data", progress=False)
    assert summary.data_root == str(src / "real_and_fake_face")
    assert summary.skipped_copies == [str(src / "real_and_fake_face_detection" / "real_and_fake_face")]
    assert summary.accepted == {"real": 24, "fake": 24}
    result = _cli("prepare", src, "--out", tmp_path / "cli")
    assert result.exit_code == 0 and "another copy of the data set was not used" in result.output


def test_generic_class_folders_any_case(tmp_path):
    src = _class_folders(tmp_path / "src", 12, 10, real="Real", fake="FAKE")
    (src / "notes").mkdir()
    summary = prepare(src, tmp_path / "data", progress=False)
    assert summary.accepted == {"real": 12, "fake": 10}
    assert summary.ignored_dirs == [str(src / "notes")]
    rows = read_manifest(tmp_path / "data")
    assert {(Path(r.path).parent.name, r.label, r.group) for r in rows} == {("Real", 0, "real"), ("FAKE", 1, "")}


# --------------------------------------------------------------------------------------- validation


def test_bad_files_are_rejected_with_reasons_and_odd_good_ones_kept(tmp_path):
    src = _class_folders(tmp_path / "src", 12, 12)
    real, fake = src / "real", src / "fake"
    good = (real / "r000.jpg").read_bytes()
    (real / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (real / "empty.jpg").write_bytes(b"")
    (fake / "text.jpg").write_text("hello\n")
    (fake / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 64)
    (fake / "readme.txt").write_text("fakes\n")
    _noise(fake / "anim.gif", 900, fmt="GIF")
    corrupt = bytearray((fake / "f000.jpg").read_bytes())
    dht = corrupt.index(b"\xff\xc4")
    corrupt[dht + 5: dht + 25] = b"\xff" * 20
    (fake / "corrupt.jpg").write_bytes(bytes(corrupt))
    # odd but valid: other formats and modes, other extensions, nested folders
    _noise(real / "grey.png", 901, mode="L")
    _noise(real / "cmyk.jpg", 902, mode="CMYK")
    _noise(real / "alpha.png", 903, mode="RGBA")
    _noise(fake / "palette.png", 904, mode="P")
    _noise(fake / "nested" / "deeper.bmp", 905)
    _noise(fake / "photo.jpeg.bak", 906, fmt="JPEG")

    summary = prepare(src, tmp_path / "data", progress=False)
    assert _rejected(tmp_path / "data") == {
        "truncated.jpg": "truncated", "empty.jpg": "empty file", "text.jpg": "not an image",
        ".DS_Store": "not an image", "readme.txt": "not an image", "anim.gif": "unsupported format",
        "corrupt.jpg": "corrupt",
    }
    assert summary.rejected_count == 7 and summary.files == {"real": 17, "fake": 20}
    assert summary.accepted == {"real": 15, "fake": 15}
    names = {Path(r.path).name for r in read_manifest(tmp_path / "data")}
    assert {"grey.png", "cmyk.jpg", "alpha.png", "palette.png", "deeper.bmp", "photo.jpeg.bak"} <= names
    assert not names & {"truncated.jpg", "empty.jpg", "text.jpg", ".DS_Store", "readme.txt", "anim.gif"}
    saved = json.loads((tmp_path / "data" / "prepare.json").read_text())
    assert saved["rejected_count"] == 7 and len(saved["rejected"]) == 7

    result = _cli("prepare", src, "--out", tmp_path / "cli", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "rejected    7" in result.output and "rejected.csv" in result.output
    assert "unsupported format: " in result.output and "... 2 more" in result.output


def test_duplicates_stay_together_and_cross_label_copies_are_rejected(tmp_path):
    src = _class_folders(tmp_path / "src", 30, 30)
    for i in range(10):  # ten groups of three identical reals, under other names
        for k in (1, 2):
            shutil.copy(src / "real" / f"r{i:03d}.jpg", src / "real" / f"copy{k}_{i}.jpg")
    shutil.copy(src / "fake" / "f000.jpg", src / "fake" / "sub_copy.jpg")
    shutil.copy(src / "real" / "r020.jpg", src / "fake" / "stolen.jpg")  # same bytes, other label

    for seed in range(4):
        out = tmp_path / f"data{seed}"
        summary = prepare(src, out, seed=seed, progress=False)
        rows = read_manifest(out)
        split_of = defaultdict(set)
        for r in rows:
            split_of[r.sha256].add(r.split)
        assert all(len(s) == 1 for s in split_of.values())  # never in two splits
        assert len(summary.duplicate_groups) == 11 and summary.duplicate_files == 21
        assert all(len(g) in (2, 3) for g in summary.duplicate_groups)
        assert _rejected(out) == {"r020.jpg": _rejected(out)["r020.jpg"], "stolen.jpg": _rejected(out)["stolen.jpg"]}
        assert all(v.startswith("label conflict") for v in _rejected(out).values())
        assert summary.accepted == {"real": 49, "fake": 31}
        # 29 unique reals and 30 unique fakes are split, not 49 and 31 files
        assert sum(summary.unique_counts[s]["real"] for s in ("train", "valid", "test")) == 29


# ---------------------------------------------------------------------------------------- the split


def test_same_seed_identical_outputs_other_seed_other_split(synth_src, tmp_path):
    a = prepare(synth_src, tmp_path / "a", seed=7, progress=False)
    prepare(synth_src, tmp_path / "b", seed=7, progress=False)
    for name in ("manifest.csv", "prepare.json", "rejected.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a.manifest_sha256 == json.loads((tmp_path / "b" / "prepare.json").read_text())["manifest_sha256"]
    prepare(synth_src, tmp_path / "c", seed=8, progress=False)
    split_a = {r.path: r.split for r in read_manifest(tmp_path / "a")}
    split_c = {r.path: r.split for r in read_manifest(tmp_path / "c")}
    assert split_a.keys() == split_c.keys() and split_a != split_c


def _graded_set(root: Path) -> Path:
    """40 real, and 20 easy + 40 mid + 20 hard fakes with archive-style names."""
    for i in range(40):
        _noise(root / "training_real" / f"real_{i:05d}.jpg", i)
    seed = 1000
    for group, n in (("easy", 20), ("mid", 40), ("hard", 20)):
        for i in range(n):
            seed += 1
            _noise(root / "training_fake" / f"{group}_{i:03d}_{seed % 2}{seed % 3 % 2}01.jpg", seed)
    return root


def test_split_is_stratified_by_class_and_group_with_no_leakage(tmp_path):
    src = _graded_set(tmp_path / "real_and_fake_face")
    summary = prepare(src, tmp_path / "data", split="0.5,0.25,0.25", seed=3, progress=False)
    rows = read_manifest(tmp_path / "data")
    table = Counter((r.split, r.group) for r in rows)
    for group, n in (("real", 40), ("easy", 20), ("mid", 40), ("hard", 20)):
        assert (table[("train", group)], table[("valid", group)], table[("test", group)]) == (n // 2, n // 4, n // 4)
    assert summary.stratified_by == {"real": "class", "fake": "class+group"}
    # every accepted file exactly once, no content in two splits
    assert len({r.path for r in rows}) == len(rows) == 120
    assert len({r.sha256 for r in rows}) == 120


def test_default_fractions_are_the_reports(tmp_path):
    src = _graded_set(tmp_path / "real_and_fake_face")
    summary = prepare(src, tmp_path / "data", progress=False)
    assert summary.split == {"train": 0.8, "valid": 0.1, "test": 0.1}
    assert {s: summary.counts[s]["total"] for s in summary.counts} == {"train": 96, "valid": 12, "test": 12}


def test_zero_valid_or_test_fraction_is_allowed(tmp_path):
    src = _class_folders(tmp_path / "src", 6, 6)
    summary = prepare(src, tmp_path / "data", split=(0.9, 0.0, 0.1), progress=False)
    assert summary.counts["valid"]["total"] == 0 and summary.counts["test"] == {"real": 1, "fake": 1, "total": 2}
    prepare(src, tmp_path / "all", split="1,0,0", progress=False)
    assert {r.split for r in read_manifest(tmp_path / "all")} == {"train"}


@pytest.mark.parametrize("text, message", [
    ("0.8,0.2", "3 fractions"), ("0.8,0.1,x", "not 3 numbers"), ("0.8,0.3,0.1", "sum to 1"),
    ("1.2,-0.1,-0.1", ">= 0"), ("0,0.5,0.5", "train 0"),
])
def test_bad_split_fractions(text, message):
    with pytest.raises(ValueError, match=message):
        parse_split(text)


def test_groups_parsed_from_archive_names():
    assert group_of(Path("easy_116_111.jpg"), 1) == "easy"
    assert group_of(Path("MID_001_1100.JPG"), 1) == "mid"
    assert group_of(Path("hard_204_0010.jpg"), 1) == "hard"
    assert group_of(Path("real_00001.jpg"), 0) == "real"
    assert group_of(Path("easy_116_111.jpg"), 0) == "real"  # the folder decides the label
    assert group_of(Path("photo.jpg"), 1) == ""
    assert group_of(Path("easygoing.jpg"), 1) == ""


# ------------------------------------------------------------------------------------- input errors


def test_cli_prints_the_summary_table(prepared, synth_src, tmp_path):
    result = _cli("prepare", synth_src, "--out", tmp_path / "d", "--seed", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "files       real 24, fake 24" in out and "rejected    0" in out
    assert "train            0.8     20     20     40" in out
    assert f"manifest    {(tmp_path / 'd' / 'manifest.csv').resolve()}" in out
    assert (tmp_path / "d" / "manifest.csv").read_bytes() == (prepared / "manifest.csv").read_bytes()
    assert "audit" not in out  # the synthetic set saves both classes alike


def test_audit_counts_files_whose_encoding_only_one_class_has(tmp_path):
    # Like CIPLAB: every real and most fakes saved at one JPEG quality, some fakes at another, and a PNG.
    for i in range(6):
        _noise(tmp_path / "src" / "real" / f"r{i}.jpg", i)
    for i in range(6):
        path = _noise(tmp_path / "src" / "fake" / f"f{i}.jpg", 100 + i)
        if i >= 3:
            Image.open(path).save(path, "JPEG", quality=40)
    _noise(tmp_path / "src" / "fake" / "f6.png", 106, fmt="PNG")
    summary = prepare(tmp_path / "src", tmp_path / "d", split="0.5,0.25,0.25", progress=False)
    assert summary.class_only_encodings == {"real": 0, "fake": 4}
    assert sorted(summary.encodings.values(), key=str) == sorted(
        [{"real": 6, "fake": 3}, {"real": 0, "fake": 3}, {"real": 0, "fake": 1}], key=str)
    assert summary.encodings["PNG"] == {"real": 0, "fake": 1}
    assert json.loads((tmp_path / "d" / "prepare.json").read_text())["class_only_encodings"]["fake"] == 4
    result = _cli("prepare", tmp_path / "src", "--out", tmp_path / "d2", "--split", "0.5,0.25,0.25", "--no-progress")
    assert "audit       fake: 4 of 7 files (57.1%) use an encoding" in result.output, result.output


def test_error_missing_folder(tmp_path):
    _assert_one_line_error(_cli("prepare", tmp_path / "nowhere", "--out", tmp_path / "d"), "nowhere", "not found")


def test_error_one_class_only(tmp_path):
    src = tmp_path / "src"
    _noise(src / "data" / "training_real" / "a.jpg", 0)
    _assert_one_line_error(_cli("prepare", src, "--out", tmp_path / "d"), "only one class", "training_real",
                           "fake")
    _assert_one_line_error(_cli("prepare", src / "data" / "training_real", "--out", tmp_path / "d"),
                           "single class folder")


def test_error_empty_class(tmp_path):
    src = _class_folders(tmp_path / "src", 5, 0)
    (src / "fake").mkdir()
    _assert_one_line_error(_cli("prepare", src, "--out", tmp_path / "d"), "empty", str(src / "fake"))


def test_error_class_with_nothing_usable_still_writes_rejected_csv(tmp_path):
    src = _class_folders(tmp_path / "src", 5, 0)
    (src / "fake").mkdir()
    (src / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    _assert_one_line_error(_cli("prepare", src, "--out", tmp_path / "d"), "class fake", "0 usable", "1 rejected",
                           "rejected.csv")
    assert _rejected(tmp_path / "d") == {"broken.jpg": "truncated"}  # a JPEG without its end marker


def test_error_too_few_images_for_the_split(tmp_path):
    src = _class_folders(tmp_path / "src", 3, 5)
    assert _cli("prepare", src, "--out", tmp_path / "d").exit_code == 0
    (src / "real" / "r002.jpg").unlink()
    _assert_one_line_error(_cli("prepare", src, "--out", tmp_path / "d"), "class real", "needs at least 3",
                           "--split")
    # the earlier run's manifest is gone: nothing downstream trains on stale data
    assert not (tmp_path / "d" / "manifest.csv").exists() and not (tmp_path / "d" / "prepare.json").exists()


def test_error_zip_without_images(tmp_path):
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("real/readme.txt", "nothing here")
        zf.writestr("fake/notes.md", "nor here")
    _assert_one_line_error(_cli("prepare", archive, "--out", tmp_path / "d"), "holds no images")


def test_error_not_a_zip(tmp_path):
    path = tmp_path / "data.tar"
    path.write_bytes(b"not a zip at all")
    _assert_one_line_error(_cli("prepare", path, "--out", tmp_path / "d"), "not a zip archive")


def test_error_two_folders_that_do_not_say_their_class(tmp_path):
    src = _class_folders(tmp_path / "wrap" / "inner", 3, 3, real="cats", fake="dogs")
    _assert_one_line_error(_cli("prepare", tmp_path / "wrap", "--out", tmp_path / "d"), "cats/, dogs/",
                           "rename them real/ and fake/")
    assert src.exists()


def test_error_no_class_folders(tmp_path):
    _noise(tmp_path / "src" / "loose.jpg", 0)
    _assert_one_line_error(_cli("prepare", tmp_path / "src", "--out", tmp_path / "d"), "no class folders")


def test_error_bad_split_via_cli(tmp_path):
    src = _class_folders(tmp_path / "src", 12, 12)
    _assert_one_line_error(_cli("prepare", src, "--out", tmp_path / "d", "--split", "0.9,0.2,0.1"), "sum to 1")


def test_symlinked_files_are_recorded_by_target_and_broken_links_rejected(tmp_path):
    src = _class_folders(tmp_path / "src", 6, 6)
    pool = _noise(tmp_path / "pool" / "shared.jpg", 777)
    (src / "real" / "link.jpg").symlink_to(pool)
    (src / "fake" / "dangling.jpg").symlink_to(tmp_path / "pool" / "gone.jpg")
    prepare(src, tmp_path / "data", progress=False)
    paths = {r.path for r in read_manifest(tmp_path / "data")}
    assert str(pool.resolve()) in paths and not any(p.endswith("link.jpg") for p in paths)
    rejected = _rejected(tmp_path / "data")
    assert rejected["gone.jpg"].startswith("unreadable: ")
