"""Where a job runs and in which precision.

bf16 is chosen only where the hardware computes it natively (CUDA GPUs with bf16; CPUs with
AVX512-BF16 or AMX): elsewhere it is emulated and runs many times slower than fp32, so nothing here
ever assumes it.
"""
from __future__ import annotations

import logging

import torch
from realfake.engines.schema import PRECISIONS

log = logging.getLogger(__name__)

PRECISION_CHOICES = (*PRECISIONS, "auto")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; checks "cpu" / "cuda[:N]"."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for a GPU but torch sees none: use --device cpu")
        return device
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return device


def cpu_has_bf16_units() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); without, bf16 is emulated
    and runs many times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 natively (see the module docstring)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16_units()


def resolve_precision(precision: str, device: str) -> tuple[str, str]:
    """(precision, why): `auto` is bf16 where the device computes it natively, fp16 on GPUs without
    bf16, fp32 elsewhere. An engine build's parity check still applies to what is chosen."""
    if precision != "auto":
        return precision, "asked for"
    if str(device).startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU computes bf16 natively"
        return "fp16", "auto: the GPU has no bf16, fp16 instead"
    if cpu_has_bf16_units():
        return "bf16", "auto: the CPU has bf16 units (AVX512-BF16/AMX)"
    return "fp32", "auto: the CPU has no bf16 units"


def check_precision(precision: str, device: str) -> None:
    """Refuse precisions that cannot run well on `device`; warn about slow ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    on_gpu = str(device).startswith("cuda")
    if precision == "fp16" and not on_gpu:
        # CPUs have no fast fp16 arithmetic (oneDNN runs it through slow reference kernels).
        raise ValueError("--precision fp16 needs a CUDA device: on a CPU use fp32, or bf16 where the CPU has "
                         "bf16 units (AVX512-BF16/AMX)")
    if precision == "bf16" and not on_gpu and not cpu_has_bf16_units():
        log.warning("bf16 on this CPU (no AVX512-BF16/AMX units) is emulated and runs many times slower than "
                    "fp32: prefer --precision fp32")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16 is not supported by {torch.cuda.get_device_name()}: use fp16")
