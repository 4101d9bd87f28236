"""NVIDIA DALI loader: the product's data path. On a GPU it decodes with nvJPEG / the hardware JPEG
decoder (`decoders.image(device="mixed")`) and augments and resizes on the device; without a GPU the
same graph runs on the CPU (`device_id=None`).

Modelled on DALI's `docs/examples/use_cases/pytorch/resnet50/main.py`: one `@pipeline_def` per mode
(train, eval) with a cpu/gpu switch and `fn.readers.file(..., shard_id, num_shards, pad_last_batch=True)`.
The reader's label output carries the file's position in the loader's list, so every batch knows its
`indices` (exactly-once checks, score rows) and the labels are looked up from it. A pass is driven by
`pass_batches` rather than `DALIGenericIterator`: the pipeline is rebuilt every pass (its seed is a
function of the epoch), and the stock iterator keeps runs scheduled past the end of the epoch.

Parity with the torchvision backend (`torch_loader.py`, tested): decode to RGB (grey, palette, CMYK,
alpha all become 3 channels), resize to (image_size, image_size) with a linear filter that is
antialiased when shrinking (PIL's BILINEAR), round to uint8, normalize with MEAN/STD to float CHW.

Train augmentation follows `AugmentSpec` and the report's order, at decoded resolution: rotation
(nearest, black fill, same canvas: torchvision's RandomRotation defaults), flip, brightness/contrast
(contrast around the image's mean grey level, as ColorJitter), Gaussian blur with probability
`blur_p`, then resize and normalize.

One module, though long: the `@pipeline_def` graphs and the loader that rebuilds them around a bad
file (screen, retry, the rest of the shard as a list of its own) change together.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from realfake.pipelines.images import DEFAULT_MAX_PIXELS, InvalidImageError, check_image, too_large
from realfake.pipelines.spec import MEAN, STD, AugmentSpec, Batch, shard_range, train_shard

try:  # DALI is optional: without it this module still imports, and dali_available() says no
    from nvidia.dali import backend as dali_backend
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.backend import TensorGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
except ImportError:
    dali_backend = fn = pipeline_def = types = TensorGPU = feed_ndarray = to_torch_type = None

log = logging.getLogger(__name__)

READER = "Reader"
# Batches decoded ahead of the one in use (DALI's default).
PREFETCH_QUEUE_DEPTH = 2
# Share of the JPEG work given to the hardware decoder (A100/H100/H200) in `mixed` mode: all of it, the
# fastest setting for baseline JPEGs (docs/gpu-h200.md has the figures against DALI's default 0.65).
# Progressive JPEGs cannot use the hardware decoder, whatever this says. Ignored on the CPU.
DEFAULT_HW_DECODER_LOAD = 1.0
# ITU-R 601 luma weights: the grey level ColorJitter's contrast blends towards (PIL's "L" mode).
LUMA = (0.299, 0.587, 0.114)


def dali_available() -> bool:
    """NVIDIA DALI can be imported here."""
    return fn is not None


def cuda_available_for_dali() -> bool:
    """DALI sees at least one CUDA device (asks DALI itself, so torch's CUDA state is not touched)."""
    if not dali_available():
        return False
    try:
        return dali_backend.GetCUDADeviceCount() > 0
    except RuntimeError:  # no driver
        return False


def _device_id(device: str) -> int | None:
    """"cpu" -> None (DALI's CPU-only mode); "cuda" / "cuda:N" / "gpu" -> the CUDA device index."""
    device = str(device)
    if device == "cpu":
        return None
    if device in ("cuda", "gpu"):
        index = 0
    elif device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
    else:
        raise ValueError(f"unknown device {device!r} for the DALI loader: use cpu, cuda or cuda:N")
    if not cuda_available_for_dali():
        raise ValueError(f"device {device} asked for, but DALI sees no CUDA device: use --device cpu")
    return index


# --------------------------------------------------------------------------- pipelines (graph pieces)

def _decode(encoded, gpu: bool, hw_decoder_load: float, fancy_upsampling: bool = False):

    if gpu:
        # `mixed`: parsing on the CPU, decoding on the GPU (hardware decoder for baseline JPEGs).
        # nvJPEG's default chroma upsampling is simpler than libjpeg-turbo's, so colour edges differ a little
        # from torchvision's tensors; `fancy_upsampling` matches libjpeg-turbo more closely, at a decode
        # cost not measured yet (docs/gpu-h200.md), so it is off by default.
        return fn.decoders.image(encoded, device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load,
                                 jpeg_fancy_upsampling=fancy_upsampling)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)


def _resize(images, image_size: int):

    # Linear + antialias = PIL's BILINEAR when shrinking (a triangle filter widened by the scale).
    return fn.resize(images, size=(image_size, image_size), interp_type=types.INTERP_LINEAR, antialias=True)


def _normalize(images, mirror=None):

    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW",
        mean=[255.0 * m for m in MEAN], std=[255.0 * s for s in STD],
        mirror=0 if mirror is None else mirror,
    )


def _color_jitter(images, brightness: float, contrast: float):
    """ColorJitter(brightness, contrast): out = b * (m + c * (x - m)), m = the image's mean grey level,
    b and c uniform in [1 - brightness, 1 + brightness] and [1 - contrast, 1 + contrast]; saturated to uint8.

    (Brightness-then-contrast gives the same formula, so ColorJitter's random order does not matter.)
    Spelled as arithmetic rather than `fn.brightness_contrast`, whose per-image `contrast_center` must
    be a CPU argument input: this way one formula runs on both devices (and is faster on the CPU too).
    """

    # A zero jitter is the constant 1 (DALI refuses an empty range).
    b = fn.random.uniform(range=(1.0 - brightness, 1.0 + brightness)) if brightness > 0 else 1.0
    c = fn.random.uniform(range=(1.0 - contrast, 1.0 + contrast)) if contrast > 0 else 1.0
    channel_means = fn.reductions.mean(images, axes=(0, 1), dtype=types.FLOAT)
    grey_mean = fn.reductions.sum(channel_means * types.Constant(np.float32(LUMA)))
    # On the GPU, DALI moves the per-sample CPU scalars b and c into the expression itself.
    # The cast rounds and saturates, as PIL's uint8 blend does.
    return fn.cast(b * (grey_mean + c * (images - grey_mean)), dtype=types.UINT8)


def _train_graph(files, labels, shard_id, num_shards, image_size, augment: AugmentSpec | None, gpu,
                 hw_decoder_load, fancy_upsampling=False, shuffle=True):

    # shuffle=False: `files` are in the epoch's order already (a shard of a data-parallel run).
    encoded, index = fn.readers.file(
        files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
        random_shuffle=shuffle, pad_last_batch=True, name=READER,
    )
    images = _decode(encoded, gpu, hw_decoder_load, fancy_upsampling)
    if augment is None:  # shuffled, not augmented
        return _normalize(_resize(images, image_size)), index
    if augment.rotation_deg > 0:
        images = fn.rotate(
            images, angle=fn.random.uniform(range=(-augment.rotation_deg, augment.rotation_deg)),
            keep_size=True, fill_value=0, interp_type=types.INTERP_NN,
        )
    if augment.brightness > 0 or augment.contrast > 0:
        images = _color_jitter(images, augment.brightness, augment.contrast)
    if augment.blur_p > 0:
        # Conditional execution: only the chosen images pay for the blur (the costliest step on a CPU).
        if fn.random.coin_flip(probability=augment.blur_p):
            kernel_w, kernel_h = augment.blur_kernel  # torchvision order (x, y); DALI wants (H, W)
            images = fn.gaussian_blur(
                images, window_size=(kernel_h, kernel_w),
                sigma=fn.random.uniform(range=augment.blur_sigma),
            )
    images = _resize(images, image_size)
    # The flip is done last, inside the normalization (free): brightness/contrast and blur act the same
    # on a mirrored image (symmetric kernel, global mean), and so does the resize, so this equals
    # flipping right after the rotation as the report does.
    mirror = fn.random.coin_flip(probability=augment.hflip_p) if augment.hflip_p > 0 else None
    return _normalize(images, mirror), index


def _eval_graph(files, labels, shard_id, num_shards, image_size, gpu, hw_decoder_load, fancy_upsampling=False):

    encoded, index = fn.readers.file(
        files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
        random_shuffle=False, pad_last_batch=True, name=READER,
    )
    images = _resize(_decode(encoded, gpu, hw_decoder_load, fancy_upsampling), image_size)
    return _normalize(images), index


def train_pipeline(**kwargs):
    """`@pipeline_def(enable_conditionals=True)` over `_train_graph`."""
    return pipeline_def(enable_conditionals=True)(_train_graph)(**kwargs)


def eval_pipeline(**kwargs):
    """`@pipeline_def` over `_eval_graph`: decode, resize, normalize; in file order."""
    return pipeline_def(_eval_graph)(**kwargs)


# --------------------------------------------------------------------------- running one pass

def _to_torch(tensor, exec_dynamic: bool) -> torch.Tensor:
    """A dense DALI TensorCPU/TensorGPU as a torch tensor, as DALIGenericIterator converts it: shared
    through DLPack under the dynamic executor (which keeps the buffer alive), copied otherwise."""
    gpu = isinstance(tensor, TensorGPU)
    device = torch.device("cuda", tensor.device_id()) if gpu else torch.device("cpu")
    if exec_dynamic:
        with device:
            return torch.from_dlpack(tensor)
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
    feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device) if gpu else None)
    return out


def _to_torch_samples(tensor_list) -> list[torch.Tensor]:
    """The samples of a DALI TensorList of samples of different shapes, each copied into its own torch
    tensor (on the list's device): what outlives `release_outputs`."""
    out = []
    for i in range(len(tensor_list)):
        sample = tensor_list[i]
        if isinstance(sample, TensorGPU):
            with torch.device("cuda", sample.device_id()):
                out.append(torch.from_dlpack(sample).clone())
        else:
            out.append(torch.from_numpy(np.array(sample)))
    return out


def pass_batches(pipe, n_batches: int, n_samples: int, started: bool = False,
                 ragged: tuple[bool, ...] = ()) -> Iterator[tuple[torch.Tensor, ...]]:
    """The outputs of `n_batches` runs of a built pipeline whose reader holds `n_samples` samples
    (`pad_last_batch=True`), as torch tensors, the padding cut off the last batch. `started`: the
    first `schedule_run` was made already (`DaliLoader.prepare`). `ragged[k]`: output k holds samples
    of different shapes (decoded images of any size): it comes as a list of tensors, one per sample.

    Exactly `n_batches` runs are scheduled: the first `schedule_run` queues `prefetch_queue_depth` of
    them (at most `n_batches`, see `DaliLoader._pipeline`), and one more follows each batch taken until
    the pass is covered. DALIGenericIterator keeps that many runs going past the end of the epoch, for
    the next one; for a pipeline that lives one pass they are waste, which on a short pass costs a large
    share of its time.
    """
    scheduled = pipe.prefetch_queue_depth
    if not started:
        pipe.schedule_run()
    for b in range(n_batches):
        outputs = [_to_torch_samples(out) if k < len(ragged) and ragged[k] else _to_torch(out.as_tensor(), pipe.exec_dynamic)
                   for k, out in enumerate(pipe.share_outputs())]
        pipe.release_outputs()
        if scheduled < n_batches:  # the next batch decodes while this one is used
            pipe.schedule_run()
            scheduled += 1
        if b == n_batches - 1:
            keep = n_samples - b * pipe.max_batch_size
            outputs = [out[:keep] for out in outputs]
        yield tuple(outputs)


# --------------------------------------------------------------------------- finding undecodable files

def _dali_decode_error(path: str) -> str | None:
    """Decode one file with a one-sample CPU pipeline; the DALI error's last line, or None if it decodes."""

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def probe():
        encoded, _ = fn.readers.file(files=[path])
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    try:
        pipe = probe()
        pipe.build()
        pipe.run()
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "no longer valid" not in ln]
        return f"not decodable by DALI ({lines[-1] if lines else 'unknown error'})"
    return None


def find_undecodable(paths: Sequence[str], chunk_size: int = 64) -> list[tuple[int, str]]:
    """(position in `paths`, reason) of the files that cannot be decoded, looking chunk by chunk and
    stopping at the first chunk with a hit (the failing batch is near the front of what was pending).

    `check_image` (PIL, the data-prepare check) names the problem; files it accepts are then tried with
    DALI's own CPU decoder, which is what actually failed.
    """
    for checker in ("pil", "dali"):
        for start in range(0, len(paths), chunk_size):
            found = []
            for pos in range(start, min(start + chunk_size, len(paths))):
                if checker == "pil":
                    try:
                        check_image(paths[pos])
                    except InvalidImageError as exc:
                        found.append((pos, exc.reason))
                else:
                    reason = _dali_decode_error(paths[pos])
                    if reason is not None:
                        found.append((pos, reason))
            if found:
                return found
    return []


def screen_headers(paths: Sequence[str], num_threads: int = 2, batch_size: int = 256,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[tuple[int, str]]:
    """(position in `paths`, reason) of the files whose header DALI cannot parse, and of those whose
    header shows more pixels than the torchvision path accepts (`images.too_large`: "too large").

    Why a screen before decoding: DALI 2.4's `decoders.image` (nvImageCodec) can kill the process with
    SIGSEGV in a worker thread, instead of raising, when a file of a multi-image batch fails at format
    detection or header parsing (text saved as .jpg; a JPEG or PNG signature followed by garbage).
    `fn.peek_image_shape` parses the same headers and raises cleanly, so it runs first, once per
    loader, without decoding (about one file read per image). Files whose header parses but whose data
    is bad (truncated, corrupt scan) make the decoder raise normally: `DaliLoader.__iter__` handles those.
    """

    bad: list[tuple[int, str]] = []
    start = 0
    while start < len(paths):
        rest = list(paths[start:])
        size = min(batch_size, len(rest))

        # Synchronous, unpipelined execution: when run() number k raises, batch k holds the bad file.
        @pipeline_def(batch_size=size, num_threads=num_threads, device_id=None, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False, exec_dynamic=False)
        def peek(rest=rest):
            encoded, _ = fn.readers.file(files=rest, pad_last_batch=True)
            return fn.peek_image_shape(encoded)

        pipe = peek()
        pipe.build()
        done = 0
        try:
            while done < len(rest):
                (shapes,) = pipe.run()
                heights_widths = np.asarray(shapes.as_array())[: len(rest) - done, :2]
                bad += [(start + done + i, "too large") for i, (h, w) in enumerate(heights_widths.tolist())
                        if too_large(w, h, max_pixels)]
                done += size
            break
        except RuntimeError as exc:
            first = start + done
            found = find_undecodable(paths[first:first + size])
            if not found:
                raise RuntimeError(f"DALI could not parse a header among {paths[first]}... but every file of "
                                   f"that batch decodes alone: {exc}") from exc
            bad += [(first + pos, reason) for pos, reason in found]
            start = first + max(pos for pos, _ in found) + 1  # files before it were checked by find_undecodable
        finally:
            del pipe
    return bad


# --------------------------------------------------------------------------- the loader

# Operators whose failure can be caused by one input file (as named in DALI's error message).
_FILE_OPS = ("fn.decoders.image", "fn.readers.file")


class DaliLoader:
    """Iterable of `Batch` over one shard of `files`; see `make_dali_loader`. Subclasses with another graph
    override `_pipeline`, `_make_batch` and `_empty_images` (and set `ragged` for outputs of samples of
    different shapes, see `pass_batches`)."""

    ragged: tuple[bool, ...] = ()

    def __init__(self, files: Sequence[str], labels: Sequence[int] | None, *, train: bool, image_size: int,
                 batch_size: int, augment: AugmentSpec | None, num_workers: int, seed: int, shard_id: int,
                 num_shards: int, device: str, hw_decoder_load: float = DEFAULT_HW_DECODER_LOAD,
                 fancy_upsampling: bool = False, screen: bool = True):
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels: pass one label per file")
        if not 0.0 <= hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load {hw_decoder_load} must be within [0, 1]")
        self.files = [str(f) for f in files]
        self.labels = torch.full((len(self.files),), -1, dtype=torch.int64) if labels is None else \
            torch.as_tensor(list(labels), dtype=torch.int64)
        self.shard_id, self.num_shards = shard_id, num_shards
        self.fixed_positions = shard_range(len(self.files), shard_id, num_shards)
        # A train loader of one of several processes reads its share of each epoch's permutation of all
        # the files (`spec.train_shard`); its reader gets them arranged so that its own shard_id/num_shards
        # cut gives that share (`_reader_order`).
        self.sharded_train = train and num_shards > 1
        self.train, self.image_size, self.batch_size = train, image_size, batch_size
        self.augment = augment if train else None
        self.num_threads = max(1, num_workers)
        self.seed, self.epoch = seed, 0
        self.device_id = _device_id(device)
        self.backend = "dali-cpu" if self.device_id is None else "dali-gpu"
        self.hw_decoder_load, self.fancy_upsampling = hw_decoder_load, fancy_upsampling
        # Train drops a ragged last batch like the torchvision loader (a batch of one breaks BatchNorm).
        self.drop_last = train and len(self.positions) > batch_size
        self.errors: list[tuple[int, str]] = []  # undecodable files met during the current pass
        # Header screen (see screen_headers): once per loader, its result kept for every pass. `screen=False`
        # skips it for files already validated (a manifest from `data prepare` checked every file).
        self.screened: list[tuple[int, str]] | None = None if screen else []
        self._prepared = None  # (epoch, pipeline already running) from prepare()

    def set_epoch(self, epoch: int) -> None:
        """Shuffle and augmentation of a pass are a pure function of (seed, epoch, shard)."""
        self.epoch = epoch

    @property
    def positions(self) -> Sequence[int]:
        """The positions in self.files this shard reads in the current pass."""
        if self.sharded_train:
            return train_shard(len(self.files), self.seed, self.epoch, self.shard_id, self.num_shards)
        return self.fixed_positions

    def _reader_order(self) -> list[int]:
        """Every shard's share of this epoch, shard after shard: the reader's contiguous cut for shard k
        (`shard_range`, equal-sized here) is then shard k's `train_shard`."""
        return [p for shard in range(self.num_shards)
                for p in train_shard(len(self.files), self.seed, self.epoch, shard, self.num_shards)]

    def __len__(self) -> int:
        return self._n_batches(len(self.positions))

    def _n_batches(self, n_samples: int) -> int:
        return n_samples // self.batch_size if self.drop_last else math.ceil(n_samples / self.batch_size)

    def _pass_size(self, files, shard_id: int, num_shards: int) -> tuple[int, int]:
        """(samples, batches) a reader over `files` gives this shard."""
        n_samples = len(shard_range(len(files), shard_id, num_shards))
        return n_samples, self._n_batches(n_samples)

    def _pipeline_seed(self, attempt: int) -> int:
        state = np.random.SeedSequence([self.seed, self.epoch, self.shard_id, attempt]).generate_state(1)
        return int(state[0] & 0x7FFFFFFF)

    def _pipeline(self, files, labels, shard_id, num_shards, attempt: int, n_batches: int):
        common = dict(
            files=files, labels=labels, shard_id=shard_id, num_shards=num_shards, image_size=self.image_size,
            gpu=self.device_id is not None, hw_decoder_load=self.hw_decoder_load,
            fancy_upsampling=self.fancy_upsampling, batch_size=self.batch_size, num_threads=self.num_threads,
            device_id=self.device_id, seed=self._pipeline_seed(attempt),
            prefetch_queue_depth=min(PREFETCH_QUEUE_DEPTH, n_batches),
        )
        pipe = train_pipeline(augment=self.augment, shuffle=not self.sharded_train, **common) if self.train \
            else eval_pipeline(**common)
        pipe.build()
        return pipe

    def _screen(self) -> None:
        if self.screened is None:
            # A sharded train loader's files change every epoch: it screens them all, once.
            positions = range(len(self.files)) if self.sharded_train else self.positions
            shard = [self.files[p] for p in positions]
            self.screened = [(positions[i], reason)
                             for i, reason in screen_headers(shard, num_threads=self.num_threads)]
            for index, reason in self.screened:
                log.warning("skipping %s: %s", self.files[index], reason)

    def _pass_files(self) -> tuple[list[str], list[int], int, int]:
        """(files, labels, shard_id, num_shards) for the reader of a pass's first pipeline. The reader
        shards the whole list itself (as on a multi-GPU job); once a file is known to be bad, the rest
        of this shard is read as a list of its own. Labels are positions in self.files."""
        if not self.screened:
            if self.sharded_train:
                order = self._reader_order()
                return [self.files[p] for p in order], order, self.shard_id, self.num_shards
            return self.files, list(range(len(self.files))), self.shard_id, self.num_shards
        bad_set = {i for i, _ in self.screened}
        labels = [p for p in self.positions if p not in bad_set]
        return [self.files[p] for p in labels], labels, 0, 1

    def prepare(self) -> None:
        """Screen the headers and start the next pass's first pipeline now, decoding its first batches,
        so that a caller can get this loader ready while another one runs (scoring does, chunk after
        chunk: the pipeline build and the screen then overlap the previous chunk's decoding)."""
        if not self.positions or self._prepared is not None:
            return
        self._screen()
        files, labels, shard_id, num_shards = self._pass_files()
        _, n_batches = self._pass_size(files, shard_id, num_shards)
        if not files or n_batches == 0:
            return
        pipe = self._pipeline(files, labels, shard_id, num_shards, 0, n_batches)
        try:
            pipe.schedule_run()
        except RuntimeError:  # a bad file: __iter__ starts afresh and finds it
            return
        self._prepared = (self.epoch, pipe)

    def _take_prepared(self):
        prepared, self._prepared = self._prepared, None
        return prepared[1] if prepared is not None and prepared[0] == self.epoch else None

    def __iter__(self) -> Iterator[Batch]:
        if not self.positions:  # an empty shard (fewer files than shards)
            return
        self._screen()
        mine = set(self.positions)
        self.errors = [(i, reason) for i, reason in self.screened if i in mine]
        unreported = list(self.errors)  # reported with the first batch of every pass
        delivered: set[int] = set()
        files, labels, shard_id, num_shards = self._pass_files()
        prepared = self._take_prepared()
        attempt = 0
        while files:
            n_samples, n_batches = self._pass_size(files, shard_id, num_shards)
            if n_batches == 0:
                break
            try:
                pipe = prepared if prepared is not None else \
                    self._pipeline(files, labels, shard_id, num_shards, attempt, n_batches)
                started, prepared = prepared is not None, None
                for images, index in pass_batches(pipe, n_batches, n_samples, started, self.ragged):
                    indices = index.reshape(-1).to(torch.int64)
                    delivered.update(indices.tolist())
                    yield self._make_batch(images, indices, tuple(unreported))
                    unreported = []
                break
            except RuntimeError as exc:
                # DALI stops the whole pipeline on one undecodable (or unreadable) file and does not say
                # which: find it among the files not delivered yet, record it, go on with the others.
                if not any(op in str(exc) for op in _FILE_OPS):
                    raise
                bad_set = {i for i, _ in self.errors}
                pending = [p for p in self.positions if p not in delivered and p not in bad_set]
                found = find_undecodable([self.files[p] for p in pending])
                if not found:
                    raise RuntimeError(f"DALI pipeline failed and no undecodable file was found: {exc}") from exc
                for pos, reason in found:
                    log.warning("skipping %s: %s", self.files[pending[pos]], reason)
                    self.errors.append((pending[pos], reason))
                    unreported.append((pending[pos], reason))
                bad_set = {i for i, _ in self.errors}
                labels = [p for p in pending if p not in bad_set]
                files = [self.files[p] for p in labels]
                shard_id, num_shards = 0, 1
                attempt += 1
        if unreported:  # nothing left to carry them: an empty batch reports them
            none = torch.empty(0, dtype=torch.int64)
            yield Batch(self._empty_images(), none, none, tuple(unreported))

    def _make_batch(self, images: torch.Tensor, indices: torch.Tensor, errors: tuple[tuple[int, str], ...]) -> Batch:
        """The Batch of one pipeline run: its images, the files' positions in `files`, the errors to report."""
        return Batch(images, self.labels[indices].to(images.device), indices, errors)

    def _empty_images(self) -> torch.Tensor:
        return torch.empty((0, 3, self.image_size, self.image_size))


def make_dali_loader(files: Sequence[str], labels: Sequence[int] | None, *, train: bool, image_size: int,
                     batch_size: int, augment: AugmentSpec | None, num_workers: int, seed: int, shard_id: int,
                     num_shards: int, device: str, hw_decoder_load: float = DEFAULT_HW_DECODER_LOAD,
                     fancy_upsampling: bool = False, screen: bool = True) -> DaliLoader:
    """DALI loader over `files` (the factory `loaders.get_loader(..., backend="dali")` calls this).

    device "cpu" runs DALI's CPU-only mode; "cuda[:N]" decodes with `mixed` on that GPU and returns
    CUDA images. Train loaders shuffle (and augment when `augment` is given), eval loaders keep file
    order; each pass delivers every readable file of the shard exactly once (train: minus a ragged
    last batch). `num_workers` is DALI's CPU thread count. `screen=False` skips the header screen
    (`screen_headers`) for files known to be valid. `fancy_upsampling` makes the GPU decoder upsample
    chroma as libjpeg-turbo (and so PIL and DALI's CPU mode) does; the CPU decoder always does.
    """
    return DaliLoader(files, labels, train=train, image_size=image_size, batch_size=batch_size, augment=augment,
                      num_workers=num_workers, seed=seed, shard_id=shard_id, num_shards=num_shards, device=device,
                      hw_decoder_load=hw_decoder_load, fancy_upsampling=fancy_upsampling, screen=screen)
