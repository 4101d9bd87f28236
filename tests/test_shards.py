"""Training shards of a data-parallel run, one loader per process, in one process: every backend reads
the same share of each epoch's permutation (DistributedSampler's), equal-sized and disjoint, with
augmentation streams of its own; pseudo-fakes draw per process."""
import importlib.util

import pytest
import torch
from _train_helpers import make_ghost_image, make_images
from realfake.pipelines.loaders import get_loader
from realfake.pipelines.pseudo_fakes import train_batch_transform
from realfake.pipelines.spec import AugmentSpec, shard_of, train_shard
from torch.utils.data import DistributedSampler

N = 23  # not a multiple of 2 or 3: the cut to equal shards shows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("shards"), N)


def shards(make, num_shards, epoch):
    """Per shard: the indices its loader delivers in `epoch`, and its len()."""
    out = []
    for shard in range(num_shards):
        loader = make(shard_id=shard, num_shards=num_shards)
        loader.set_epoch(epoch)
        out.append(([i for b in loader for i in b.indices.tolist()], len(loader)))
    return out


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_train_shards_are_distributed_samplers_cut_of_one_permutation(num_shards):
    parts = [train_shard(N, 5, 2, shard, num_shards) for shard in range(num_shards)]
    permutation = torch.randperm(N, generator=torch.Generator().manual_seed(5 * 100_003 + 2)).tolist()
    assert all(len(p) == N // num_shards for p in parts)
    assert sorted(i for p in parts for i in p) == sorted(permutation[:N // num_shards * num_shards])
    assert parts == [permutation[s:N // num_shards * num_shards:num_shards] for s in range(num_shards)]
    assert parts == [shard_of(torch.tensor(permutation), s, num_shards).tolist() for s in range(num_shards)]
    sampler = DistributedSampler(range(N), num_replicas=num_shards, rank=num_shards - 1, shuffle=True,
                                 seed=5 * 100_003, drop_last=True)
    sampler.set_epoch(2)
    assert list(sampler) == parts[-1]
    assert train_shard(N, 5, 3, 0, num_shards) != parts[0]  # another epoch, another permutation


BACKENDS = ["torch", "memory-cache"] + (["dali"] if importlib.util.find_spec("nvidia.dali") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_pixel_backend_reads_its_train_shard(files, backend):
    def make(**shard):
        return get_loader(files, [i % 2 for i in range(N)], train=True, backend="torch" if backend == "memory-cache"
                          else backend, cache="memory" if backend == "memory-cache" else "none", image_size=32,
                          batch_size=3, augment=None, num_workers=0, seed=7, progress=False, **shard)

    for epoch in (1, 2):
        read = shards(make, 2, epoch)
        for shard, (indices, length) in enumerate(read):
            # 11 files a shard, batches of 3: the ragged batch is dropped, as in one process
            assert length == 3 and len(indices) == 9
            assert sorted(indices) == sorted(train_shard(N, 7, epoch, shard, 2)[:9])
        assert not set(read[0][0]) & set(read[1][0])
    assert shards(make, 2, 1) != shards(make, 2, 2)


def test_torch_loader_of_one_process_reads_the_whole_permutation(files):
    loader = get_loader(files, [0] * N, train=True, backend="torch", image_size=32, batch_size=N, num_workers=0,
                        seed=7)
    loader.set_epoch(4)
    assert next(iter(loader)).indices.tolist() == train_shard(N, 7, 4, 0, 1)


def copies(path, folder, n):
    """n copies of one file: batches of them differ by their augmentation only."""
    out = []
    for i in range(n):
        copy = folder / f"copy_{i:02d}.jpg"
        copy.write_bytes(path.read_bytes())
        out.append(str(copy))
    return out


def test_cached_loader_augments_each_shard_with_its_own_draws(files, tmp_path):
    from pathlib import Path

    same = copies(Path(files[0]), tmp_path, 8)

    def first_batch(shard_id, num_shards):
        loader = get_loader(same, [0] * 8, train=True, backend="torch", cache="memory", image_size=32, batch_size=4,
                            augment=AugmentSpec(), num_workers=0, seed=7, progress=False, shard_id=shard_id,
                            num_shards=num_shards)
        loader.set_epoch(1)
        return next(iter(loader)).images

    first, second = first_batch(0, 2), first_batch(1, 2)
    assert not torch.allclose(first, second)  # one shared stream would augment both alike
    assert torch.equal(first, first_batch(0, 2))
    assert torch.equal(first_batch(0, 1), first)  # process 0 keeps a single process's draws


def test_ghost_map_train_loader_shards_and_flips_per_process(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for i in range(9):
        path = tmp_path / f"g{i}.jpg"
        make_ghost_image(path, i % 2, rng, size=32)
        paths.append(str(path))

    def make(files=paths, **shard):
        return get_loader(files, [i % 2 for i in range(len(files))], train=True, input="ghosts", image_size=32,
                          batch_size=4, augment=object(), seed=3, num_workers=0, progress=False, **shard)

    read = shards(make, 2, 1)
    assert [length for _, length in read] == [1, 1]  # 4 files a shard, one batch of 4
    assert not set(read[0][0]) & set(read[1][0]) and len(read[0][0]) == len(read[1][0]) == 4
    whole = make()
    whole.set_epoch(1)
    order = [i for b in whole for i in b.indices.tolist()]
    assert read[0][0] == order[0:8:2] and read[1][0] == order[1:8:2]  # one epoch order, cut in two

    same = copies(tmp_path / "g1.jpg", tmp_path, 8)

    def mirrored(shard_id):
        loader = make(same, shard_id=shard_id, num_shards=2)
        loader.set_epoch(1)
        maps, plain = next(iter(loader)).images, loader.maps[0].float()
        assert all(torch.equal(m, plain) or torch.equal(m, plain.flip(2)) for m in maps)
        return [torch.equal(m, plain.flip(2)) for m in maps]

    assert mirrored(0) != mirrored(1)  # one shared stream would flip both shards alike
    assert mirrored(0) == mirrored(0)


@pytest.mark.parametrize("rank", [1, 2])
def test_pseudo_fakes_draw_per_process(rank):
    images = torch.randn(8, 3, 64, 64)
    labels = torch.tensor([0] * 8)
    single = train_batch_transform(seed=0, pseudo_fakes=1.0)
    torch.manual_seed(0)
    base = single(images, labels, 1, 0)
    same = train_batch_transform(seed=0, pseudo_fakes=1.0, rank=0)(images, labels, 1, 0)
    other = train_batch_transform(seed=0, pseudo_fakes=1.0, rank=rank)(images, labels, 1, 0)
    assert torch.equal(base[0], same[0])  # rank 0 is a single process's stream
    assert not torch.equal(base[0], other[0])
    assert torch.equal(other[0], train_batch_transform(seed=0, pseudo_fakes=1.0, rank=rank)(images, labels, 1, 0)[0])
