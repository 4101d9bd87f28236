"""Evidence heat maps (engines/explain.py) and `realfake explain`: the class activation map of ghost_cnn
on the JPEG block grid, Grad-CAM of pixel models, flip and ensemble averaging, the region head, the
pointing game, and the command line, from eager and aot engine directories."""
import csv
import importlib.util
import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _score_helpers import build_engines, make_good_folder, write_bad_files
from _train_helpers import make_ghost_prepared
from click.testing import CliRunner
from PIL import Image
from realfake.engines import explain as ex
from realfake.engines.build import build_engine, build_engine_from_model
from realfake.engines.explain import methods, pointing
from realfake.engines.schema import EngineError
from realfake.jobs.cli import main
from realfake.models import Ensemble, build_model
from realfake.pipelines.manifest import read_manifest, write_manifest
from realfake.pipelines.prepare import EDIT_REGIONS
from torch import nn

needs_grad_cam = pytest.mark.skipif(importlib.util.find_spec("pytorch_grad_cam") is None,
                                    reason="pytorch-grad-cam is not installed (pip install 'realfake[explain]')")

GHOST_SIZE = 288  # 36 block cells: the last feature map is 4x4 (32 cells), the last 4 blocks it never reaches


def constructed_ghost_cnn(image_size: int = GHOST_SIZE) -> nn.Module:
    """A ghost_cnn whose CAM is known: every convolution copies channel 0 (centre tap), BatchNorm is the
    identity, the poolings keep each 8x8 block's maximum of input channel 0, and the head reads that
    channel with +1 for fake and -1 for real: CAM cell = 2 x max of channel 0 over its 8x8 blocks."""
    model = build_model("ghost_cnn", image_size=image_size, width=4).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                module.weight[0, 0, 1, 1] = 1.0
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.eps = 0.0
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1, 0], model.fc.weight[0, 0] = 1.0, -1.0
    return model


def bump(row: int, col: int, cells: int = GHOST_SIZE // 8, n: int = 1) -> torch.Tensor:
    maps = torch.zeros(n, 33, cells, cells)
    maps[:, 0, row, col] = 1.0
    return maps


# ------------------------------------------------------------------------------------ the ghost CAM

def test_the_cam_is_the_fake_minus_real_head_on_the_feature_cells_laid_on_the_block_grid():
    model = constructed_ghost_cnn()
    logits, cam, regions = methods.class_activation_map(model, bump(10, 13))
    assert regions is None and cam.shape == (1, 4, 4)
    expected = torch.zeros(4, 4)
    expected[10 // 8, 13 // 8] = 2.0  # fake weight +1 minus real weight -1
    assert torch.equal(cam[0], expected)
    assert logits[0, 1] - logits[0, 0] == pytest.approx(2.0)  # the pooled logit difference of that cell
    assert methods.feature_stride(model) == 8
    grid = methods.block_grid(cam.numpy(), 8, 36)[0]
    assert grid.shape == (36, 36)
    assert np.all(grid[8:16, 8:16] == 2.0) and np.nansum(grid) == 2.0 * 64
    assert np.isnan(grid[32:, :]).all() and np.isnan(grid[:, 32:]).all()  # the floored edge: not reached
    mirrored = methods.block_grid(cam.numpy(), 8, 36, mirrored=True)[0]
    assert np.array_equal(mirrored, grid[:, ::-1], equal_nan=True)


def _engine(model, out: Path, **kw) -> Path:
    return build_engine_from_model(model, out, architecture="ghost_cnn", image_size=GHOST_SIZE, width=4,
                                   backend="eager", batch=(1, 4, 8), threshold=0.5, **kw)


def test_a_flip_ensemble_engine_averages_members_and_mirrored_views_where_they_came_from(tmp_path):
    plain = ex.load_explainer(_engine(constructed_ghost_cnn(), tmp_path / "plain"))
    halved = constructed_ghost_cnn()
    with torch.no_grad():
        halved.fc.weight.mul_(0.5)  # its CAM is half the first member's
    flip = ex.load_explainer(_engine(Ensemble([constructed_ghost_cnn(), halved]), tmp_path / "flip", tta="flip"))
    assert flip.views == ("image", "mirror") and len(flip.members) == 2 and flip.method == "cam"

    item = flip.explain(bump(10, 13))[0]
    assert item.cell_px == 8 and item.values.shape == (36, 36)
    # both views reach block (10, 13): the mean of 2 and 1 over the members, in both views
    assert item.values[10, 13] == pytest.approx(1.5, rel=1e-3)  # BatchNorm eps is 1e-5 once rebuilt
    assert np.nanargmax(item.values) in {r * 36 + c for r in range(8, 16) for c in range(8, 16)}
    # the mirrored image's evidence is the mirror of the image's (a view not flipped back breaks this)
    mirrored = flip.explain(bump(10, 36 - 1 - 13))[0]
    assert np.allclose(mirrored.values, item.values[:, ::-1], equal_nan=True)
    # a bump in the last 4 columns: the image view never reaches it, the mirrored view does
    edge = flip.explain(bump(10, 34))[0]
    assert edge.values[10, 34] == pytest.approx(1.5, rel=1e-3) and np.isnan(plain.explain(bump(10, 34))[0].values[10, 34])
    assert 0.0 < item.p_fake < 1.0


def test_ghost_view_puts_the_pixels_where_their_ghost_map_cells_lie(tmp_path):
    from realfake.pipelines.jpeg_ghosts import ghost_maps, ghost_view

    rng = np.random.default_rng(0)
    path = tmp_path / "wide.jpg"
    pixels = rng.integers(0, 256, (44, 64, 3), dtype=np.uint8)  # 5 whole block rows, 8 columns
    Image.fromarray(pixels).save(path, quality=90)
    canvas, box = ghost_view(path, 96)
    assert canvas.shape == (96, 96, 3) and box == (16, 24, 80, 64)  # centred: 2 cells left, 3 cells above
    with Image.open(path) as img:
        decoded = np.asarray(img.convert("RGB"))
    assert np.array_equal(canvas[24:64, 16:80], decoded[:40, :64]) and canvas[:24].max() == 0
    maps = ghost_maps(path, 96)
    padding = np.ones((12, 12), dtype=bool)
    padding[3:8, 2:10] = False
    assert (maps[:, padding] == 0).all() and (maps[:, ~padding] != 0).any(axis=0).all()


# ------------------------------------------------------------------------------------ Grad-CAM

@needs_grad_cam
@pytest.mark.parametrize("architecture, size", [("resnet18", 64), ("simple_cnn", 32)])
def test_grad_cam_maps_have_the_input_shape_and_lie_in_0_1(architecture, size):
    torch.manual_seed(0)
    model = build_model(architecture, image_size=size).eval()
    images = torch.randn(3, 3, size, size)
    maps, logits = methods.grad_cam(model, methods.cam_layer(model, architecture), images)
    assert maps.shape == (3, size, size) and logits.shape == (3, 2)
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    # scaled per image to [0, 1]; all 0 where no cell has positive fake-minus-real evidence (Grad-CAM's ReLU)
    assert all(m.max() == pytest.approx(1.0, abs=1e-5) or m.max() == 0.0 for m in maps)
    assert torch.allclose(logits, model(images), atol=1e-5)


@needs_grad_cam
def test_a_pixel_flip_engine_explains_a_mirror_image_as_the_mirror_of_its_map(tmp_path):
    torch.manual_seed(0)
    engine = build_engine_from_model(build_model("resnet18", image_size=64), tmp_path / "r18", architecture="resnet18",
                                     image_size=64, backend="eager", batch=(1, 4, 8), tta="flip")
    explainer = ex.load_explainer(engine)
    assert explainer.method == "grad-cam" and explainer.cell_px == 1
    images = torch.randn(2, 3, 64, 64)
    a, b = explainer.explain(images), explainer.explain(images.flip(-1))
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x.values, y.values[:, ::-1], atol=1e-4)
        assert x.p_fake == pytest.approx(y.p_fake, abs=1e-5)


# ------------------------------------------------------------------------------------ the pointing game

def _hot_map(*names: str | None) -> np.ndarray:
    """A 100x100 map, 0 but for a 3x3 patch of 1 at the centre of each named region's prior (the
    region boxes overlap at their edges, their centres lie in one box each)."""
    from realfake.pipelines.pseudo_fakes import REGIONS

    values = np.zeros((100, 100), dtype=np.float32)
    for name in names:
        if name:
            cx, cy = round(REGIONS[name][0] * 100), round(REGIONS[name][1] * 100)
            values[cy - 1:cy + 2, cx - 1:cx + 2] = 1.0
    return values


def _record(code, *hot, label=1, group="easy", p_fake=0.9):
    name = f"{group}_001_{''.join(map(str, code))}.jpg" if label == 1 else "real_00001.jpg"
    return pointing.image_record(methods.Evidence(p_fake=p_fake, values=_hot_map(*hot), cell_px=1), (0, 0, 100, 100), path=name,
                           label=label, group=group if label == 1 else "real", threshold=0.5)


def test_the_pointing_game_counts_hits_ties_and_chance_per_group():
    records = [
        _record((1, 0, 0, 0), "left_eye"),                         # hit, chance 1/4
        _record((0, 0, 1, 1), "left_eye"),                         # miss, chance 2/4
        _record((0, 1, 0, 0), "right_eye", "nose"),                # tie: half a hit
        _record((1, 1, 1, 1), "mouth", group="mid", p_fake=0.2),   # all coded: always a hit, not informative
        _record((0, 0, 1, 0), "mouth", group="mid", p_fake=0.3),   # miss, called real
        _record((0, 0, 0, 0), "nose", group="hard"),               # no region coded: left out
        _record((0, 0, 0, 0), label=0),                            # a real with a flat map
    ]
    assert records[0]["code"] == [1, 0, 0, 0] and records[0]["hottest_by_max"] == ["left_eye"]
    assert records[2]["hottest_by_max"] == ["right_eye", "nose"]
    table = pointing.pointing_game(records)
    easy, mid, every = (table["fakes"]["coded"][g] for g in ("easy", "mid", "all"))
    assert easy["n"] == 3 and easy["hit_max"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert easy["chance"] == pytest.approx((0.25 + 0.5 + 0.25) / 3)
    assert mid["n"] == 2 and mid["hit_max"] == pytest.approx(0.5) and mid["n_called_fake"] == 0
    assert every["n"] == 5 and every["hit_max"] == pytest.approx(2.5 / 5)
    assert every["hit_max_minus_chance"]["mean"] == pytest.approx((2.5 - (0.25 + 0.5 + 0.25 + 1 + 0.25)) / 5)
    assert every["n_called_fake"] == 3 and every["hit_max_called_fake"] == pytest.approx(1.5 / 3)
    assert table["fakes"]["coded"]["hard"] == {"n": 0} and table["fakes_without_code"] == 1
    assert table["fakes"]["informative"]["all"]["n"] == 4  # the 1111 fake is not informative
    assert every["best_fixed_region"] == ("left_eye", 0.4) or every["best_fixed_region"][1] == pytest.approx(0.6)
    # mean evidence inside coded against uncoded regions, per image, then over the images
    boxes = pointing.region_boxes((0, 0, 100, 100))

    def m(name):
        return pointing.region_evidence(_hot_map(name), 1, boxes[name])[1]

    informative = table["fakes"]["informative"]["easy"]
    assert informative["evidence_coded"] == pytest.approx((m("left_eye") + 0 + m("right_eye")) / 3)
    assert informative["evidence_uncoded"] == pytest.approx((0 + m("left_eye") / 2 + m("nose") / 3) / 3)
    assert table["reals"]["n"] == 1 and math.isnan(records[-1]["entropy"])  # a flat map has no distribution


def test_spread_and_hottest_on_known_maps():
    one_hot = np.zeros((10, 10))
    one_hot[3, 4] = 1.0
    entropy, top = pointing.spread(one_hot)
    assert entropy == pytest.approx(0.0) and top == pytest.approx(1.0)
    ramp = np.arange(100, dtype=np.float64).reshape(10, 10)  # min-max scaled: 0..1 evenly
    entropy, top = pointing.spread(ramp)
    assert 0.9 < entropy < 1.0 and top == pytest.approx(sum(range(90, 100)) / sum(range(100)))
    assert pointing.hottest([0.1, float("nan"), 0.3, 0.3]) == [2, 3]
    assert pointing.hit_credit([0.1, 0.2, 0.3, 0.3], (0, 0, 1, 0)) == 0.5
    # region evidence: area-weighted mean over the cells a box overlaps, NaN cells left out
    values = np.array([[1.0, 3.0], [np.nan, 5.0]])
    assert pointing.region_evidence(values, 10, (5, 0, 15, 10)) == (3.0, 2.0)
    assert pointing.region_evidence(values, 10, (0, 10, 10, 20)) == (pytest.approx(math.nan, nan_ok=True),) * 2


# ------------------------------------------------------------------------------------ engines from runs

def _coded(data_dir: Path, codes=("1000", "0100", "0011", "1110")) -> Path:
    """make_ghost_prepared's fakes renamed to CIPLAB names with edit codes, in three groups."""
    rows = []
    for i, row in enumerate(read_manifest(data_dir)):
        if row.label == 1:
            group = ("easy", "mid", "hard")[i % 3]
            new = Path(row.path).with_name(f"{group}_{i:03d}_{codes[i % len(codes)]}.jpg")
            Path(row.path).rename(new)
            row = replace(row, path=str(new), group=group)
        rows.append(row)
    write_manifest(data_dir, sorted(rows, key=lambda r: r.path))
    return data_dir


@pytest.fixture(scope="module")
def ghost_run(tmp_path_factory):
    """A 2-epoch ghost_cnn run at 128 px (a 2x2 feature map) trained with --region-loss on coded names."""
    from realfake.jobs.tasks.train import run_train

    root = tmp_path_factory.mktemp("ghost")
    data_dir = _coded(make_ghost_prepared(root, n_per_class=8, size=128))
    summary = run_train(data_dir, model="ghost_cnn", image_size=128, width=8, batch_size=8, epochs=2, num_workers=0,
                        region_loss=1.0, progress=False, out=root / "runs", name="regions")
    return Path(summary["run_dir"]), data_dir


@pytest.fixture(scope="module")
def ghost_engines(ghost_run, tmp_path_factory):
    run_dir, _ = ghost_run
    root = tmp_path_factory.mktemp("ghost-engines")
    common = dict(checkpoint="last", batch=(1, 4, 8), num_workers=0, threshold=0.5)
    return {backend: Path(build_engine(run_dir, root / backend, backend=backend, **common))
            for backend in ("eager", "aot")}


def test_aot_and_eager_engines_of_a_run_explain_alike_with_its_region_head(ghost_run, ghost_engines):
    run_dir, data_dir = ghost_run
    rows = read_manifest(data_dir, "train")[:4]
    results = {}
    for backend, engine in ghost_engines.items():
        explainer = ex.load_explainer(engine)
        assert explainer.region_heads is not None and len(explainer.region_heads) == 1
        batch = next(iter(explainer.loader([r.path for r in rows], num_workers=0)))
        results[backend] = explainer.explain(batch.images)
    for a, b in zip(results["eager"], results["aot"], strict=True):
        assert np.allclose(a.values, b.values, equal_nan=True) and a.p_fake == pytest.approx(b.p_fake, abs=1e-6)
        assert set(a.region_head) == set(EDIT_REGIONS) and all(0 < p < 1 for p in a.region_head.values())
        assert a.region_head == pytest.approx(b.region_head)
        assert a.values.shape == (16, 16) and not np.isnan(a.values).any()  # 16 cells: all reached


def test_without_its_run_an_aot_engine_cannot_be_explained_and_an_eager_one_loses_the_region_head(
        ghost_run, ghost_engines, tmp_path, caplog):
    run_dir, _ = ghost_run
    moved = tmp_path / "moved"
    shutil.move(run_dir, moved)
    try:
        with pytest.raises(EngineError, match=r"an engine of backend aot.*last\.pt, which is gone.*--backend eager"):
            ex.load_explainer(ghost_engines["aot"])
        with caplog.at_level(logging.WARNING, logger="realfake.engines.explain"):
            explainer = ex.load_explainer(ghost_engines["eager"])
        assert explainer.region_heads is None and "region head left out" in caplog.text
    finally:
        shutil.move(moved, run_dir)


def test_an_aot_engine_whose_run_checkpoint_changed_is_refused(ghost_run, ghost_engines, tmp_path):
    run_dir, _ = ghost_run
    checkpoint = run_dir / "last.pt"
    kept = tmp_path / "last.pt"
    shutil.copy2(checkpoint, kept)
    try:
        state = torch.load(checkpoint, weights_only=True)
        state["epoch"] = 99
        torch.save(state, checkpoint)
        with pytest.raises(EngineError, match="changed since the build"):
            ex.load_explainer(ghost_engines["aot"])
    finally:
        shutil.copy2(kept, checkpoint)


# ------------------------------------------------------------------------------------ command line

@needs_grad_cam
def test_cli_explains_each_image_and_lists_each_bad_file(tmp_path):
    engine, _ = build_engines(tmp_path / "engines")  # simple_cnn at 32 px, eager
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "sub/a.jpg", "easy_001_1010.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / name)
    bad = write_bad_files(folder / "bad")
    result = CliRunner().invoke(main, ["explain", str(folder), "--engine", str(engine), "--out", str(tmp_path / "out"),
                                       "--num-workers", "0", "--no-progress", "--dpi", "40"])
    assert result.exit_code == 1, result.output  # finished, with errors
    out = tmp_path / "out"
    index = list(csv.DictReader(open(out / "index.csv")))
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert sorted(Path(r["path"]).name for r in errors) == sorted(bad)
    assert {Path(r["path"]).name: r["reason"] for r in errors} == bad
    assert sorted(r["heatmap"] for r in index) == ["a.png", "easy_001_1010.png", "sub__a.png"]
    for row in index:
        with Image.open(out / row["heatmap"]) as png:
            assert png.format == "PNG" and png.size[0] > 100
        doc = json.loads((out / row["evidence"]).read_text())
        assert doc["method"] == "grad-cam" and doc["path"] == row["path"]
        assert doc["grid"]["rows"] == doc["grid"]["cols"] == 32 and len(doc["grid"]["values"]) == 32
        assert set(doc["regions"]) == set(EDIT_REGIONS) and doc["label"] == row["label"]
        assert float(row["p_fake"]) == pytest.approx(doc["p_fake"])
    coded = json.loads((out / "easy_001_1010.json").read_text())
    assert coded["edited_regions"] == [1, 0, 1, 0]
    assert "explained 3" in result.output and "errors 6" in result.output


@needs_grad_cam
def test_cli_refuses_bad_usage_with_one_line(tmp_path):
    engine, other = build_engines(tmp_path / "engines")
    runner = CliRunner()
    result = runner.invoke(main, ["explain", "--engine", str(engine), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "pass image files or folders" in result.output
    result = runner.invoke(main, ["explain", str(tmp_path), "--engine", str(engine), "--engine", str(other),
                                  "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "one --engine at a time" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["explain", str(tmp_path / "empty"), "--engine", str(tmp_path / "empty"),
                                  "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "error:" in result.output and "engine.json is missing" in result.output


def test_cli_ghost_engine_lists_non_jpegs_and_evaluate_writes_the_tables(ghost_run, ghost_engines, tmp_path):
    run_dir, data_dir = ghost_run
    folder = tmp_path / "in"
    folder.mkdir()
    fakes = [r.path for r in read_manifest(data_dir, "test") if r.label == 1]
    shutil.copy2(fakes[0], folder / Path(fakes[0]).name)
    Image.new("RGB", (128, 128), "gray").save(folder / "flat.png")
    result = CliRunner().invoke(main, ["explain", str(folder), "--engine", str(ghost_engines["aot"]), "--out",
                                       str(tmp_path / "out"), "--num-workers", "0", "--no-progress", "--dpi", "40"])
    assert result.exit_code == 1, result.output
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("flat.png", "not a JPEG")]
    doc = json.loads((tmp_path / "out" / f"{Path(fakes[0]).stem}.json").read_text())
    assert doc["method"] == "cam" and doc["grid"]["cell_px"] == 8 and doc["grid"]["rows"] == 16
    assert set(doc["region_head"]) == set(EDIT_REGIONS) and doc["edited_regions"] is not None

    out = tmp_path / "pointing"
    result = CliRunner().invoke(main, ["explain", "--evaluate", str(data_dir), "--split", "train", "--engine",
                                       str(ghost_engines["eager"]), "--engine", str(ghost_engines["aot"]),
                                       "--out", str(out), "--examples", "1", "--num-workers", "0", "--no-progress",
                                       "--dpi", "40"])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "pointing.json").read_text())
    train = read_manifest(data_dir, "train")
    n_fakes = sum(r.label for r in train)
    assert [r["name"] for r in document["results"]] == ["eager", "aot"]
    for r in document["results"]:
        assert r["table"]["fakes"]["coded"]["all"]["n"] == n_fakes and r["region_head"] is True
        assert len(r["images"]) == len(train)
    eager, aot = (r["table"]["fakes"]["coded"]["all"] for r in document["results"])
    assert eager["hit_max"] == aot["hit_max"] and eager["chance"] == aot["chance"]
    table = (out / "pointing.md").read_text()
    assert "chance (random region)" in table and "| eager (cam) | all |" in table
    # one example per group (easy, mid, hard, real), PNG and evidence
    assert len(list((out / "examples" / "aot").glob("*.png"))) == 4


@needs_grad_cam
def test_score_explain_top_draws_the_highest_scores_and_the_report_shows_them(tmp_path):
    engine, _ = build_engines(tmp_path / "engines")
    folder = tmp_path / "in"
    make_good_folder(folder, n=8)
    write_bad_files(folder / "bad")
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["score", str(folder), "--engine", str(engine), "--out", str(out),
                                       "--num-workers", "0", "--no-progress", "--explain-top", "3", "--report"])
    assert result.exit_code == 1, result.output  # scored, with error rows for the bad files
    scores = sorted(csv.DictReader(open(out)), key=lambda r: -float(r["p_fake"]))
    index = list(csv.DictReader(open(tmp_path / "scores.csv.heatmaps" / "index.csv")))
    assert sorted(r["path"] for r in index) == sorted(r["path"] for r in scores[:3])
    for row in index:
        assert (tmp_path / "scores.csv.heatmaps" / row["heatmap"]).is_file()
    page = (tmp_path / "scores.csv.report.html").read_text()
    assert page.count("data:image/png;base64") >= 3  # the three heat maps, embedded


def test_score_explain_top_refuses_a_negative_count(tmp_path):
    engine, _ = build_engines(tmp_path / "engines")
    result = CliRunner().invoke(main, ["score", str(tmp_path), "--engine", str(engine), "--out",
                                       str(tmp_path / "s.csv"), "--explain-top", "-1"])
    assert result.exit_code == 2 and "explain-top" in result.output
