"""torchvision (PIL) loader: the fallback backend, and the reference the DALI backend is compared to.

Compare torchvision `references/classification` (`load_data`) and DeepLearningExamples'
`get_pytorch_train_loader`: a Dataset over files, PIL transforms, a DataLoader with workers.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch
from realfake.pipelines import launder as laundering
from realfake.pipelines.images import InvalidImageError, load_rgb
from realfake.pipelines.spec import MEAN, STD, AugmentSpec, Batch, shard_range
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T


def build_transform(image_size: int, augment: AugmentSpec | None) -> T.Compose:
    """The report's preprocessing; with `augment`, its Model 2.2 augmentation in the report's order
    (at decoded resolution, before the resize)."""
    steps = []
    if augment is not None:
        steps += [
            T.RandomRotation(augment.rotation_deg),
            T.RandomHorizontalFlip(augment.hflip_p),
            T.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
            T.RandomApply([T.GaussianBlur(kernel_size=augment.blur_kernel, sigma=augment.blur_sigma)],
                          p=augment.blur_p),
        ]
    steps += [resize(image_size), T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def resize(image_size: int) -> T.Resize:
    # PIL's bilinear resize is antialiased; DALI's resize uses the same filter (parity is tested).
    return T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def build_uint8_transform(image_size: int) -> T.Compose:
    """build_transform without augmentation, stopped before ToTensor/Normalize: a uint8 (3, S, S) tensor,
    which `normalize_uint8` turns into exactly what build_transform(image_size, None) gives."""
    return T.Compose([resize(image_size), T.PILToTensor()])


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """A uint8 (N, 3, S, S) batch as ToTensor + Normalize make it, image by image: the same float32
    operations in the same order (divide by 255, subtract the mean, divide by the std), so bit-identical."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


class ImageFileDataset(Dataset):
    """Decodes one file per item. A file that fails to decode becomes an error entry, not an exception,
    so one bad file never costs the rest of its batch."""

    def __init__(self, files, labels, positions, transform, draft_size, seed, launder: float = 0.0):
        self.files, self.labels, self.positions = files, labels, positions
        self.transform, self.draft_size = transform, draft_size
        self.seed, self.epoch, self.launder = seed, 0, launder

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        index = self.positions[i]
        label = -1 if self.labels is None else int(self.labels[index])
        try:
            image = load_rgb(self.files[index], draft_size=self.draft_size, data=self._laundered(index))
        except InvalidImageError as exc:
            return None, label, index, exc.reason
        # Augmentation is a pure function of (seed, epoch, file): the same with any worker count,
        # and exact after --resume. Only the CPU generator is seeded: torch.manual_seed also queues a
        # CUDA seed with a formatted stack trace each call, which costs more than the seeding itself.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode()))
            tensor = self.transform(image)
        return tensor, label, index, None


    def _laundered(self, index: int) -> bytes | None:
        """The bytes of this epoch's laundered copy of file `index` (`launder.drawn`), or None for the file
        as saved (also when the transform cannot take the file: a crop or downscale of a tiny image)."""
        transform = laundering.drawn(self.seed, self.epoch, index, self.launder) if self.launder else None
        if transform is None:
            return None
        try:
            return laundering.launder_file(self.files[index], transform)
        except ValueError:  # InvalidImageError included: the plain decode reports a bad file
            return None


def collate(items) -> Batch:
    good = [it for it in items if it[0] is not None]
    errors = tuple((index, reason) for image, _, index, reason in items if image is None)
    if good:
        images = torch.stack([it[0] for it in good])
    else:
        images = torch.empty(0)
    return Batch(
        images=images,
        labels=torch.tensor([it[1] for it in good], dtype=torch.int64),
        indices=torch.tensor([it[2] for it in good], dtype=torch.int64),
        errors=errors,
    )


class TorchLoader:
    backend = "torch"

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, train: bool, image_size: int,
                 batch_size: int, augment: AugmentSpec | None, num_workers: int, seed: int, shard_id: int,
                 num_shards: int, device: str, draft: bool, launder: float = 0.0):
        # Eval shards are contiguous and together deliver every file once; a train loader reads all files
        # and takes its share of each epoch's permutation (`spec.train_shard`: DistributedSampler).
        positions = list(range(len(files)) if train else shard_range(len(files), shard_id, num_shards))
        # Draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale: much cheaper when the target is small.
        draft_size = (image_size, image_size) if draft else None
        self.num_workers, self.pin_memory = num_workers, str(device).startswith("cuda")
        # Eval batches for the CPU leave the workers as uint8 and are normalized here, a batch at a time:
        # a quarter of the bytes through shared memory and no per-image float ops in the workers. Batches
        # for a GPU stay float from pinned memory.
        self.uint8 = not train and not self.pin_memory
        transform = build_uint8_transform(image_size) if self.uint8 else build_transform(
            image_size, augment if train else None)
        self.dataset = ImageFileDataset(list(files), labels, positions, transform, draft_size, seed,
                                        launder if train else 0.0)
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.sampler = DistributedSampler(self.dataset, num_replicas=num_shards, rank=shard_id, shuffle=True,
                                          seed=seed * 100_003, drop_last=True) if train else None
        n = len(self.sampler) if train else len(positions)
        # Train drops a ragged last batch (a batch of one breaks BatchNorm; the shuffle changes each epoch).
        self.drop_last = train and n > batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        n = len(self.sampler) if self.train else len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        # The DataLoader draws its workers' base seed from `generator`: the caller's random stream is left
        # alone (the augmentation does not use that seed: see ImageFileDataset).
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=self.drop_last,
            num_workers=self.num_workers, collate_fn=collate, pin_memory=self.pin_memory,
            generator=generator, persistent_workers=False,
        )
        for batch in loader:
            if batch.images.dtype == torch.uint8:  # an all-errors batch holds an empty float tensor
                batch = batch._replace(images=normalize_uint8(batch.images))
            yield batch


def make_torch_loader(files, labels, *, train, image_size, batch_size, augment, num_workers, seed, shard_id,
                      num_shards, device, draft=False, launder=0.0) -> TorchLoader:
    return TorchLoader(files, labels, train=train, image_size=image_size, batch_size=batch_size,
                       augment=augment, num_workers=num_workers, seed=seed, shard_id=shard_id,
                       num_shards=num_shards, device=device, draft=draft, launder=launder)
