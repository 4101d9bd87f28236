"""What outputs record about how and where they were made: content hashes, the software's versions,
the CPU cores a process may use.

Imports nothing heavy at its top (torch only inside `versions`), so light commands can use it.
"""
from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks so that big files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def dist_version(prefix: str) -> str | None:
    """The version of the installed distribution named `prefix` or `prefix-*` (e.g. "nvidia-dali" finds
    nvidia-dali-cuda130), read from its metadata: importing DALI costs seconds and may need a driver."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == prefix or name.startswith(prefix + "-"):
            return dist.version
    return None


def versions(*extra: str) -> dict[str, str | None]:
    """Python, torch (with its build tag), torchvision, DALI and realfake, plus the distributions in `extra`."""
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "nvidia-dali", "realfake", *extra):
        found["dali" if name == "nvidia-dali" else name] = dist_version(name)
    return found


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
