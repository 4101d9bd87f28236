"""The streaming folder walk: extensions, order, symlinks once and loops, errors, sharding, flat memory."""
import os
import sys

import pytest
from realfake.jobs.tasks.outputs.common import RESULT_COLUMNS
from realfake.jobs.tasks.outputs.writers import open_writer, read_rows
from realfake.pipelines import walk
from realfake.pipelines.walk import DirEntryInfo, Found, parse_shard, select_shard, shard_of, walk_images


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(root, **kw):
    return [f.rel for f in walk_images([root], **kw)]


def test_extensions_any_case_nested_sorted(tmp_path):
    for name in ["b.JPG", "a.jpeg", "c.Png", "d.bmp", "e.WebP", "f.gif", "g.txt", "noext", "sub/x.jpg",
                 "sub/deeper/y.PNG", "a dir/ünïcödé name.jpg", "sub/.hidden.jpg"]:
        touch(tmp_path / name)
    expected = ["a dir/ünïcödé name.jpg", "a.jpeg", "b.JPG", "c.Png", "d.bmp", "e.WebP",
                "sub/.hidden.jpg", "sub/deeper/y.PNG", "sub/x.jpg"]
    assert rels(tmp_path) == expected
    assert rels(tmp_path) == rels(tmp_path)  # deterministic
    found = list(walk_images([tmp_path]))
    assert all(f.error is None and os.path.isabs(f.path) and f.path == str(tmp_path / f.rel) for f in found)
    assert rels(tmp_path, recursive=False) == ["a.jpeg", "b.JPG", "c.Png", "d.bmp", "e.WebP"]


def test_symlinks_followed_once_and_loops_detected(tmp_path, caplog):
    touch(tmp_path / "data/a.jpg")
    touch(tmp_path / "data/inner/b.jpg")
    os.symlink(tmp_path / "data", tmp_path / "data/inner/loop")  # points back up: a loop
    os.symlink(tmp_path / "data/inner", tmp_path / "data/zz_again")  # a second way into inner
    os.symlink(tmp_path / "outside", tmp_path / "data/link_out")  # a link to a folder elsewhere
    touch(tmp_path / "outside/c.jpg")
    os.symlink(tmp_path / "data/a.jpg", tmp_path / "data/a_link.jpg")  # a file link is a file of its own
    assert rels(tmp_path / "data") == ["a.jpg", "a_link.jpg", "inner/b.jpg", "link_out/c.jpg"]
    assert "symlink loop" in caplog.text and "already walked" in caplog.text
    # the same folder given twice, or inside another given folder, is walked once
    assert [f.rel for f in walk_images([tmp_path / "data", tmp_path / "data/inner"])] == \
        ["a.jpg", "a_link.jpg", "inner/b.jpg", "link_out/c.jpg"]


def test_broken_link_and_special_file_are_errors_not_skipped(tmp_path):
    touch(tmp_path / "ok.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "broken.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block the decoder forever
    found = {f.rel: f.error for f in walk_images([tmp_path])}
    assert found == {"ok.jpg": None, "broken.jpg": "unreadable: broken symbolic link",
                     "pipe.jpg": "unreadable: not a regular file"}


def test_unreadable_directory_is_reported(tmp_path, monkeypatch):
    touch(tmp_path / "ok.jpg")
    touch(tmp_path / "locked/x.jpg")
    real_list_dir = walk.list_dir

    def list_dir(path):
        if path.endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_list_dir(path)

    monkeypatch.setattr(walk, "list_dir", list_dir)
    found = list(walk_images([tmp_path]))
    assert found == [Found(str(tmp_path / "locked"), "locked", "unreadable directory: Permission denied"),
                     Found(str(tmp_path / "ok.jpg"), "ok.jpg", None)]


def test_unreadable_directory_for_real(tmp_path):
    touch(tmp_path / "locked/x.jpg")
    os.chmod(tmp_path / "locked", 0)
    try:
        if os.access(tmp_path / "locked", os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop this user from reading")
        assert [(f.rel, f.error) for f in walk_images([tmp_path])] == \
            [("locked", "unreadable directory: Permission denied")]
    finally:
        os.chmod(tmp_path / "locked", 0o755)


def test_missing_folder_and_explicit_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(walk_images([tmp_path / "nope"]))
    named = touch(tmp_path / "photo.raw")  # named explicitly: taken whatever its extension
    assert list(walk_images([named])) == [Found(str(named), "photo.raw", None)]


@pytest.mark.parametrize("text, expected", [("0/3", (0, 3)), ("2/3", (2, 3)), (" 0/1", (0, 1)), (None, None)])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0", "1/2/3"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_shards_partition_and_are_stable():
    entries = [Found(f"/r/{i}.jpg", f"d{i % 7}/{i}.jpg") for i in range(3000)]
    per_shard = [[f.rel for f in select_shard(entries, (i, 3))] for i in range(3)]
    assert sorted(sum(per_shard, [])) == sorted(f.rel for f in entries)
    assert all(800 < len(s) < 1200 for s in per_shard)  # a hash, not a range: about 1/3 each
    # the shard depends on the relative path only: another mount point, another order, same shards
    moved = [Found("/elsewhere" + f.path, f.rel) for f in reversed(entries)]
    assert sorted(f.rel for f in select_shard(moved, (1, 3))) == sorted(per_shard[1])
    assert shard_of("d1/1.jpg", 3) == shard_of("d1/1.jpg", 3)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="measures memory through /proc (Linux)")
def test_million_files_stream_with_flat_memory(tmp_path, monkeypatch):
    """Walk + shard + writer over a generated listing of 1,000,000 files (1000 folders x 1000) without
    holding it: resident memory grows by far less than a list of the paths alone would take (~130 MB).
    (Resident size rather than tracemalloc, which would make this test 10x slower.)"""
    n_dirs = n_files = 1000
    root = str(tmp_path)

    def list_dir(path):
        if path == root:
            return [DirEntryInfo(f"d{i:04d}", "dir") for i in range(n_dirs)]
        return [DirEntryInfo(f"img_{j:04d}.jpg", "file") for j in range(n_files)]

    monkeypatch.setattr(walk, "list_dir", list_dir)
    monkeypatch.setattr(walk, "dir_key", lambda path: (0, hash(path)))
    out = tmp_path / "scores.csv"
    list_of_paths = n_dirs * n_files * (sys.getsizeof(os.path.join(root, "d0000", "img_0000.jpg")) + 8)
    writer = open_writer(out, RESULT_COLUMNS, resume=False)
    before = rss_bytes()
    growth = written = 0
    batch = []
    for found in select_shard(walk_images([root]), (0, 4)):
        written += 1
        batch.append({"path": found.path, "size": 1, "mtime": "2024-01-01T00:00:00.000000+00:00",
                      "p_fake": 0.25, "label": "real", "decision": "real", "reason": "", "threshold": 0.5,
                      "engine_id": "e"})
        if len(batch) == 5000:
            writer.write(batch)
            batch = []
            growth = max(growth, rss_bytes() - before)
    writer.write(batch)
    writer.close()
    assert 0.24 * n_dirs * n_files < written < 0.26 * n_dirs * n_files
    assert growth < 0.15 * list_of_paths, f"memory grew {growth / 1e6:.0f} MB: the walk holds what it yielded"
    assert sum(1 for _ in read_rows(out)) == written
