"""tensorrt backend: Torch-TensorRT's dynamo path, saved as an ExportedProgram. CUDA only.

    trt_module = torch_tensorrt.compile(model, ir="dynamo",
                                        inputs=[torch_tensorrt.Input(min_shape=..., opt_shape=...,
                                                                     max_shape=..., dtype=...)],
                                        enabled_precisions={dtype})
    torch_tensorrt.save(trt_module, "model.ep", output_format="exported_program", ...)
    module = torch_tensorrt.load("model.ep").module()      # torch.export.load(...).module() before 2.5

torch_tensorrt is imported only when this backend builds or loads: its libraries install from
NVIDIA's package index, not PyPI, and need a CUDA driver. Where it is absent, building or loading
raises a ValueError that says how to install it, and `--backend auto` passes over it.

Checked against the Torch-TensorRT 2.x documentation, line by line (docs.pytorch.org/TensorRT:
user_guide/dynamic_shapes, user_guide/saving_models, user_guide/mixed_precision,
tutorials/_rendered_examples/dynamo/save_dynamic_shapes_example and _both_methods, and
py/torch_tensorrt/_compile.py of the current release):
- `torch_tensorrt.compile(module, ir="dynamo", inputs=[...], enabled_precisions={...})`: the
  documented signature (`inputs` and its alias `arg_inputs`; `ir="dynamo"` is the default path).
- `torch_tensorrt.Input(min_shape=, opt_shape=, max_shape=, dtype=)`: the documented dynamic-shape
  spec; TensorRT builds one optimization profile tuned for opt_shape. Shapes are full NCHW tuples.
- The model is on the GPU in eval mode before compile (every example does `.eval().cuda()`).
- Precision: the model is converted to the engine's dtype and the Input carries that dtype
  (mixed_precision guide: since TensorRT 10.12 networks are strongly typed and the graph's dtypes
  decide the kernels; in the current release `enabled_precisions` is no longer passed on the dynamo
  path). `enabled_precisions={dtype}` is still given, which is what weakly typed 2.x releases read.
  The engine casts float32 images to that dtype before the call and the logits back to float32.
- Save: `output_format="exported_program"` (the default). Releases whose `save` takes
  `dynamic_shapes` (current) get `arg_inputs=[example]` and `dynamic_shapes={"x": {0: Dim("batch",
  min, max)}}` with `retrace=True`, exactly the documented "Method 1"; older ones (<= 2.8: `save(trt_gm,
  path, inputs=inputs)`, retrace False by default) keep the compiled graph's symbolic batch as is.
  The key "x" is the models' forward argument name (realfake.models: every forward is `forward(self, x)`).
- Load: `torch_tensorrt.load(path).module()` (current docs) or `torch.export.load(path).module()`
  (2.4-era docs; importing torch_tensorrt registers the `tensorrt::execute_engine` op it needs).
- Not done: INT8/FP8 quantization, engine caching, CUDA graphs, DLA.
NOT RUN: no TensorRT was available where this was written (CPU-only machine; the GPU host had no
torch_tensorrt), so this backend's build/load path is checked against the docs only; its pure parts
(input spec, precision mapping, save arguments) are unit-tested, and tests/test_engines.py has an
integration test marked `tensorrt` that runs where torch_tensorrt and a GPU are present.
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from realfake.engines.backends.common import PRECISION_DTYPES

NAME = "tensorrt"
ARTIFACT = "model.ep"
CHANNELS_LAST = False  # TensorRT chooses its own layouts; the binding takes plain NCHW
INSTALL_HINT = ("the tensorrt backend needs torch-tensorrt built for this torch version: "
                "pip install 'realfake[tensorrt]' --extra-index-url https://pypi.nvidia.com "
                "(NVIDIA's index; not on PyPI for every platform), or use --backend aot")
FORWARD_ARG = "x"  # the input name of every realfake model's forward


def import_torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise ValueError(f"{INSTALL_HINT} ({exc.__class__.__name__}: {exc})") from None
    return torch_tensorrt


def unavailable_reason(device: str) -> str | None:
    if importlib.util.find_spec("torch_tensorrt") is None:
        return INSTALL_HINT
    if not str(device).startswith("cuda"):
        return "TensorRT runs on CUDA devices only: use --device cuda, or --backend aot on the CPU"
    return None


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype the model, its Input and its TensorRT kernels use for `precision`."""
    try:
        return PRECISION_DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_DTYPES)}") from None


def enabled_precisions(precision: str) -> set[torch.dtype]:
    return {precision_dtype(precision)}


def input_spec(batch, chw: Sequence[int], precision: str) -> dict[str, Any]:
    """Keyword arguments of the one torch_tensorrt.Input: NCHW shapes at MIN/OPT/MAX batch, (C, H, W) = chw."""
    chw = tuple(int(d) for d in chw)
    return {"min_shape": (batch.min, *chw), "opt_shape": (batch.opt, *chw), "max_shape": (batch.max, *chw),
            "dtype": precision_dtype(precision)}


def compile_kwargs(torch_tensorrt, batch, chw: Sequence[int], precision: str) -> dict[str, Any]:
    return {"ir": "dynamo", "inputs": [torch_tensorrt.Input(**input_spec(batch, chw, precision))],
            "enabled_precisions": enabled_precisions(precision)}


def save_kwargs(save_fn: Callable, example: torch.Tensor, batch) -> dict[str, Any]:
    """Arguments for torch_tensorrt.save that keep the batch dimension dynamic, for the installed release."""
    params = inspect.signature(save_fn).parameters
    kwargs: dict[str, Any] = {"output_format": "exported_program"}
    if "dynamic_shapes" in params:
        kwargs["arg_inputs" if "arg_inputs" in params else "inputs"] = [example]
        if batch.min != batch.max:
            kwargs["dynamic_shapes"] = {FORWARD_ARG: {0: torch.export.Dim("batch", min=batch.min, max=batch.max)}}
        if "retrace" in params:
            kwargs["retrace"] = True
    else:
        kwargs["inputs"] = [example]
        if "retrace" in params:
            kwargs["retrace"] = False
    return kwargs


def build(model: torch.nn.Module, example: torch.Tensor, batch, precision: str, out_dir: Path, *,
          device: str) -> str:
    torch_tensorrt = import_torch_tensorrt()
    if not str(device).startswith("cuda"):
        raise ValueError("the tensorrt backend builds on a CUDA device only: use --device cuda")
    dtype = precision_dtype(precision)
    model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    chw = tuple(example.shape[1:])
    trt_module = torch_tensorrt.compile(model, **compile_kwargs(torch_tensorrt, batch, chw, precision))
    # An example inside the profile that torch.export does not specialize (batch >= 2 where allowed).
    n = min(max(2, batch.opt), batch.max)
    sample = torch.randn(n, *chw, device=device, dtype=dtype)
    path = Path(out_dir) / ARTIFACT
    torch_tensorrt.save(trt_module, str(path), **save_kwargs(torch_tensorrt.save, sample, batch))
    return ARTIFACT


class _CastRunner:
    def __init__(self, module: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype):
        self.module, self.dtype = module, dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(self.dtype)).float()


def load(engine_dir: Path, meta: Mapping[str, Any], device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    torch_tensorrt = import_torch_tensorrt()
    path = str(Path(engine_dir) / meta["artifact"]["file"])
    loader = getattr(torch_tensorrt, "load", None) or torch.export.load
    module = loader(path).module()
    return _CastRunner(module, precision_dtype(meta["precision"]))
