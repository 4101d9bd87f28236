"""The process group of a data-parallel training run: torch.distributed with DistributedDataParallel,
one process per share of the CPU cores (gloo) or per GPU (nccl).

The processes are started by `torchrun` or by realfake's own launcher (`jobs/tasks/launch.py`, the same
elastic machinery in process), which set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
and MASTER_PORT; `init` joins the group they describe. Every other helper is also right in a process
that is not part of a group: it is then rank 0 of 1, and sums, averages and checks change nothing.

What is kept in step and how (the trainer calls these):
- gradients: DDP averages them over the processes in backward (`wrap`), so every process takes the
  same optimizer step and holds the same weights;
- BatchNorm: each process normalizes with its own batch statistics and keeps its own running
  statistics during an epoch (no SyncBatchNorm: gloo cannot run it, and a per-process batch is
  what the single-process recipes normalize over anyway); at the end of every epoch the running
  statistics are averaged over the processes (`average_buffers`, as timm's distribute_bn), so that
  every process validates, and rank 0 saves, the same model;
- metrics: sums and counts are all-reduced (`sum_all`), never means of means;
- `check_same_weights` all-gathers a digest of the weights after every epoch and stops the run if
  the processes disagree, which DDP alone would never report.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import logging
import os
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Long enough for the slowest step one process may take while the others wait at a collective: its
# share of the JPEG ghost maps, a whole validation pass.
TIMEOUT = dt.timedelta(hours=2)


def launched() -> bool:
    """Whether this process was started as one process of a group (torchrun, or `launch`)."""
    return all(key in os.environ for key in LAUNCH_ENV)


def launched_world_size() -> int:
    """The WORLD_SIZE this process was launched with (1 when it was not)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that prints, and writes the run directory."""
    return rank() == 0


def check_devices(device: str, local_processes: int) -> None:
    """One-line errors for a device that cannot hold `local_processes` processes of this machine: on
    CUDA each takes one GPU (cuda:LOCAL_RANK of those CUDA_VISIBLE_DEVICES shows)."""
    if not device.startswith("cuda") or local_processes == 1:
        return
    if device != "cuda":
        raise ValueError(f"--device {device} names one GPU, but {local_processes} processes take one GPU each: "
                         "use --device cuda (CUDA_VISIBLE_DEVICES chooses the GPUs)")
    count = torch.cuda.device_count()
    if count < local_processes:
        raise ValueError(f"{local_processes} training processes on this machine need {local_processes} GPUs, but "
                         f"torch sees {count}: use --nproc {count}, or --device cpu")


def init(device: str) -> str:
    """Join the process group this process was launched into; returns its device: cuda:LOCAL_RANK on a
    CUDA run (nccl), else the CPU (gloo), where the machine's cores are shared among its processes
    (unless OMP_NUM_THREADS says otherwise)."""
    local_rank = int(os.environ["LOCAL_RANK"])
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    check_devices(device, local_processes)
    if device.startswith("cuda"):
        if device == "cuda" or local_processes > 1:
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
        backend = "nccl"
    else:
        backend = "gloo"
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_processes))
    if not is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT,
                                device_id=torch.device(device) if backend == "nccl" else None)
    log.info("process %d of %d on %s (%s)", rank(), world_size(), device, backend)
    return device


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where tensors of a collective live: nccl moves CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(value, src: int = 0):
    """`value` of rank `src`, on every process."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value) -> list:
    """Every process's `value`, in rank order."""
    if not is_initialized():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def sum_all(values: Sequence[float]) -> list[float]:
    """The sums over the processes of `values` (float64); the values themselves in a single process."""
    if world_size() == 1:
        return list(values)
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(total)
    return total.tolist()


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm's running statistics) by its mean over the
    processes; integer buffers (batches counted) are the same on every process already."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        if torch.is_floating_point(buffer):
            dist.all_reduce(buffer)
            buffer.div_(world_size())


def state_digest(*modules: torch.nn.Module | None) -> str:
    """sha256 of the bytes of every tensor of the modules' state dicts."""
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_same_weights(*modules: torch.nn.Module | None, when: str) -> None:
    """Stop with an error naming the processes whose weights differ from rank 0's."""
    if world_size() == 1:
        return
    digests = all_gather_object(state_digest(*modules))
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(f"training processes {', '.join(map(str, differ))} hold other weights than process 0 "
                           f"{when}: the data-parallel run lost step")


def wrap(module: torch.nn.Module, device: str) -> DistributedDataParallel:
    """`module` in DDP: gradients averaged over the processes in backward. Buffers are not broadcast
    before every forward; `average_buffers` makes them agree at the end of each epoch."""
    device_ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    # Newer torch names the switch forward_sync_buffers (which still syncs the buffers once, at init).
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=device_ids, **no_sync)


def unwrap(module):
    """The module inside a DDP wrapper (the module itself otherwise)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def seed_process(seed: int) -> None:
    """Give this process its own global random stream (dropout masks): rank 0 keeps the one
    torch.manual_seed(seed) started, as a single process does; the others draw from (seed, rank)."""
    if rank() > 0:
        torch.manual_seed(zlib.crc32(f"{seed}:rank{rank()}".encode()))


def rng_state() -> dict:
    """This process's global random state (CPU, and its current GPU's)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
