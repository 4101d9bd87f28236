"""Run the standalone GPU scripts of this folder from a checkout where realfake is not installed
(a bare GPU host): `python benchmarks/gpu_check.py ...` imports this module from its own folder."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("pipelines", "models", "engines", "jobs", "benchmarks")


def import_realfake(probe: str = "realfake.pipelines.spec") -> str:
    """Make `realfake.*` importable: the installed package, else a package of symlinks to this
    checkout's folders (what pyproject's package-dir mapping does on install). Says which."""
    import importlib

    try:
        importlib.import_module(probe)
        return "installed"
    except ImportError:
        pass
    shim = Path(tempfile.mkdtemp(prefix="realfake-shim-")) / "realfake"
    shim.mkdir()
    (shim / "__init__.py").write_text("")
    for folder in TOP_LEVEL:
        (shim / folder).symlink_to(REPO / folder, target_is_directory=True)
    sys.path.insert(0, str(shim.parent))
    # child processes too (the aot backend compiles in one: python -m realfake.engines.backends.aot)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")]))
    for name in [m for m in sys.modules if m == "realfake" or m.startswith("realfake.")]:
        del sys.modules[name]
    importlib.import_module(probe)
    return f"shim over {REPO}"
