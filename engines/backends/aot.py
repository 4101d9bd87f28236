"""aot backend: torch.export with a dynamic batch dimension, compiled and packaged by AOTInductor.

    ep = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch", min=MIN, max=MAX)},))
    torch._inductor.aoti_compile_and_package(ep, package_path="model.pt2")   # at build
    runner = torch._inductor.aoti_load_package("model.pt2")                  # at load: ~0.1 s

The compiled path that runs on CPU and GPU without compiling at load time. The package holds
machine code for one device type and one torch version (engine.json records both; load_engine
refuses a mismatch). Build on the device the engine is for.

Batch 1: torch.export specializes a dimension whose *example* size is 0 or 1 (the "0/1
specialization"), so the example batch is at least 2; Dim(min=1) itself is accepted (torch >= 2.3).
A range with MAX 1 is exported static.

Precision: fp16/bf16 engines export the model with its weights converted to that dtype, wrapped so
that the graph takes float32 images and returns float32 logits (CastInput). Weight conversion, not
autocast, because the exported graph then holds only the reduced-precision kernels; the parity
check at build measures what that costs.

On the CPU, inductor's `freezing` folds the weights into constants and pre-packs them for oneDNN.
The input stays NCHW-contiguous (channels_last is off): inductor picks its own layouts inside, and
an AOTInductor package assumes the strides it was traced with, so one fixed layout is safest.

Crash isolation: the compile, a load of the package and one call run in a child process
(`python -m realfake.engines.backends.aot PROGRAM PACKAGE ...`). AOTInductor builds have killed the
interpreter with SIGSEGV (docs/gpu-h200.md); in a child, that becomes a `BackendCrash` naming the
signal and the way out, and `engine build --backend auto` moves on to the next backend. The child
costs a torch import, small against a build.
"""
from __future__ import annotations

import argparse
import copy
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from realfake.engines.backends.common import PRECISION_DTYPES, BackendCrash, CastInput, compiler_missing

NAME = "aot"
ARTIFACT = "model.pt2"
CHANNELS_LAST = False


def unavailable_reason(device: str) -> str | None:
    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        return f"torch {torch.__version__} has no AOTInductor packaging (needs torch >= 2.6)"
    return compiler_missing(device)


def example_batch_size(batch) -> int:
    """An example batch inside the range that torch.export does not specialize (>= 2 when MAX allows)."""
    return min(max(2, batch.opt), batch.max)


def dynamic_shapes(batch) -> tuple[dict[int, Any]] | None:
    """torch.export's dynamic_shapes for the one positional input: batch dimension dynamic within
    [MIN, MAX]; None (static) when the range is a single size."""
    if batch.min == batch.max:
        return None
    return ({0: torch.export.Dim("batch", min=batch.min, max=batch.max)},)


def exportable(model: torch.nn.Module, precision: str, device: str) -> torch.nn.Module:
    """A copy of `model` on `device` in eval mode, converted to `precision` behind a float32 interface."""
    model = copy.deepcopy(model).to(device).eval()
    if precision == "fp32":
        return model
    dtype = PRECISION_DTYPES[precision]
    return CastInput(model.to(dtype), dtype).eval()


def inductor_configs(device: str) -> dict[str, Any]:
    return {"freezing": True} if not str(device).startswith("cuda") else {}


def export(model: torch.nn.Module, example: torch.Tensor, batch, precision: str, device: str):
    """The ExportedProgram of the engine: float32 (N, C, H, W) -> float32 logits, N in the batch range."""
    n = example_batch_size(batch)
    images = torch.randn(n, *example.shape[1:], device=device, dtype=torch.float32)
    return torch.export.export(exportable(model, precision, device), (images,), dynamic_shapes=dynamic_shapes(batch))


def build(model: torch.nn.Module, example: torch.Tensor, batch, precision: str, out_dir: Path, *,
          device: str) -> str:
    out_dir = Path(out_dir)
    program = export(model, example, batch, precision, device)
    program_path = out_dir / "exported.pt2"
    torch.export.save(program, str(program_path))
    try:
        compile_in_child(program_path, out_dir / ARTIFACT, device=device, input_shape=tuple(example.shape[1:]),
                         check_batch=example_batch_size(batch), what=f"the {precision} engine on {device}")
    except BaseException:
        (out_dir / ARTIFACT).unlink(missing_ok=True)  # a half-written package must not outlive a fallback
        raise
    finally:
        program_path.unlink(missing_ok=True)
    return ARTIFACT


def child_command(program: Path, package: Path, device: str, input_shape: Sequence[int],
                  check_batch: int) -> list[str]:
    return [sys.executable, "-m", __name__, str(program), str(package), "--device", device,
            "--input-shape", ",".join(str(d) for d in input_shape), "--check-batch", str(check_batch),
            "--inductor-configs", json.dumps(inductor_configs(device))]


def compile_in_child(program: Path, package: Path, *, device: str, input_shape: Sequence[int], check_batch: int,
                     what: str) -> None:
    """Compile, load and call the package in a child process (see the module docstring); raise
    BackendCrash when the child dies by a signal, RuntimeError with its last lines when it fails."""
    command = child_command(program, package, device, input_shape, check_batch)
    result = subprocess.run(command, capture_output=True, text=True)
    tail = "\n".join(result.stderr.strip().splitlines()[-8:])
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        raise BackendCrash(
            f"AOTInductor crashed ({name}) while compiling {what} (torch {torch.__version__}); nothing was "
            "written. Build with --backend compile or --backend eager, or another --precision"
            + (f". Its last output:\n{tail}" if tail else ""))
    if result.returncode != 0:
        raise RuntimeError(f"AOTInductor could not compile {what} (exit {result.returncode}):\n{tail}")


def _compile_load_and_call(program_path: str, package_path: str, device: str, input_shape: Sequence[int],
                           check_batch: int, configs: Mapping[str, Any]) -> None:
    program = torch.export.load(program_path)
    torch._inductor.aoti_compile_and_package(program, package_path=package_path, inductor_configs=dict(configs))
    runner = load_package(package_path, device)
    with torch.inference_mode():
        runner(torch.randn(check_batch, *input_shape, device=device))
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compile an exported program into an AOTInductor package, "
                                                 "then load it and call it once (run by build()).")
    parser.add_argument("program")
    parser.add_argument("package")
    parser.add_argument("--device", required=True)
    parser.add_argument("--input-shape", required=True, help="C,H,W of one input")
    parser.add_argument("--check-batch", type=int, required=True)
    parser.add_argument("--inductor-configs", default="{}")
    args = parser.parse_args(argv)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    _compile_load_and_call(args.program, args.package, args.device, shape, args.check_batch,
                           json.loads(args.inductor_configs))


def load_package(package: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    index = torch.device(device).index
    if index is not None:
        return torch._inductor.aoti_load_package(package, device_index=index)
    return torch._inductor.aoti_load_package(package)


def load(engine_dir: Path, meta: Mapping[str, Any], device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return load_package(str(Path(engine_dir) / meta["artifact"]["file"]), device)


if __name__ == "__main__":
    main()
