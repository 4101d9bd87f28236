"""`realfake train --nproc 2`: two CPU processes (gloo) on a tiny prepared set. Each epoch is split into
equal disjoint shards that cover the train split, both processes hold the same weights and epoch
metrics, validation is summed over the processes, resume is bit-exact with the same count and refused
with another, ghost_cnn trains with its region loss, and a failing process stops the run with its error."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_helpers import fails_on_rank_one, recorded_train
from _train_helpers import make_ghost_prepared, make_prepared
from realfake.engines import trainer
from realfake.jobs.tasks.launch import launch
from realfake.jobs.tasks.train import run_train
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.manifest import read_manifest

# 16 train images: two processes of 4-image batches read 8 each, in 2 steps, and drop nothing.
TINY = dict(model="simple_cnn", image_size=32, num_workers=0, loader="torch", progress=False, dropout=0.0)
TWO = dict(TINY, batch_size=4, nproc=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("ddp"), n_per_class=12, size=40)


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
    """Two epochs on two processes, each recording what it read and its weights after every epoch."""
    out = tmp_path_factory.mktemp("ddp-runs")
    summary = launch(2, recorded_train, out, data_dir, out, "two", dict(TWO, epochs=2))
    records = [{int(k): v for k, v in json.loads((out / f"rank{r}.json").read_text()).items()} for r in (0, 1)]
    return summary, records, out / "two"


def history(run_dir):
    return json.loads((Path(run_dir) / "history.json").read_text())


def test_each_epoch_is_split_into_equal_disjoint_shards_that_cover_the_train_split(two_process_run, data_dir):
    _, records, _ = two_process_run
    n_train = len(read_manifest(data_dir, "train"))
    orders = []
    for epoch in (1, 2):
        first, second = records[0][epoch]["indices"], records[1][epoch]["indices"]
        assert len(first) == len(second) == n_train // 2
        assert sorted(first + second) == list(range(n_train))  # every train image exactly once
        orders.append(first + second)
    assert orders[0] != orders[1]  # each epoch its own permutation


def test_both_processes_hold_the_same_weights_and_epoch_metrics(two_process_run):
    summary, records, run_dir = two_process_run
    for epoch in (1, 2):
        assert records[0][epoch]["weights"] == records[1][epoch]["weights"]
        assert records[0][epoch]["result"] == records[1][epoch]["result"]  # all-reduced sums, on both
    assert records[0][1]["weights"] != records[0][2]["weights"]
    assert [h["train_loss"] for h in history(run_dir)] == [records[0][e]["result"][0] for e in (1, 2)]
    assert summary["run_dir"] == str(run_dir) and summary["epochs_run"] == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["nproc"] == config["args"]["nproc"] == 2 and config["global_batch_size"] == 8


def test_validation_is_summed_over_both_shards(two_process_run, data_dir):
    # The saved model evaluated on the whole valid split in one process gives the run's last valid
    # loss: validation covered both shards, summed, with the BatchNorm statistics that were saved.
    _, _, run_dir = two_process_run
    model, _, _ = trainer.load_run(run_dir, "last")
    rows = read_manifest(data_dir, "valid")
    loader = get_loader([r.path for r in rows], [r.label for r in rows], train=False, backend="torch",
                        image_size=32, batch_size=3, num_workers=0)
    loss, acc = trainer.evaluate(model, torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"))
    last = history(run_dir)[-1]
    assert loss == pytest.approx(last["valid_loss"], abs=1e-5) and acc == last["valid_acc"]


def test_two_processes_train_like_one_with_the_same_global_batch(two_process_run, data_dir, tmp_path):
    # Both runs read the same global batches (one permutation per epoch, cut in two), start from the same
    # weights, augment each file alike and average gradients over the same 8 images. BatchNorm is what
    # differs: in training it normalizes over each process's 4 images instead of 8, which moves the epoch
    # losses of a 16-image run a little; seeds or a lost half of the data move them far more
    # (docs/cluster.md has the measured spread).
    _, _, run_dir = two_process_run
    run_train(data_dir, out=tmp_path, name="one", epochs=2, **dict(TINY, batch_size=8))
    for one, two in zip(history(tmp_path / "one"), history(run_dir), strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=0.15)
        assert two["valid_loss"] == pytest.approx(one["valid_loss"], abs=0.02)
        assert two["train_acc"] == pytest.approx(one["train_acc"], abs=2 / 16)
        assert two["valid_acc"] == pytest.approx(one["valid_acc"], abs=1 / 4)


def test_torchrun_on_two_machines_trains_exactly_as_nproc_2(two_process_run, data_dir, tmp_path):
    """docs/cluster.md's several-machines command, with this machine as both machines: two torchrun
    launchers of one process each, meeting at one rendezvous endpoint, train the `--nproc 2` run bit for
    bit (the same global batches, the same weights after every step)."""
    _, _, nproc_run = two_process_run
    with socket.socket() as probe:  # a port free now, for the rendezvous store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-machines",
               "-m", "realfake.jobs.cli", "train", str(data_dir), "--model", "simple_cnn", "--image-size", "32",
               "--num-workers", "0", "--loader", "torch", "--no-progress", "--dropout", "0", "--batch-size", "4",
               "--epochs", "2", "--out", str(tmp_path), "--name", "two"]
    machines = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
    logs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(log[-3000:] for log in logs)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["nproc"] == 2 and config["global_batch_size"] == 8
    assert history(tmp_path / "two") == history(nproc_run)
    a = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    b = torch.load(nproc_run / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_resume_on_two_processes_is_exact(data_dir, tmp_path):
    # Dropout, pseudo-fakes and the EMA make each process's random streams part of the state to resume.
    options = dict(TWO, dropout=0.5, pseudo_fakes=0.5, ema=0.9)
    run_train(data_dir, out=tmp_path, name="straight", epochs=2, **options)
    run_train(data_dir, out=tmp_path, name="split", epochs=1, **options)
    resumed = run_train(data_dir, resume=tmp_path / "split", epochs=2, nproc=2, progress=False)
    assert resumed["epochs_run"] == 2
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for part in ("model", "train_model"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert history(tmp_path / "straight") == history(tmp_path / "split")
    assert all(torch.equal(x["cpu"], y["cpu"]) for x, y in zip(a["rng_ranks"], b["rng_ranks"], strict=True))
    assert not torch.equal(a["rng_ranks"][0]["cpu"], a["rng_ranks"][1]["cpu"])  # a stream per process


def test_resume_with_another_process_count_is_refused(two_process_run, data_dir, tmp_path):
    _, _, run_dir = two_process_run
    with pytest.raises(ValueError, match=r"trained by 2 process\(es\) .* not by 1: resume with --nproc 2"):
        run_train(data_dir, resume=run_dir, epochs=3, progress=False)
    run_train(data_dir, out=tmp_path, name="one", epochs=1, **dict(TINY, batch_size=8))
    with pytest.raises(ValueError, match=r"trained by 1 process\(es\) .* not by 2: resume with --nproc 1"):
        run_train(data_dir, resume=tmp_path / "one", epochs=2, nproc=2, progress=False)


def test_ghost_cnn_with_region_loss_trains_on_two_processes(tmp_path):
    from test_region_loss import _coded

    data_dir = _coded(make_ghost_prepared(tmp_path / "data", n_per_class=8))
    n_train = len(read_manifest(data_dir, "train"))
    options = dict(model="ghost_cnn", image_size=96, width=8, batch_size=3, epochs=1, num_workers=0, region_loss=1.0,
                   ghost_shift=1, ema=0.9, progress=False, nproc=2)
    summary = launch(2, recorded_train, tmp_path, data_dir, tmp_path, "ghosts", options)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text())["1"] for r in (0, 1)]
    assert records[0]["weights"] == records[1]["weights"]  # the region head is averaged too
    first, second = records[0]["indices"], records[1]["indices"]
    assert len(first) == len(second) == n_train // 2 // 3 * 3 and not set(first) & set(second)
    checkpoint = torch.load(tmp_path / "ghosts" / "last.pt", weights_only=True)
    assert checkpoint["aux_loss"] is not None and not any(k.startswith("module.") for k in checkpoint["aux_loss"])
    assert summary["loader"] == "jpeg-ghosts-memory" and history(tmp_path / "ghosts")[0]["train_loss"] > 0


def test_a_failing_process_stops_the_run_with_its_error():
    with pytest.raises(ValueError, match=r"^file x\.jpg is bad: fix it \(training process 1 of 2\)$"):
        launch(2, fails_on_rank_one, "file x.jpg is bad: fix it")


def test_options_of_a_group_are_checked_before_it_starts(data_dir, tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        run_train(data_dir, out=tmp_path, name="taken", **TWO)
    with pytest.raises(ValueError, match="--nproc 0 must be at least 1"):
        run_train(data_dir, out=tmp_path, **dict(TWO, nproc=0))
    # under torchrun the processes are torchrun's: --nproc may only repeat their number
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="--nproc 2, but this is one of 4 processes started by torchrun"):
        run_train(data_dir, out=tmp_path, **TWO)


def test_sweep_runs_its_configurations_on_two_processes(data_dir, tmp_path):
    from realfake.jobs.tasks.sweep import run_sweep

    spec = tmp_path / "spec.toml"
    spec.write_text('seeds = [0]\n[train]\nmodel = "simple_cnn"\nimage_size = 32\nbatch_size = 4\nepochs = 1\n'
                    'loader = "torch"\nnum_workers = 0\n[[configs]]\nname = "tiny"\n')
    sweep = dict(data_dir=data_dir, spec=spec, set_options=["nproc=2"], progress=False)
    run_sweep(tmp_path / "sweep", **sweep)
    run_dir = tmp_path / "sweep" / "runs" / "tiny-seed0"
    assert json.loads((run_dir / "config.json").read_text())["nproc"] == 2
    assert "--nproc 2" in (tmp_path / "sweep" / "results.md").read_text()
    (run_dir / "sweep_done.json").unlink()  # stopped after its last checkpoint: the rerun resumes it
    run_sweep(tmp_path / "sweep", **sweep)
    assert len(json.loads((run_dir / "config.json").read_text())["resumed"]) == 1
