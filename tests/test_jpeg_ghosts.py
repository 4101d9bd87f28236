"""JPEG ghost maps (pipelines/jpeg_ghosts.py) and the ghost_cnn model end to end: train, evaluate,
engine, score."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import make_ghost_prepared
from PIL import Image, ImageOps
from realfake.pipelines import jpeg_ghosts
from realfake.pipelines.images import InvalidImageError
from realfake.pipelines.loaders import get_loader


def _jpeg(path: Path, size=(96, 96), seed=0, **save) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG", **save)
    return path


def test_maps_have_one_cell_per_block_and_centred_planes(tmp_path):
    maps = jpeg_ghosts.ghost_maps(_jpeg(tmp_path / "a.jpg", quality=90), 96)
    assert maps.shape == (jpeg_ghosts.CHANNELS, 12, 12) == (33, 12, 12)
    assert np.abs(maps.mean(axis=(1, 2))).max() < 1e-4
    # Re-saved with its own tables, the file changes least: its "keep" luma error is below quality 50's.
    raw = jpeg_ghosts.raw_maps(tmp_path / "a.jpg", 96)
    assert raw[0].mean() < raw[3].mean()


def test_a_region_compressed_twice_shows_in_the_maps(tmp_path):
    # A 32 px square that went through quality 40 before the whole image was saved at 90 (a paste from
    # another JPEG) changes less than the rest when re-saved at 50-80: the ghost.
    rng = np.random.default_rng(3)
    noise = rng.normal(128, 40, size=(12, 12, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise).resize((96, 96), Image.BICUBIC)
    image.save(tmp_path / "real.jpg", quality=90)
    image.save(tmp_path / "q40.jpg", quality=40)
    image.paste(Image.open(tmp_path / "q40.jpg").convert("RGB").crop((32, 32, 64, 64)), (32, 32))
    image.save(tmp_path / "fake.jpg", quality=90)

    def square_minus_rest(name):  # luma at quality 50, 60 and 70
        maps = jpeg_ghosts.ghost_maps(tmp_path / name, 96)[[3, 9, 15]]
        square = maps[:, 4:8, 4:8].mean()
        return square - (maps.sum() - maps[:, 4:8, 4:8].sum()) / (maps.size - maps[:, 4:8, 4:8].size)

    assert square_minus_rest("fake.jpg") < -0.5
    assert abs(square_minus_rest("real.jpg")) < 0.3


def test_large_images_are_centre_cropped_and_small_ones_padded(tmp_path):
    big = jpeg_ghosts.ghost_maps(_jpeg(tmp_path / "big.jpg", (200, 136)), 96)
    assert big.shape == (33, 12, 12) and np.count_nonzero(big[:, 0, :]) > 0
    small = jpeg_ghosts.ghost_maps(_jpeg(tmp_path / "small.jpg", (48, 40)), 96)
    assert small.shape == (33, 12, 12)
    # 6x5 cells of maps in the middle, zeros (the centred mean) around them
    assert not small[:, :3].any() and not small[:, 8:].any() and not small[:, :, :3].any()
    assert np.count_nonzero(small[:, 3:8, 3:9]) > 0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_maps_turn_like_the_pixels(orientation):
    cells = np.arange(6 * 4, dtype=np.float32).reshape(1, 6, 4)
    image = Image.fromarray(cells[0])
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(jpeg_ghosts._orient(cells, orientation)[0], expected)


def test_exif_rotated_jpeg_gives_maps_in_display_orientation(tmp_path):
    path = tmp_path / "rot.jpg"
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8))  # 128 wide, 64 high
    exif = image.getexif()
    exif[0x0112] = 6  # displayed 64 wide, 128 high
    image.save(path, format="JPEG", exif=exif.tobytes())
    assert jpeg_ghosts.raw_maps(path, 600).shape == (33, 16, 8)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image"),
    ("truncated", "truncated"),
    ("png", "not a JPEG"),
])
def test_bad_files_raise_one_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        path.write_bytes(_jpeg(tmp_path / "ok.jpg").read_bytes()[:600])
    elif content == "png":
        Image.new("RGB", (64, 64)).save(path, format="PNG")
    else:
        path.write_bytes(content)
    with pytest.raises(InvalidImageError) as info:
        jpeg_ghosts.ghost_maps(path, 96)
    assert info.value.reason == reason


def test_cache_is_written_whole_and_read_back(tmp_path):
    files = [str(_jpeg(tmp_path / f"{i}.jpg", seed=i)) for i in range(3)]
    cache = jpeg_ghosts.cache_paths_for(tmp_path / "data", 96, ["a" * 64, "b" * 64, "c" * 64])
    first = next(iter(get_loader(files, None, train=False, input="ghosts", image_size=96, batch_size=8,
                                 num_workers=0, cache_paths=cache)))
    assert all(p.is_file() for p in cache) and not list(cache[0].parent.glob("*.tmp.npy"))
    for f in files:  # a second pass reads the maps, not the files
        Path(f).unlink()
    second = next(iter(get_loader(files, None, train=False, input="ghosts", image_size=96, batch_size=8,
                                  num_workers=0, cache_paths=cache)))
    assert second.errors == () and torch.equal(first.images, second.images)
    # a damaged or foreign cache file is computed again, not trusted (the files are back for that)
    for i in range(3):
        _jpeg(tmp_path / f"{i}.jpg", seed=i)
    cache[0].write_bytes(b"not numpy")
    np.save(cache[1], np.zeros((3, 4, 4), dtype=np.float16))
    third = next(iter(get_loader(files, None, train=False, input="ghosts", image_size=96, batch_size=8,
                                 num_workers=0, cache_paths=cache)))
    assert torch.equal(first.images, third.images)
    assert np.load(cache[0]).shape == np.load(cache[1]).shape == (33, 12, 12)


def test_train_loader_shuffles_and_flips_by_seed_and_epoch(tmp_path):
    files = [str(_jpeg(tmp_path / f"{i}.jpg", seed=i)) for i in range(6)]
    labels = [0, 1] * 3

    def epoch(seed, n):
        loader = get_loader(files, labels, train=True, input="ghosts", image_size=96, batch_size=3,
                            augment=object(), seed=seed, num_workers=0, progress=False)
        loader.set_epoch(n)
        return [b.images for b in loader], [b.indices for b in loader]

    images, indices = epoch(0, 1)
    again, again_indices = epoch(0, 1)
    assert all(torch.equal(a, b) for a, b in zip(images, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(indices, again_indices, strict=True))
    plain = jpeg_ghosts.ghost_maps(files[int(indices[0][0])], 96)
    first = images[0][0].numpy()
    assert np.allclose(first, plain, atol=2e-2) or np.allclose(first, plain[:, :, ::-1], atol=2e-2)
    other = epoch(0, 2)[1]
    assert any(not torch.equal(a, b) for a, b in zip(indices, other, strict=True))


def test_train_loader_shifts_whole_batches_by_whole_cells(tmp_path):
    files = [str(_jpeg(tmp_path / f"{i}.jpg", seed=i)) for i in range(4)]

    def batch(shift, epoch):
        loader = get_loader(files, [0, 1, 0, 1], train=True, input="ghosts", image_size=96, batch_size=4,
                            seed=1, num_workers=0, progress=False, ghost_shift=shift)  # no augment: no flips
        loader.set_epoch(epoch)
        (only,) = list(loader)
        return only

    offsets = []
    for epoch in range(4):
        plain, moved = batch(0, epoch), batch(2, epoch)
        assert torch.equal(plain.indices, moved.indices) and moved.images.shape == plain.images.shape
        padded = torch.nn.functional.pad(plain.images, (2, 2, 2, 2), mode="replicate")
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(padded[:, :, dy:dy + 12, dx:dx + 12], moved.images)]
        assert len(found) == 1
        offsets += found
    assert len(set(offsets)) > 1  # the draw changes with the epoch


def test_train_loader_names_a_file_without_maps(tmp_path):
    files = [str(_jpeg(tmp_path / "ok.jpg"))]
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    files.append(str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"x\.png: not a JPEG"):
        get_loader(files, [0, 1], train=True, input="ghosts", image_size=96, batch_size=2, num_workers=0,
                   progress=False)


def test_ghost_map_training_does_not_decode_with_dali(tmp_path):
    with pytest.raises(ValueError, match="ghost-map training does not decode with DALI"):
        get_loader([str(tmp_path / "a.jpg")], [0], train=True, input="ghosts", backend="dali", image_size=96)


@pytest.fixture(scope="module")
def ghost_run(tmp_path_factory):
    """ghost_cnn trained on make_ghost_prepared (12 train, 2 valid, 2 test a class at 96 px)."""
    from realfake.jobs.tasks.train import run_train

    root = tmp_path_factory.mktemp("ghosts")
    data_dir = make_ghost_prepared(root, n_per_class=16)
    summary = run_train(data_dir, model="ghost_cnn", image_size=96, epochs=12, batch_size=8, optimizer="adamw",
                        lr=2e-3, weight_decay=1e-3, schedule="onecycle", out=root / "runs", name="g", num_workers=0,
                        progress=False)
    return Path(summary["run_dir"]), data_dir


def test_ghost_cnn_learns_a_twice_compressed_region(ghost_run):
    from realfake.jobs.tasks.evaluate import run_evaluate

    run_dir, data_dir = ghost_run
    config = __import__("json").loads((run_dir / "config.json").read_text())
    assert config["input"] == "ghosts" and config["augment_spec"] == {"hflip_p": 0.5, "shift_cells": 0}
    assert len(list(jpeg_ghosts.cache_folder(data_dir, 96).glob("*.npy"))) == 28  # train + valid
    report = run_evaluate(run_dir, split="train", tta="flip", num_workers=0, progress=False)
    assert report["roc_auc"] >= 0.9
    with pytest.raises(ValueError, match="use --tta flip"):
        run_evaluate(run_dir, tta="crops", progress=False)


def test_ghost_shift_is_for_ghost_maps_only(tmp_path, ghost_run):
    from realfake.jobs.tasks.train import run_train

    with pytest.raises(ValueError, match="--ghost-shift moves JPEG ghost maps"):
        run_train(ghost_run[1], model="simple_cnn", epochs=1, ghost_shift=2, out=tmp_path, progress=False)


@pytest.mark.parametrize("option", [{"pseudo_fakes": 0.5}, {"train_crop": 64}])
def test_pixel_options_are_refused_for_ghost_maps(tmp_path, ghost_run, option):
    from realfake.jobs.tasks.train import run_train

    with pytest.raises(ValueError, match="reads JPEG ghost maps, not pixels"):
        run_train(ghost_run[1], model="ghost_cnn", image_size=96, epochs=1, out=tmp_path, progress=False, **option)


@pytest.mark.parametrize(("option", "message"), [
    ({"cache": "memory"}, "held in memory .* anyway: drop --cache memory"),
    ({"cache": "gpu", "device": "cpu"}, "--cache gpu needs a CUDA device"),
])
def test_caches_the_ghost_maps_cannot_use_are_refused(tmp_path, ghost_run, option, message):
    from realfake.jobs.tasks.train import run_train

    with pytest.raises(ValueError, match=message):
        run_train(ghost_run[1], model="ghost_cnn", image_size=96, epochs=1, out=tmp_path, progress=False, **option)


def test_ghost_engine_scores_jpegs_and_records_other_files_as_errors(ghost_run, tmp_path):
    import csv

    from realfake.engines.build import build_engine
    from realfake.engines.runtime import load_engine
    from realfake.jobs.tasks.score import run_score

    run_dir, data_dir = ghost_run
    engine_dir = build_engine(run_dir, tmp_path / "engine", backend="aot", threshold="auto", num_workers=0)
    engine = load_engine(engine_dir)
    assert engine.meta["input"] == "ghosts" and engine.input_shape == (33, 12, 12)
    with pytest.raises(ValueError, match=r"JPEG ghost maps of shape \(N, 33, 12, 12\)"):
        engine.predict(torch.zeros(1, 3, 96, 96))
    folder = tmp_path / "folder"
    shutil.copytree(data_dir.parent / "images", folder)
    Image.new("RGB", (96, 96)).save(folder / "drawing.png")
    summary = run_score([folder], tmp_path / "scores.csv", engine=engine_dir, num_workers=0, progress=False)
    assert (summary["files"], summary["scored"], summary["errors"]) == (33, 32, 1)
    errors = list(csv.DictReader(open(summary["errors_file"])))
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("drawing.png", "not a JPEG")]
    rows = list(csv.DictReader(open(summary["out"])))
    p = {Path(r["path"]).name: float(r["p_fake"]) for r in rows}
    assert np.mean([v for k, v in p.items() if k.startswith("fake")]) > np.mean(
        [v for k, v in p.items() if k.startswith("real")])


def test_an_ensemble_of_runs_averages_their_p_fake(ghost_run, tmp_path):
    from realfake.engines.build import build_engine
    from realfake.engines.runtime import load_engine
    from realfake.jobs.tasks.evaluate import run_evaluate
    from realfake.jobs.tasks.train import run_train

    run_dir, data_dir = ghost_run
    other = Path(run_train(data_dir, model="ghost_cnn", image_size=96, epochs=2, batch_size=8, seed=1,
                           out=tmp_path, name="seed1", num_workers=0, progress=False)["run_dir"])
    p = {}
    for name, run in (("a", run_dir), ("b", other)):
        summary = run_evaluate(run, split="valid", tta="flip", num_workers=0, progress=False)
        p[name] = {r["path"]: r["p_fake"] for r in json.loads((Path(summary["run_dir"]) / "report_valid.json")
                                                              .read_text())["predictions"]}
    summary = run_evaluate(run_dir, split="valid", tta="flip", ensemble=[other], num_workers=0, progress=False)
    assert summary["ensemble"] == [str(run_dir), str(other)] and summary["report"].endswith("report_valid_ensemble.md")
    both = json.loads((run_dir / "report_valid_ensemble.json").read_text())["predictions"]
    for row in both:
        assert row["p_fake"] == pytest.approx((p["a"][row["path"]] + p["b"][row["path"]]) / 2, abs=1e-6)

    engine_dir = build_engine(run_dir, tmp_path / "engine", backend="eager", ensemble=[other], num_workers=0)
    with load_engine(engine_dir) as engine:
        assert engine.meta["members"] == 2 and len(engine.meta["source"]["ensemble"]) == 2
        maps = torch.randn(3, 33, 12, 12)
        from realfake.engines.trainer import load_run

        singles = [torch.softmax(load_run(r)[0](maps), 1)[:, 1] for r in (run_dir, other)]
        assert torch.allclose(engine.predict(maps), (singles[0] + singles[1]) / 2, atol=1e-5)

    bigger = Path(run_train(data_dir, model="ghost_cnn", image_size=128, epochs=1, batch_size=8, out=tmp_path,
                            name="128px", num_workers=0, progress=False)["run_dir"])
    with pytest.raises(ValueError, match="its image_size differs"):
        run_evaluate(run_dir, ensemble=[bigger], progress=False)


def test_width_is_recorded_and_rebuilt_by_evaluate_ensembles_and_engines(ghost_run, tmp_path):
    from realfake.engines.build import build_engine
    from realfake.engines.runtime import load_engine
    from realfake.engines.trainer import load_run, load_runs
    from realfake.jobs.tasks.train import run_train
    from realfake.models import build_model

    assert sum(p.numel() for p in build_model("ghost_cnn", image_size=96, width=8).parameters()) < \
        sum(p.numel() for p in build_model("ghost_cnn", image_size=96).parameters())
    with pytest.raises(ValueError, match="ghost_cnn only"):
        build_model("simple_cnn", width=8)
    run_dir, data_dir = ghost_run
    narrow = Path(run_train(data_dir, model="ghost_cnn", image_size=96, epochs=1, batch_size=8, width=8,
                            out=tmp_path, name="w8", num_workers=0, progress=False)["run_dir"])
    assert json.loads((narrow / "config.json").read_text())["width"] == 8
    model, _, _ = load_run(narrow)
    assert model.fc.in_features == 4 * 8
    with pytest.raises(ValueError, match="its width differs"):
        load_runs([run_dir, narrow])
    engine_dir = build_engine(narrow, tmp_path / "engine", backend="eager", num_workers=0)
    with load_engine(engine_dir) as engine:
        assert engine.meta["width"] == 8
        maps = torch.randn(2, 33, 12, 12)
        assert torch.allclose(engine.predict(maps), torch.softmax(model(maps), 1)[:, 1], atol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "aot"])
def test_an_engine_built_with_flip_tta_averages_each_image_and_its_mirror(ghost_run, tmp_path, backend):
    from realfake.engines.build import build_engine
    from realfake.engines.runtime import load_engine
    from realfake.engines.trainer import load_run

    run_dir, _ = ghost_run
    engine_dir = build_engine(run_dir, tmp_path / "engine", backend=backend, tta="flip", threshold="auto",
                              num_workers=0)
    model = load_run(run_dir)[0]
    maps = torch.randn(3, 33, 12, 12)
    expected = (torch.softmax(model(maps), 1)[:, 1] + torch.softmax(model(maps.flip(-1)), 1)[:, 1]) / 2
    with load_engine(engine_dir) as engine:
        assert engine.meta["tta"] == "flip"
        assert torch.allclose(engine.predict(maps), expected, atol=1e-5)
        assert not torch.allclose(engine.predict(maps), torch.softmax(model(maps), 1)[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="unknown --tta 'crops'"):
        build_engine(run_dir, tmp_path / "crops", backend="eager", tta="crops", num_workers=0)


def test_evaluate_under_laundering_adds_one_row_per_transform_and_reuses_the_copies(ghost_run):
    from realfake.jobs.tasks.evaluate import run_evaluate

    run_dir, data_dir = ghost_run
    summary = run_evaluate(run_dir, split="test", num_workers=0, progress=False,
                           launder=["jpeg:q=85", "crop:dx=3,dy=5,q=90", "jpeg:q=85"])
    assert summary["launder"] == ["jpeg:q=85", "crop:dx=3,dy=5,q=90"]  # a spec asked for twice is one row
    report = json.loads((run_dir / "report.json").read_text())
    clean, rows = report["metrics"], report["metrics"]["launder"]
    assert list(rows) == summary["launder"]
    for spec, row in rows.items():
        assert row["n"] == clean["n"] and {"roc_auc", "real_called_fake", "fakes_caught"} <= set(row), spec
    copy = data_dir / "laundered" / "test" / "jpeg_q85"
    assert len(list((copy / "images").glob("*.jpg"))) == clean["n"]  # the test split, laundered
    assert "Under laundering" in (run_dir / "report.md").read_text() and "`crop:dx=3,dy=5,q=90`" in (
        run_dir / "report.md").read_text()
    made = {p: p.stat().st_mtime_ns for p in copy.rglob("*.jpg")}
    run_evaluate(run_dir, split="test", num_workers=0, progress=False, launder=["jpeg:q=85"])
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*.jpg")} == made  # reused, not laundered again
    with pytest.raises(ValueError, match="jpeg:q=500"):
        run_evaluate(run_dir, split="test", num_workers=0, progress=False, launder=["jpeg:q=500"])
