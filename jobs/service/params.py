"""Parameter types shared by the job functions and the job-spec validator.

A job function's signature is its spec: the validator reads these annotations to check a TOML spec
(key names, types, paths that must exist) before anything is queued.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

InputPath = Annotated[Path, "input"]  # must exist when the spec is submitted
OutputPath = Annotated[Path, "output"]  # created by the job
