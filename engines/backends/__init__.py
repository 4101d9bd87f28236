"""One inference backend per file, behind one small interface:

    NAME, ARTIFACT                                   registry name, artifact file name
    CHANNELS_LAST                                    whether the engine feeds it channels_last input
    unavailable_reason(device) -> str | None         why it cannot run on `device` here (None: it can)
    build(model, example, batch, precision, out_dir, *, device) -> str   writes the artifact, returns its name
    load(engine_dir, meta, device) -> callable       float32 images on `device` -> logits

- eager:    the state dict (`model.pt`); rebuilt by architecture name at load; fp16/bf16 by autocast.
- compile:  the same artifact, torch.compile'd at load.
- aot:      torch.export with a dynamic batch dimension, packaged by AOTInductor (`model.pt2`);
            loads without compiling. Tied to the torch version that built it.
- tensorrt: Torch-TensorRT's dynamo path, saved as an ExportedProgram (`model.ep`). CUDA only.

Backend modules import only `common.py` of this package, never the modules that choose among them.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

# Registry name -> module in this package. Order = preference of `auto`.
BACKEND_MODULES = {"tensorrt": "tensorrt", "aot": "aot", "compile": "compiled", "eager": "eager"}
BACKENDS = tuple(BACKEND_MODULES)
BACKEND_CHOICES = ("auto", *BACKENDS)
# Backends whose artifact is compiled code: only the torch (and Torch-TensorRT) that built it runs it.
COMPILED_ARTIFACT_BACKENDS = ("aot", "tensorrt")


def backend_module(name: str):
    """The module of backend `name` (imported on first use: TensorRT's needs CUDA libraries)."""
    if name not in BACKEND_MODULES:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    return importlib.import_module(f"{__name__}.{BACKEND_MODULES[name]}")


def resolve_backend(choice: str, device: str, crashed: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(backend, why): `auto` takes the first of tensorrt > aot > compile > eager that can run on
    `device` and is not in `crashed` (backend -> why its build crashed); a named backend that cannot
    raises ValueError saying what to install or use."""
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {choice!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if choice != "auto":
        reason = backend_module(choice).unavailable_reason(device)
        if reason:
            raise ValueError(f"--backend {choice} cannot run on {device} here: {reason}")
        return choice, f"--backend {choice}"
    passed = []
    for name in BACKENDS:
        reason = (crashed or {}).get(name) or backend_module(name).unavailable_reason(device)
        if reason is None:
            why = f"auto: best available on {device}"
            return name, why + (f" (passed over {'; '.join(passed)})" if passed else "")
        passed.append(f"{name}: {reason}")
    raise AssertionError("the eager backend runs everywhere")
