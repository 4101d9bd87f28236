"""DALI feeds ghost engines: DALI decodes, the ghost maps are computed on the engine's device.

`realfake score --loader dali` (and `auto` on a GPU for "dct" engines) with a ghost engine: DALI decodes
each JPEG (`mixed` on a GPU: nvJPEG / the hardware decoder; the CPU decoder without one) to RGB in stored
orientation (`adjust_orientation=False`: the maps describe the file's own 8x8 grid), the file's tables,
sampling and EXIF orientation come from its header (`jpeg_headers`, read on the host, tens of
microseconds a file), and the maps are computed where the decoded pixels are. No PIL on the way. The
engine's kind decides which maps:

- "pil": `jpeg_ghosts_exact.maps_of_inputs`, the reference maps bit for bit from the decoded RGB. DALI's
  CPU decoder gives PIL's RGB bit for bit, so these are the reference maps exactly (tested); a GPU
  decoder's RGB may round differently from libjpeg (docs/ghost-maps.md).
- "dct": `jpeg_ghosts_torch.maps_of_inputs(color="rgb")`. DALI's decoders give RGB (DALI's
  `output_type=types.YCbCr` is computed from that RGB, in ITU-R BT.601's limited range: Y = 16 + 0.859
  Y_file, not the decoder's planes). The maps' "keep" channels need the decoder's own YCbCr planes;
  rounding the JFIF inverse of the decoded RGB recovers them for 98.6-99.99% of the pixels of CIPLAB
  files, so these keep maps follow the PIL-draft path's closely but not exactly (docs/ghost-maps.md: the
  correlation); the 30 quality maps are the same.

The GPU decoder is asked for libjpeg-turbo's "fancy" chroma upsampling, as PIL decodes.

Files DALI should not see go to the host path (`ghost_inputs.prepare_file`, what the torchvision path
runs): a header that does not parse (not a JPEG, corrupt, truncated: the host names the reason), JPEGs
the device maps do not handle (their reference maps; for "dct" engines counted in `fallbacks`), and
images too large or too small. Files whose data DALI cannot decode are found and reported as
`DaliLoader` does.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from realfake.pipelines import jpeg_ghosts_exact
from realfake.pipelines.dali_loader import PREFETCH_QUEUE_DEPTH, READER, DaliLoader, fn, pipeline_def, types
from realfake.pipelines.ghost_inputs import decoded_input
from realfake.pipelines.ghost_loaders import CollateMaps, GhostMapDataset, log_fallbacks
from realfake.pipelines.images import too_large
from realfake.pipelines.jpeg_ghosts import BLOCK, CHANNELS, check_kind, grid_cells
from realfake.pipelines.jpeg_ghosts_torch import maps_of_inputs, mcu_crop
from realfake.pipelines.jpeg_headers import JpegHeaderError, fast_maps_problem, keep_tables, read_header
from realfake.pipelines.spec import Batch
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

HOST_WORKERS_FROM = 32  # host-path files from which they are prepared by worker processes


def _ghost_graph(files, labels, shard_id, num_shards, gpu, hw_decoder_load):

    encoded, index = fn.readers.file(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                                     random_shuffle=False, pad_last_batch=True, name=READER)
    if gpu:
        decoded = fn.decoders.image(encoded, device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load,
                                    jpeg_fancy_upsampling=True, adjust_orientation=False)
    else:
        decoded = fn.decoders.image(encoded, device="cpu", output_type=types.RGB, adjust_orientation=False)
    return decoded, index


def ghost_pipeline(**kwargs):
    """`@pipeline_def` over `_ghost_graph`: decoded RGB (H, W, 3) in stored orientation and each file's
    position, in file order."""
    return pipeline_def(_ghost_graph)(**kwargs)


class DaliGhostLoader(DaliLoader):
    """Eval loader of ghost maps of `kind` over one shard of `files` (Loader protocol): DALI decodes, the
    maps are computed on `device`. `fallbacks` counts "dct" files given the reference maps."""

    ragged = (True, False)  # decoded images of any size; positions

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, image_size: int, batch_size: int,
                 num_workers: int, shard_id: int, num_shards: int, device: str, kind: str = "dct"):
        super().__init__(files, labels, train=False, image_size=image_size, batch_size=batch_size, augment=None,
                         num_workers=num_workers, seed=0, shard_id=shard_id, num_shards=num_shards, device=device,
                         fancy_upsampling=True, screen=False)
        self.kind = check_kind(kind)
        self.backend = f"{self.backend}-ghosts-{kind}"
        self.map_device = torch.device("cpu") if self.device_id is None else torch.device("cuda", self.device_id)
        self.shard_positions = list(self.positions)
        self.headers: dict[int, tuple[torch.Tensor, int, int]] = {}  # position -> keep tables, sampling, orientation
        self.host: list[int] | None = None  # positions the host path takes; None until the headers are read
        self.fallbacks = 0

    def __len__(self) -> int:
        return -(-len(self.shard_positions) // self.batch_size)

    def _screen(self) -> None:
        """Read every header of the shard once: DALI gets the files the device maps handle, the host the rest
        (for "pil" maps also grayscale files, which the exact maps leave to the reference)."""
        if self.host is not None:
            return
        self.host, fast = [], []
        for position in self.shard_positions:
            path = self.files[position]
            try:
                header = read_header(path)
            except (OSError, JpegHeaderError):
                self.host.append(position)
                continue
            side = min(header.width, self.image_size), min(header.height, self.image_size)
            unhandled = fast_maps_problem(header) is not None or (self.kind == "pil" and header.color != "ycbcr")
            if unhandled or too_large(header.width, header.height) or min(side) < BLOCK:
                self.host.append(position)
                continue
            self.headers[position] = (torch.tensor(keep_tables(header), dtype=torch.float32), header.pil_subsampling,
                                      header.orientation)
            fast.append(position)
        self.fixed_positions = fast  # what DALI decodes in every pass

    def _pass_files(self) -> tuple[list[str], list[int], int, int]:
        return [self.files[p] for p in self.positions], list(self.positions), 0, 1

    def _pipeline(self, files, labels, shard_id, num_shards, attempt: int, n_batches: int):
        pipe = ghost_pipeline(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                              gpu=self.device_id is not None, hw_decoder_load=self.hw_decoder_load,
                              batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                              seed=self._pipeline_seed(attempt), prefetch_queue_depth=min(PREFETCH_QUEUE_DEPTH, n_batches))
        pipe.build()
        return pipe

    def _make_batch(self, images, indices: torch.Tensor, errors: tuple[tuple[int, str], ...]) -> Batch:
        inputs = []
        for image, position in zip(images, indices.tolist(), strict=True):
            rgb = mcu_crop(image.permute(2, 0, 1), self.image_size).contiguous()
            inputs.append(decoded_input(self.kind, rgb, *self.headers[position]))
        if self.kind == "pil":
            maps = jpeg_ghosts_exact.maps_of_inputs(inputs, self.image_size, device=self.map_device)
        else:
            maps = maps_of_inputs(inputs, self.image_size, device=self.map_device, color="rgb")
        return Batch(maps, self.labels[indices], indices, errors)

    def _empty_images(self) -> torch.Tensor:
        cells = grid_cells(self.image_size)
        return torch.empty((0, CHANNELS, cells, cells))

    def _host_batches(self) -> Iterator[Batch]:
        dataset = GhostMapDataset(self.files, self.labels.tolist(), self.host, self.image_size, kind=self.kind)
        workers = self.num_threads if len(self.host) >= HOST_WORKERS_FROM else 0
        for batch in DataLoader(dataset, batch_size=self.batch_size, num_workers=workers,
                                collate_fn=CollateMaps(self.image_size)):
            self.fallbacks += log_fallbacks(batch, self.files)
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        self._screen()
        if self.host:
            yield from self._host_batches()
        yield from super().__iter__()


def make_dali_ghost_loader(files: Sequence[str], labels: Sequence[int] | None, *, image_size: int, batch_size: int,
                           num_workers: int, shard_id: int, num_shards: int, device: str,
                           kind: str = "dct") -> DaliGhostLoader:
    """DALI loader of ghost maps of `kind` (`loaders.get_loader(..., input="ghosts", ghost_maps=kind,
    backend="dali")` calls this): every readable file of the shard exactly once, as Batch of maps on
    `device`; `num_workers` is DALI's CPU thread count."""
    return DaliGhostLoader(files, labels, image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                           shard_id=shard_id, num_shards=num_shards, device=device, kind=kind)
