"""The built-in sweep specs, one TOML file each (`realfake sweep --preset NAME`; `--show-preset NAME`
prints one to copy and edit). Reading them imports nothing heavy."""
from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    return sorted(p.name[:-len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def text(name: str) -> str:
    """The TOML of preset `name`."""
    if name not in names():
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(names())}")
    return resources.files(__name__).joinpath(f"{name}.toml").read_text()
