"""--region-loss: CIPLAB's edit codes read from file names, carried by the ghost-map train loader
(eyes swapped on mirrored maps), scored at the region priors by engines.recipes.RegionLoss, and trained
with ghost_cnn: exact resume, the saved model unchanged, clear refusals."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _train_helpers import make_ghost_prepared
from realfake.engines.recipes import RegionLoss
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.manifest import read_manifest, write_manifest
from realfake.pipelines.prepare import EDIT_REGIONS, edited_regions

CODES = ("1000", "0100", "0011", "1111", "1100", "0010")


@pytest.mark.parametrize("name, label, expected", [
    ("mid_103_0011.jpg", 1, (0, 0, 1, 1)),
    ("easy_104_1000.JPG", 1, (1, 0, 0, 0)),
    ("real_00001.jpg", 0, (0, 0, 0, 0)),
    ("easy_116_111.jpg", 1, None),  # the archive's one three-digit code
    ("fake_001.jpg", 1, None),
    ("hard_7_0102.jpg", 1, None),
])
def test_edit_codes_come_from_ciplab_file_names(name, label, expected):
    assert edited_regions(Path("/data") / name, label) == expected


def test_the_code_order_matches_the_region_priors_and_the_synthetic_set():
    from realfake.pipelines import pseudo_fakes, synth

    assert synth.REGIONS == EDIT_REGIONS == ("left_eye", "right_eye", "nose", "mouth")
    left, right = pseudo_fakes.REGIONS["left_eye"], pseudo_fakes.REGIONS["right_eye"]
    assert left[0] < 0.5 < right[0]  # bit 0 is the eye on the image's left (easy_104_1000.jpg)


def _coded(data_dir: Path, codes=CODES) -> Path:
    """Rename make_ghost_prepared's fakes to CIPLAB names with edit codes and rewrite the manifest."""
    rows = []
    for i, row in enumerate(read_manifest(data_dir)):
        if row.label == 1:
            path = Path(row.path)
            new = path.with_name(f"mid_{i:03d}_{codes[i % len(codes)]}.jpg")
            path.rename(new)
            row = replace(row, path=str(new))
        rows.append(row)
    write_manifest(data_dir, sorted(rows, key=lambda r: r.path))
    return data_dir


def test_train_loader_carries_regions_and_swaps_the_eyes_of_mirrored_maps(tmp_path):
    from realfake.pipelines import jpeg_ghosts

    # one eye edited in every fake, so a mirrored fake must change its targets
    data_dir = _coded(make_ghost_prepared(tmp_path, n_per_class=6), codes=("1000", "0100", "1010", "0101"))
    rows = read_manifest(data_dir)
    regions = [edited_regions(r.path, r.label) for r in rows]
    loader = get_loader([r.path for r in rows], [r.label for r in rows], train=True, input="ghosts",
                        image_size=96, batch_size=4, augment=object(), seed=3, num_workers=0, progress=False,
                        regions=regions)
    mirrored_fakes = plain_fakes = 0
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        for batch in loader:
            for maps, index, got in zip(batch.images, batch.indices, batch.regions, strict=True):
                plain = torch.from_numpy(jpeg_ghosts.ghost_maps(rows[index].path, 96))
                expected = torch.tensor(regions[index], dtype=torch.float32)
                if torch.allclose(maps, plain, atol=2e-2):
                    plain_fakes += rows[index].label
                else:
                    assert torch.allclose(maps, plain.flip(2), atol=2e-2)
                    mirrored_fakes += rows[index].label
                    expected = expected[[1, 0, 2, 3]]
                assert torch.equal(got, expected)
    assert mirrored_fakes and plain_fakes


def test_regions_are_for_ghost_map_train_loaders_only(tmp_path):
    with pytest.raises(ValueError, match="ghost-map training loaders only"):
        get_loader([str(tmp_path / "a.jpg")], [0], train=False, input="ghosts", image_size=96, regions=[(0,) * 4])
    with pytest.raises(ValueError, match="ghost-map training loaders only"):
        get_loader([str(tmp_path / "a.jpg")], [0], train=True, regions=[(0,) * 4])


class _Grid(torch.nn.Module):
    """A stand-in model whose feature map is its input (N, 2, H, W), as RegionLoss expects of ghost_cnn."""

    map_channels = 2

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Identity()

    def feature_map_layer(self):
        return self.layer

    def forward(self, x):
        return self.layer(x).amax((2, 3))


def _loss(weight=1.0):
    model = _Grid()
    loss = RegionLoss(model, weight)
    with torch.no_grad():  # the head reads channel 0 as it is
        loss.head.weight.zero_()
        loss.head.weight[0, 0] = 1.0
        loss.head.bias.zero_()
    return model, loss


def test_a_region_scores_the_highest_cell_near_its_prior():
    model, loss = _loss()
    grid = torch.zeros(1, 2, 9, 9)
    grid[0, 0, 4, 2] = 5.0  # next to the left-eye prior (x 0.36, y 0.44 -> cell row 3, column 3)
    grid[0, 0, 8, 8] = 9.0  # a corner: near no region
    grid[0, 1] = 7.0  # the head does not read channel 1
    assert loss.region_scores(grid).tolist() == [[5.0, 0.0, 0.0, 0.0]]


def test_unknown_regions_add_nothing_and_known_ones_are_a_weighted_bce():
    model, loss = _loss(weight=2.0)
    grid = torch.randn(3, 2, 9, 9)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [float("nan")] * 4, [0.0, 0.0, 0.0, 0.0]])
    model.train()
    model(grid)
    got = loss(targets)
    scores = loss.region_scores(grid)
    known = [0, 2]
    want = 2.0 * torch.nn.functional.binary_cross_entropy_with_logits(scores[known], targets[known])
    assert torch.allclose(got, want)
    model(grid)
    assert loss(torch.full((3, 4), float("nan"))).item() == 0.0


def test_the_loss_reads_training_forwards_only():
    model, loss = _loss()
    model.eval()
    model(torch.randn(2, 2, 9, 9))  # an evaluation pass (e.g. of an EMA copy) leaves nothing behind
    with pytest.raises(RuntimeError, match="after a training forward"):
        loss(torch.zeros(2, 4))
    model.train()
    model(torch.randn(2, 2, 9, 9))
    with pytest.raises(ValueError, match="one row of 4 per image"):
        loss(torch.zeros(3, 4))


def test_models_without_a_feature_map_are_refused():
    with pytest.raises(ValueError, match="feature map over the face"):
        RegionLoss(torch.nn.Linear(2, 2), 1.0)


GHOST = dict(model="ghost_cnn", image_size=96, batch_size=8, optimizer="adamw", lr=2e-3, weight_decay=1e-3,
             num_workers=0, progress=False)


@pytest.fixture(scope="module")
def coded_data(tmp_path_factory):
    return _coded(make_ghost_prepared(tmp_path_factory.mktemp("coded"), n_per_class=16))


def test_region_loss_trains_resumes_exactly_and_leaves_the_model_as_it_was(coded_data, tmp_path):
    from realfake.engines import trainer
    from realfake.jobs.tasks.evaluate import run_evaluate
    from realfake.jobs.tasks.train import run_train

    common = dict(GHOST, region_loss=1.0, ghost_shift=1, out=tmp_path)
    run_train(coded_data, epochs=2, name="straight", **common)
    run_train(coded_data, epochs=1, name="split", **common)
    after_one = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    run_train(coded_data, epochs=2, resume=tmp_path / "split", progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for part in ("model", "aux_loss"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert not torch.equal(after_one["aux_loss"]["head.weight"], b["aux_loss"]["head.weight"])  # the head trains
    # ... and stays out of the model's weights: evaluation and engines see the plain ghost_cnn
    assert after_one["model"].keys() == trainer.load_run(tmp_path / "split", "last")[0].state_dict().keys()
    assert not any("head" in key for key in a["model"])
    config = json.loads((tmp_path / "split" / "config.json").read_text())
    assert config["args"]["region_loss"] == 1.0
    report = run_evaluate(tmp_path / "split", checkpoint="last", num_workers=0, progress=False)
    assert report["n"] == 4  # make_ghost_prepared: 2 test files a class
    # a checkpoint with a region loss is not resumed without one
    net, opt, sched = _fresh_training_parts()
    with pytest.raises(ValueError, match="saved with a region loss"):
        trainer.restore(b, net, opt, sched)


def _fresh_training_parts():
    from realfake.models import build_model

    net = build_model("ghost_cnn", image_size=96)
    opt = torch.optim.AdamW(net.parameters())
    return net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def test_region_loss_changes_the_training_and_is_recorded(coded_data, tmp_path):
    from realfake.jobs.tasks.train import run_train

    run_train(coded_data, epochs=1, name="plain", out=tmp_path, **GHOST)
    run_train(coded_data, epochs=1, name="regions", out=tmp_path, region_loss=1.0, **GHOST)
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    regions = torch.load(tmp_path / "regions" / "last.pt", weights_only=True)
    assert plain["aux_loss"] is None and regions["aux_loss"] is not None
    # same seed, same batches: only the extra gradient from the region head makes the weights differ
    assert any(not torch.equal(plain["model"][k], regions["model"][k]) for k in plain["model"])


def test_region_loss_is_refused_where_it_cannot_work(coded_data, tmp_path):
    from realfake.jobs.tasks.train import run_train

    with pytest.raises(ValueError, match="wired for ghost_cnn"):
        run_train(coded_data, model="simple_cnn", epochs=1, region_loss=1.0, out=tmp_path, progress=False)
    uncoded = make_ghost_prepared(tmp_path / "uncoded", n_per_class=8)
    with pytest.raises(ValueError, match="none of the 6 train fakes"):
        run_train(uncoded, epochs=1, region_loss=1.0, out=tmp_path, **GHOST)


def test_cli_takes_region_loss_and_refuses_a_negative_weight(coded_data, tmp_path):
    from click.testing import CliRunner
    from realfake.jobs.cli import main

    result = CliRunner().invoke(main, ["train", str(coded_data), "--model", "ghost_cnn", "--image-size", "96",
                                       "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
                                       "--region-loss", "-1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "-1" in result.output
    result = CliRunner().invoke(main, ["train", "--help"])
    assert "--region-loss" in result.output and "CCCC" in result.output
