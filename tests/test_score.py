"""Folder scoring: every bad-input kind, names and folders, output formats, resume after a crash and after
a real kill -9, one engine per output, shards and merge, the command line and its exit codes."""
import csv
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _score_helpers import (
    FAST,
    LAUNCHER,
    build_engines,
    errors_of,
    make_good_folder,
    rows_of,
    save_image,
    write_bad_files,
)
from click.testing import CliRunner
from PIL import Image
from realfake.jobs.cli import main
from realfake.jobs.tasks.outputs.common import OutputMismatch
from realfake.jobs.tasks.outputs.parquet import parts_dir
from realfake.jobs.tasks.outputs.writers import open_writer, read_existing, read_rows
from realfake.jobs.tasks.score import concurrency, merge_outputs, run_score
from realfake.pipelines import images
from realfake.pipelines.provenance import usable_cores


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return build_engines(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def engine(engines):
    return engines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return root, make_good_folder(root, n=24)


def score(folders, out, engine, **kw):
    return run_score([str(f) for f in folders], out, engine=engine, **{**FAST, **kw})


# ----------------------------------------------------------------------------------------------- bad inputs

def mixed_folder(folder, monkeypatch):
    """12 good images, one file of every bad kind write_bad_files makes, and a decompression bomb for a
    lowered pixel limit (the good files are 40x40). Returns (good files, {bad path: expected reason})."""
    good_files = make_good_folder(folder, n=12)
    expected = {str(folder / name): reason for name, reason in write_bad_files(folder).items()}
    save_image(folder / "huge.jpg", np.random.default_rng(3), size=160)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    expected[str(folder / "huge.jpg")] = "too large"
    return good_files, expected


def test_every_bad_input_kind_is_one_error_row_and_the_run_goes_on(tmp_path, engine, monkeypatch):
    folder = tmp_path / "in"
    good_files, expected = mixed_folder(folder, monkeypatch)
    # unreadable: chmod 000 where that stops this user; as root it does not, so the open is made to fail
    locked = save_image(folder / "locked.jpg", np.random.default_rng(4))
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):
        real_open = open

        def open_denied(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(images, "open", open_denied, raising=False)
    expected[str(locked)] = "unreadable: Permission denied"

    out = tmp_path / "scores.csv"
    summary = score([folder], out, engine)
    assert errors_of(out) == expected
    assert summary["errors"] == len(expected) and summary["scored"] == len(good_files)
    assert summary["files"] == len(good_files) + len(expected)
    assert sorted(r["path"] for r in rows_of(out)) == sorted(str(p) for p in good_files)
    os.chmod(locked, 0o644)


@pytest.mark.dali
def test_dali_loader_gives_the_same_rows_and_reasons(tmp_path, engine, monkeypatch):
    pytest.importorskip("nvidia.dali", reason="needs NVIDIA DALI")
    folder = tmp_path / "in"
    good_files, expected = mixed_folder(folder, monkeypatch)
    torch_out, dali_out = tmp_path / "torch.csv", tmp_path / "dali.csv"
    score([folder], torch_out, engine)
    summary = score([folder], dali_out, engine, loader="dali", num_workers=1)
    assert summary["loader"] == "dali-cpu"
    dali_errors = errors_of(dali_out)
    # what a header or a decode shows is named the same way; DALI names its own decode failures
    for path, reason in expected.items():
        if reason in ("truncated", "corrupt"):
            assert path in dali_errors or path in {r["path"] for r in rows_of(dali_out)}
        else:
            assert dali_errors[path] == reason, path
    by_path = {r["path"]: r["p_fake"] for r in rows_of(torch_out)}
    dali_rows = {r["path"]: r["p_fake"] for r in rows_of(dali_out)}
    for path in map(str, good_files):
        assert abs(dali_rows[path] - by_path[path]) < 0.05, path


@pytest.mark.dali
def test_dali_prepares_the_next_chunk_while_one_is_scored_and_loses_nothing(tmp_path, engine, monkeypatch):
    import threading

    pytest.importorskip("nvidia.dali", reason="needs NVIDIA DALI")
    from realfake.jobs.tasks.score import scorer as score_module
    from realfake.pipelines import dali_loader

    folder = tmp_path / "in"
    good_files, expected = mixed_folder(folder, monkeypatch)
    monkeypatch.setattr(score_module, "FIRST_CHUNK_FILES", 4)
    monkeypatch.setattr(score_module, "CHUNK_FILES", 6)
    prepared, alive, most_alive, lock = [], set(), [0], threading.Lock()
    second_prepared = threading.Event()
    real_prepare, real_iter = dali_loader.DaliLoader.prepare, dali_loader.DaliLoader.__iter__

    def prepare(self):
        real_prepare(self)
        with lock:
            prepared.append(self)
            alive.add(id(self))
            most_alive[0] = max(most_alive[0], len(alive))
        if len(prepared) == 2:
            second_prepared.set()

    def iterate(self):
        assert self in prepared  # prepared in the prepare thread before its turn
        if len(prepared) == 1 or self is prepared[0]:
            # the first chunk is held until the second is ready: serial code would time out here
            assert second_prepared.wait(timeout=20), "the next chunk was not prepared while one was in use"
        yield from real_iter(self)
        with lock:
            alive.discard(id(self))

    monkeypatch.setattr(dali_loader.DaliLoader, "prepare", prepare)
    monkeypatch.setattr(dali_loader.DaliLoader, "__iter__", iterate)
    out = tmp_path / "dali.csv"
    summary = score([folder], out, engine, loader="dali", num_workers=1)
    assert len(prepared) >= 3 and most_alive[0] == 2  # one chunk ahead, never more
    rows, errors = [r["path"] for r in rows_of(out)], errors_of(out)
    assert len(rows) == len(set(rows)) and not set(rows) & set(errors)  # each file once
    assert set(rows) | set(errors) == {str(p) for p in good_files} | set(expected)
    assert summary["scored"] == len(rows) and summary["errors"] == len(errors)


def test_names_cases_nesting_and_symlink_loop(tmp_path, engine, good):
    root, files = good
    folder = tmp_path / "tree"
    shutil.copytree(root, folder)
    os.symlink(folder, folder / "sub" / "loop")  # back to the top: must not score anything twice
    out = tmp_path / "scores.jsonl"
    summary = score([folder], out, engine)
    paths = [r["path"] for r in rows_of(out)]
    assert sorted(paths) == sorted(str(folder / p.relative_to(root)) for p in files)
    assert summary == {**summary, "files": len(files), "scored": len(files), "errors": 0}
    assert any("ñandú façade.jpg" in p for p in paths) and any(p.endswith("UPPER.JPG") for p in paths)
    non_recursive = score([folder], tmp_path / "top.csv", engine, recursive=False)
    assert non_recursive["scored"] == sum(1 for p in files if p.parent == root)


def test_a_file_named_and_in_a_folder_named_is_scored_once(tmp_path, engine, good):
    root, files = good
    summary = score([root, files[0], root / "sub"], tmp_path / "scores.csv", engine)
    assert summary["scored"] == len(files) and len(rows_of(tmp_path / "scores.csv")) == len(files)


def test_a_failing_walk_stops_the_run_and_keeps_the_rows(tmp_path, engine, good, monkeypatch):
    import torch
    from realfake.jobs.tasks.score import files as walk
    from realfake.jobs.tasks.score import scorer as score_module

    root, files = good
    real_walk = walk.walk_images

    def failing_walk(*args, **kwargs):
        for i, found in enumerate(real_walk(*args, **kwargs)):
            if i == 20:
                raise OSError(5, "Input/output error")
            yield found

    monkeypatch.setattr(walk, "walk_images", failing_walk)
    monkeypatch.setattr(score_module, "CHUNK_FILES", 8)
    threads = torch.get_num_threads()
    out = tmp_path / "scores.parquet"
    with pytest.raises(OSError, match="Input/output error"):
        score([root], out, engine)
    assert torch.get_num_threads() == threads  # the engine's thread setting is undone
    assert 8 <= len(rows_of(out)) <= 20 and not parts_dir(out).exists()  # what was scored is kept, combined
    monkeypatch.setattr(walk, "walk_images", real_walk)
    summary = score([root], out, engine)
    assert summary["skipped"] + summary["scored"] == len(files) == len(rows_of(out))


def test_a_failure_mid_run_stops_every_helper_thread_while_the_walk_is_still_going(tmp_path, engine, good,
                                                                                  monkeypatch):
    import threading

    from realfake.engines.runtime import Engine
    from realfake.jobs.tasks.score import files as walk
    from realfake.jobs.tasks.score import scorer as score_module

    root, files = good
    real_walk, real_predict = walk.walk_images, Engine.predict

    def slow_walk(*args, **kwargs):
        for i, found in enumerate(real_walk(*args, **kwargs)):
            if i >= 16:
                time.sleep(1.0)  # a big folder: the walk is still going when the engine fails
            yield found

    def failing_predict(self, images, chunk_size=None):
        if failing_predict.calls == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        failing_predict.calls += 1
        return real_predict(self, images, chunk_size)

    failing_predict.calls = 0
    monkeypatch.setattr(walk, "walk_images", slow_walk)
    monkeypatch.setattr(Engine, "predict", failing_predict)
    monkeypatch.setattr(score_module, "CHUNK_FILES", 8)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        score([root], tmp_path / "scores.csv", engine)
    # the walk and the loader-preparing threads are gone (the latter used to wait on the walk forever)
    assert [t.name for t in threading.enumerate() if t.name.startswith("score-")] == []
    assert len(rows_of(tmp_path / "scores.csv")) == 8  # the first chunk's rows are kept


def test_engine_slices_are_tuned_on_the_first_batches(monkeypatch):
    import types

    import torch

    clock = [0.0]
    cost_per_image = {8: 3.0, 16: 2.0, 32: 4.0, 64: 5.0}  # slice size -> seconds per image (fake clock)
    seen = []

    def predict(images, chunk_size):  # Engine.predict's contract: runs the images in chunks
        for start in range(0, images.shape[0], chunk_size):
            seen.append(min(chunk_size, images.shape[0] - start))
        clock[0] += cost_per_image[slice_in_use[0]] * images.shape[0]
        return images.mean(dim=(1, 2, 3))

    slice_in_use = [64]
    monkeypatch.setattr(concurrency, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    slices = concurrency.MicroBatches(predict, 64, "cpu")
    assert slices.candidates == [64, 32, 16, 8]
    images = torch.randn(64, 3, 4, 4)
    for size in [64, 64, 32, 16, 8]:  # warm-up, then one batch per candidate
        slice_in_use[0] = size
        seen.clear()
        assert torch.allclose(slices(images), images.mean(dim=(1, 2, 3)))  # same values, in order
        assert set(seen) == {size}
    assert slices.best == 16
    seen.clear()
    slices(images[:40])
    assert seen == [16, 16, 8]
    assert concurrency.MicroBatches(predict, 64, "cuda").candidates == [64]


def test_rows_hold_path_size_mtime_p_fake_label_threshold_engine(tmp_path, engine, good):
    root, files = good
    out = tmp_path / "scores.csv"
    summary = score([root], out, engine)
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["path", "size", "mtime", "p_fake", "label", "decision", "reason", "threshold", "engine_id"]
    for row in rows_of(out):
        st = os.stat(row["path"])
        assert row["size"] == st.st_size and row["mtime"].endswith("+00:00")
        assert abs(dt.datetime.fromisoformat(row["mtime"]).timestamp() - st.st_mtime) < 1e-5
        assert 0.0 <= row["p_fake"] <= 1.0 and row["threshold"] == summary["threshold"]
        assert row["label"] == ("fake" if row["p_fake"] >= row["threshold"] else "real")
        assert row["decision"] == row["label"] and row["reason"] == ""  # a pixel engine decides every file
        assert row["engine_id"] == summary["engine_id"]
    assert summary["decisions"] == {"real": sum(r["decision"] == "real" for r in rows_of(out)),
                                    "fake": sum(r["decision"] == "fake" for r in rows_of(out)), "unknown": 0}


# ----------------------------------------------------------------------------------------------- formats

def test_each_output_format_round_trips(tmp_path, engine, good):
    root, files = good
    results = {}
    for suffix in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"scores.{suffix}"
        score([root], out, engine)
        results[suffix] = rows_of(out)
        assert not parts_dir(out).exists()  # Parquet parts combined at the end
    assert len(results["csv"]) == len(files)
    assert results["csv"] == results["jsonl"] == results["parquet"]
    assert all(isinstance(r["size"], int) and isinstance(r["p_fake"], float) for r in results["parquet"])


def test_out_without_suffix_is_a_folder_and_unknown_suffix_is_refused(tmp_path, engine, good):
    root, _ = good
    summary = score([root], tmp_path / "job" / "out", engine)
    assert summary["out"] == str(tmp_path / "job" / "out" / "scores.csv")
    with pytest.raises(ValueError, match="unknown output format '.txt'"):
        score([root], tmp_path / "scores.txt", engine)


# ----------------------------------------------------------------------------------------------- resume

@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_resume_after_a_torn_last_line(tmp_path, engine, good, suffix):
    root, files = good
    out = tmp_path / f"scores.{suffix}"
    score([root], out, engine)
    full = rows_of(out)
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    # a crash: the last 5 rows never written, the one before them torn in the middle
    out.write_bytes(b"".join(lines[:-6]) + lines[-6][: len(lines[-6]) // 2])
    summary = score([root], out, engine)
    assert summary["scored"] == 6 and summary["skipped"] == len(files) - 6 and summary["repaired_bytes"] > 0
    again = rows_of(out)
    assert sorted(r["path"] for r in again) == sorted(r["path"] for r in full)
    assert len({r["path"] for r in again}) == len(again) == len(files)


def test_resume_refuses_a_file_damaged_in_the_middle_or_foreign(tmp_path, engine, good):
    root, _ = good
    out = tmp_path / "scores.csv"
    score([root], out, engine)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3] + [b"garbage line\n"] + lines[3:]))
    with pytest.raises(OutputMismatch, match="damaged at byte"):
        score([root], out, engine)
    foreign = tmp_path / "mine.csv"
    foreign.write_text("name,value\na,1\n")
    with pytest.raises(OutputMismatch, match="not those of a score output .*: choose another --out$"):
        score([root], foreign, engine)
    assert foreign.read_text() == "name,value\na,1\n"  # never truncated
    # given as an input instead, the same file is refused with the fix for an input
    with pytest.raises(OutputMismatch, match="not those of a score output .*: merge only the outputs of `realfake"):
        merge_outputs(tmp_path / "m.csv", [str(foreign)])
    assert not (tmp_path / "m.csv").exists()


def test_parquet_resume_after_a_crash_before_and_during_the_combine(tmp_path, engine, good):
    root, files = good
    out = tmp_path / "scores.parquet"
    score([root], out, engine)
    full = sorted(r["path"] for r in rows_of(out))
    # crash 1: a run that wrote two parts and was killed (no combine)
    out.unlink()
    writer = open_writer(out, resume=True)
    some = [r for r in rows_of_all(tmp_path, root, engine)][:10]
    writer.write(some[:4])
    writer.write(some[4:10])
    (parts_dir(out) / "part-000002.parquet.tmp").write_bytes(b"half a part")  # killed mid-write
    assert len(rows_of(out)) == 10 and not out.exists()
    summary = score([root], out, engine)
    assert summary["skipped"] == 10 and summary["scored"] == len(files) - 10
    assert sorted(r["path"] for r in rows_of(out)) == full and not parts_dir(out).exists()
    # crash 2: killed after the combined file was renamed into place but before its parts were deleted
    parts_dir(out).mkdir()
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(out).slice(0, 3), parts_dir(out) / "part-000000.parquet")
    assert len(rows_of(out)) == len(files)  # part 0 is older than what OUT holds: not counted twice
    summary = score([root], out, engine)
    assert summary["scored"] == 0 and len(rows_of(out)) == len(files) and not parts_dir(out).exists()


def rows_of_all(tmp_path, root, engine):
    out = tmp_path / "reference.csv"
    if not out.exists():
        score([root], out, engine)
    return rows_of(out)


def test_rerun_retries_errors_and_replaces_their_rows(tmp_path, engine):
    folder = tmp_path / "in"
    make_good_folder(folder, n=5)
    (folder / "late.jpg").write_bytes(b"")  # still being copied when the first run comes
    out = tmp_path / "scores.csv"
    first = score([folder], out, engine)
    assert first["errors"] == 1 and errors_of(out) == {str(folder / "late.jpg"): "empty file"}
    second = score([folder], out, engine)  # still bad: listed once, not twice
    assert second["errors"] == 1 and second["retried_errors"] == 1 and len(errors_of(out)) == 1
    save_image(folder / "late.jpg", np.random.default_rng(9))
    third = score([folder], out, engine)
    assert third["scored"] == 1 and third["errors"] == 0 and errors_of(out) == {}
    assert len(rows_of(out)) == 6


def test_no_resume_replaces_the_output(tmp_path, engine, good):
    root, files = good
    out = tmp_path / "scores.csv"
    score([root], out, engine)
    summary = score([root], out, engine, resume=False)
    assert summary["scored"] == len(files) and len(rows_of(out)) == len(files)


def test_another_engine_is_refused(tmp_path, engines, good):
    root, files = good
    first, second = engines
    out = tmp_path / "scores.csv"
    score([root], out, first)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="holds scores of engine .* but this run uses engine"):
        score([root], out, second)
    assert out.read_bytes() == before
    result = CliRunner().invoke(main, ["score", str(root), "--out", str(out), "--engine", str(second),
                                       "--loader", "torch", "--num-workers", "0", "--no-progress"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "another --out" in result.output
    replaced = score([root], out, second, resume=False)
    assert replaced["scored"] == len(files)
    assert {r["engine_id"] for r in rows_of(out)} == {replaced["engine_id"]}


# ----------------------------------------------------------------------------------------------- kill -9

@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_loses_nothing_and_doubles_nothing(tmp_path, engine):
    # CSV here; a kill in the middle of a Parquet part or combine is simulated in the Parquet test above
    # (what it leaves -- a .tmp part, parts already combined -- is what the reader must survive).
    suffix = "csv"
    folder = tmp_path / "in"
    files = make_good_folder(folder, n=300, seed=5)
    out = tmp_path / f"scores.{suffix}"
    command = [sys.executable, "-c", LAUNCHER, "score", str(folder), "--out", str(out), "--engine", str(engine),
               "--loader", "torch", "--num-workers", "0", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        written = sum(1 for _ in read_rows(out)) if out.exists() or parts_dir(out).exists() else 0
        if written >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = rows_of(out)
    assert 20 <= len(before) < len(files)
    assert len({r["path"] for r in before}) == len(before)
    summary = score([folder], out, engine)
    after = rows_of(out)
    assert summary["skipped"] == len(before) and summary["scored"] == len(files) - len(before)
    assert len(after) == len(files) and sorted(r["path"] for r in after) == sorted(map(str, files))


# ----------------------------------------------------------------------------------------------- shards

def test_shards_cover_everything_once_and_merge_joins_them(tmp_path, engine):
    folder = tmp_path / "in"
    files = make_good_folder(folder, n=30, seed=6)
    bad = write_bad_files(folder)
    whole = tmp_path / "whole.csv"
    score([folder], whole, engine)
    outs, seen = [], []
    for i, suffix in enumerate(["csv", "jsonl", "parquet"]):
        out = tmp_path / f"shard{i}.{suffix}"
        summary = score([folder], out, engine, shard=f"{i}/3")
        assert 0 < summary["files"] < len(files)
        seen += [r["path"] for r in rows_of(out)] + list(errors_of(out))
        outs.append(out)
    assert sorted(seen) == sorted([str(p) for p in files] + [str(folder / n) for n in bad])
    merged = tmp_path / "merged.parquet"
    result = merge_outputs(merged, [str(o) for o in outs])
    assert result["rows"] == len(files) and result["errors"] == len(bad)
    reference = {r["path"]: r for r in rows_of(whole)}
    merged_rows = {r["path"]: r for r in rows_of(merged)}
    assert merged_rows.keys() == reference.keys()
    for path, row in merged_rows.items():  # other batches, so p_fake may differ in the last float bits
        assert {**row, "p_fake": None} == {**reference[path], "p_fake": None}
        assert row["p_fake"] == pytest.approx(reference[path]["p_fake"], abs=1e-5)
    assert errors_of(merged) == errors_of(whole)
    copy = shutil.copy(outs[0], tmp_path / "copy.csv")
    with pytest.raises(ValueError, match="overlap"):
        merge_outputs(tmp_path / "twice.csv", [str(outs[0]), str(copy)])
    runner = CliRunner().invoke(main, ["score", "merge", str(tmp_path / "m.jsonl"), *map(str, outs)])
    assert runner.exit_code == 0, runner.output
    assert len(rows_of(tmp_path / "m.jsonl")) == len(files)


def test_merge_refuses_two_engines(tmp_path, engines, good):
    root, _ = good
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    score([root], a, engines[0], shard="0/2")
    score([root], b, engines[1], shard="1/2")
    with pytest.raises(ValueError, match="merge only the shards of one engine"):
        merge_outputs(tmp_path / "m.csv", [str(a), str(b)])
    assert not (tmp_path / "m.csv").exists()


# ----------------------------------------------------------------------------------------------- CLI

def cli(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)], prog_name="realfake")


def test_cli_exit_codes_and_summary(tmp_path, engine, good):
    root, files = good
    options = ["--engine", engine, "--loader", "torch", "--num-workers", "0", "--no-progress"]
    ok = cli(root, "--out", tmp_path / "a.csv", *options)
    assert ok.exit_code == 0, ok.output
    counts = re.search(r"files (\d+)  scored (\d+) \(real (\d+)  fake (\d+)  unknown (\d+)\)  skipped 0 ", ok.output)
    assert counts and "img/s" in ok.output, ok.output
    found, scored, *decisions = map(int, counts.groups())
    assert found == scored == len(files) == sum(decisions)
    bad_folder = tmp_path / "bad"
    write_bad_files(bad_folder)
    with_errors = cli(root, bad_folder, "--out", tmp_path / "b.csv", "--json", *options)
    assert with_errors.exit_code == 1
    summary = json.loads(with_errors.output)
    assert summary["errors"] == 6 and summary["scored"] == len(files)
    assert cli(tmp_path / "missing", "--out", tmp_path / "c.csv", *options).exit_code == 2
    usage = cli(root, "--out", tmp_path / "d.csv", "--shard", "3/3", *options)
    assert usage.exit_code == 2 and "error: --shard '3/3' is out of range" in usage.output
    (tmp_path / "no-images").mkdir()
    (tmp_path / "no-images" / "notes.txt").write_text("not an image")
    nothing = cli(tmp_path / "no-images", "--out", tmp_path / "e.csv", *options)
    assert nothing.exit_code == 0 and "files 0  scored 0" in nothing.stdout
    assert f"warning: no image files (.jpg, .jpeg, .png, .bmp, .webp, any letter case) under {tmp_path / 'no-images'}" \
        in nothing.stderr


def test_without_engine_the_promoted_one_is_used(tmp_path, engine, good, monkeypatch):
    from realfake.engines.registry import promote_engine

    root, files = good
    monkeypatch.setenv("REALFAKE_HOME", str(tmp_path / "home"))
    options = ["--loader", "torch", "--num-workers", "0", "--no-progress"]
    missing = cli(root, "--out", tmp_path / "a.csv", *options)
    assert missing.exit_code == 2 and "error: no engine promoted" in missing.output
    promote_engine(engine, tmp_path / "home")
    promoted = cli(root, "--out", tmp_path / "a.csv", "--json", *options)
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.output)["engine"] == str(engine) and len(rows_of(tmp_path / "a.csv")) == len(files)


def test_cli_help_shows_scoring_and_merge():
    result = cli("--help")
    assert result.exit_code == 0
    for text in ("realfake score [OPTIONS] FOLDER...", "merge OUT SHARD_OUTPUT...", "--out", "--engine",
                 "--recursive / --no-recursive", "--resume / --no-resume", "--shard", "Exit codes", "130"):
        assert text in result.output, text
    merge_help = cli("merge", "--help")
    assert merge_help.exit_code == 0 and "Join the outputs" in merge_help.output
    # a usage error names the command as typed, and its hint is a command that works
    bad_option = cli("--bogus", "folder")
    assert bad_option.exit_code == 2 and "score folders" not in bad_option.output
    assert "Usage: realfake score [OPTIONS] FOLDERS..." in bad_option.output
    assert "Try 'realfake score --help' for help." in bad_option.output


def test_job_spec_accepts_score(tmp_path, good):
    from realfake.jobs.service.spec import validate_spec

    root, _ = good
    spec = validate_spec("score", {"folders": [root.name], "batch_size": 16}, base_dir=root.parent)
    assert spec.args["folders"] == [str(root)] and spec.default_out == "out"
    written = read_existing(tmp_path / "nothing.csv")
    assert written.rows == 0


def test_engine_threads_are_the_requested_ones_during_the_run_and_restored_after(tmp_path, monkeypatch, good,
                                                                                 engine):
    import torch

    root, files = good
    seen = []  # torch's thread count at each engine call
    real_run = concurrency.MicroBatches._run

    def counting_run(self, images, size):
        seen.append(torch.get_num_threads())
        return real_run(self, images, size)

    monkeypatch.setattr(concurrency.MicroBatches, "_run", counting_run)
    threads = torch.get_num_threads()
    summary = score([root], tmp_path / "scores.csv", engine, engine_threads=3)
    assert summary["engine_threads"] == 3 and set(seen) == {3} and summary["scored"] == len(files)
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="--engine-threads -1"):
        score([root], tmp_path / "other.csv", engine, engine_threads=-1)


def test_engine_threads_default_to_the_cores_the_decoders_leave():
    import torch

    cores = usable_cores()
    assert concurrency.choose_engine_threads("cpu", 2, requested=5) == 5
    assert concurrency.choose_engine_threads("cuda:0", 2, requested=5) == 1  # one thread launches kernels
    auto = concurrency.choose_engine_threads("cpu", 2)
    assert auto == max(1, min(torch.get_num_threads(), cores - 2))
    assert concurrency.choose_engine_threads("cpu", cores + 4) == 1  # never below one

# ----------------------------------------------------------------------------------------------- benchmark

def test_score_suite_measures_both_sides_on_a_tiny_folder(tmp_path, monkeypatch, engine):
    from realfake.benchmarks import suite_score

    # the fixture's engine (simple_cnn at 32 px) stands for the cached one: building engines is not the point
    monkeypatch.setattr(suite_score, "cached_engine", lambda *args: engine)
    files = [str(p) for p in make_good_folder(tmp_path / "images", n=12)]
    cfg = suite_score.ScoreSuiteConfig(models=("simple_cnn",), n_files=12, repeats=1, batch_size=8, workers=0,
                                       image_size=32, variants=(suite_score.Variant("eager-torch", "eager", "torch"),))
    figures = suite_score.model_figures("simple_cnn", suite_score.class_folder(files), 12, "test", cfg, "cpu")
    names = [f.name for f in figures]
    prefix = "score/e2e@32/simple_cnn"
    assert names == [f"{prefix}/naive", f"{prefix}/naive/cpu_ms_per_img", f"{prefix}/naive/cores_busy",
                     f"{prefix}/eager-torch", f"{prefix}/eager-torch_vs_naive",
                     f"{prefix}/eager-torch/cpu_ms_per_img", f"{prefix}/eager-torch/cores_busy"]
    by_name = {f.name: f for f in figures}
    assert all(f.median > 0 for f in figures) and by_name[f"{prefix}/eager-torch_vs_naive"].ratio_to == names[0]
    assert by_name[f"{prefix}/naive"].params["loader"].startswith("ImageFolder")
    assert by_name[f"{prefix}/eager-torch"].params["loader"] == "torch"
    cpu = by_name[f"{prefix}/eager-torch/cpu_ms_per_img"]
    assert cpu.unit == "ms" and not cpu.higher_is_better
    # workers=0: everything runs in this process, so its CPU time cannot exceed wall time x threads
    import torch
    assert 0 < by_name[f"{prefix}/naive/cores_busy"].median <= torch.get_num_threads() + 1
