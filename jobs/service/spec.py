"""Job specs: the kinds registry, TOML loading, and validation against the job function's signature.

A job function's typed signature *is* its spec (see `realfake.jobs.service.params`): the validator reads
`inspect.signature` and `typing.get_type_hints(include_extras=True)` and checks every key before
anything is queued — unknown keys, missing required keys, wrong types, input paths that do not exist.
The CLI flags of `realfake submit KIND ...` are generated from the same signature, so a TOML spec and
the flags are one thing.

A spec file is flat TOML: `kind` plus the function's keyword arguments under their Python names::

    kind = "score"
    folder = "incoming"          # relative paths are relative to the spec file's folder
    engine = "engines/model1"
    batch_size = 64

Kinds beyond the built-in ones (test doubles, site-local jobs) come from the environment variable
REALFAKE_EXTRA_KINDS="name=module:function,name2=module:function"; the worker and the runner child
both read it, so it must be set where they run.
"""
from __future__ import annotations

import difflib
import importlib
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from realfake.jobs.service.options import (
    LIST_ORIGINS,
    Param,
    describe,
    function_params,
    out_of_bounds,
    path_role,
    strip_optional,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KINDS: dict[str, str] = {
    "train": "realfake.jobs.tasks.train:run_train",
    "evaluate": "realfake.jobs.tasks.evaluate:run_evaluate",
    "engine-build": "realfake.jobs.tasks.engine:run_engine_build",
    "score": "realfake.jobs.tasks.score:run_score",
    "report": "realfake.jobs.tasks.report:run_report",
    "bench": "realfake.benchmarks.suites:run_bench",
    "sweep": "realfake.jobs.tasks.sweep:run_sweep",
    "pretrain": "realfake.jobs.tasks.pretrain:run_pretrain",
}
# One line per kind for `realfake submit --help`, so listing kinds never imports torch.
KIND_HELP: dict[str, str] = {
    "train": "Train a model on a prepared data directory.",
    "evaluate": "Evaluate a training run on its test split.",
    "engine-build": "Compile a training run into an inference engine.",
    "score": "Score an image folder with an engine (resumes where it stopped).",
    "report": "Write the HTML page of a score output (summary, histogram, table, errors).",
    "bench": "Run throughput benchmark suites.",
    "sweep": "Train and evaluate configurations over seeds; mean ± std table.",
    "pretrain": "Pretrain a backbone on real images vs self-blended pseudo-fakes.",
}
EXTRA_KINDS_ENV = "REALFAKE_EXTRA_KINDS"
# The key that names the kind in a spec file; every other key is an argument of the kind's function.
KIND_KEY = "kind"
# An OutputPath parameter with this name gets $REALFAKE_HOME/jobs/<id>/out when the spec omits it.
DEFAULT_OUT_PARAM = "out"



class SpecError(ValueError):
    """A job spec that cannot be queued: the message names the key, what was expected and the fix."""


@dataclass(frozen=True)
class JobSpec:
    """A validated spec: `args` hold JSON values (paths as absolute strings) ready for the store.

    `default_out` names the function's `out` parameter when the spec left it out, so that the store
    fills in the job's own output directory.
    """

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    default_out: str | None = None


def available_kinds() -> dict[str, str]:
    """The built-in kinds plus those of REALFAKE_EXTRA_KINDS (name -> "module:function")."""
    kinds = dict(KINDS)
    raw = os.environ.get(EXTRA_KINDS_ENV, "").strip()
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, target = entry.partition("=")
        if not sep or ":" not in target or not name.strip():
            raise SpecError(
                f"{EXTRA_KINDS_ENV} entry {entry!r} is not NAME=module:function: fix the environment variable"
            )
        kinds[name.strip()] = target.strip()
    return kinds


def load_kind(kind: str) -> Callable[..., dict]:
    """Import the job function of `kind`; a missing module gives a clear error, not a traceback."""
    kinds = available_kinds()
    if kind not in kinds:
        raise SpecError(f"unknown kind {kind!r}: choose one of {', '.join(sorted(kinds))}")
    module_name, _, attr = kinds[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"kind {kind!r} is not available: cannot import {module_name} ({exc})") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise SpecError(f"kind {kind!r} is not available: {module_name} has no function {attr!r}")
    return function


def kind_params(kind: str) -> list[Param]:
    """The options of a kind's function, in order (see `options.function_params`)."""
    function = load_kind(kind)
    try:
        return function_params(function)
    except Exception as exc:  # a NameError in a string annotation is the kind author's bug
        raise SpecError(f"kind {kind!r} is not available: its annotations do not resolve ({exc})") from exc


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


class _Mismatch(Exception):
    """Raised inside `_convert` when a value does not fit; turned into a SpecError naming the key."""


def _convert(value: Any, annotation: Any, base_dir: Path) -> Any:
    """Check `value` against `annotation`; return its JSON form (paths resolved against `base_dir`)."""
    inner, optional = strip_optional(annotation)
    if value is None:
        if optional:
            return None
        raise _Mismatch
    role = path_role(inner)
    if role is not None:
        if not isinstance(value, (str, Path)) or str(value) == "":
            raise _Mismatch
        path = Path(os.path.expanduser(str(value)))
        path = path if path.is_absolute() else base_dir / path
        path = Path(os.path.normpath(path))
        if role == "input" and not path.exists():
            raise FileNotFoundError(str(path))
        return str(path)
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    origin = typing.get_origin(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        for choice in typing.get_args(inner):
            if value == choice and type(value) is type(choice):
                return value
    elif origin in LIST_ORIGINS:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(inner)
            item_type = args[0] if args else Any
            return [_convert(item, item_type, base_dir) for item in value]
    elif origin in (typing.Union, types.UnionType):
        for member in typing.get_args(inner):
            try:
                return _convert(value, member, base_dir)
            except _Mismatch:
                continue
    elif inner is Any:
        return value
    elif isinstance(inner, type) and isinstance(value, inner):
        return value
    raise _Mismatch


def _example(name: str, annotation: Any) -> str:
    inner, _ = strip_optional(annotation)
    if path_role(inner):
        return f'{name} = "path/to/{name}"'
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    origin = typing.get_origin(inner)
    if inner is bool:
        return f"{name} = true"
    if inner is int:
        return f"{name} = 10"
    if inner is float:
        return f"{name} = 0.5"
    if origin is Literal:
        return f"{name} = {typing.get_args(inner)[0]!r}".replace("'", '"')
    if origin in LIST_ORIGINS:
        return f'{name} = ["a", "b"]'
    return f'{name} = "..."'


def validate_spec(kind: str, args: Mapping[str, Any], *, base_dir: Path | None = None,
                  source: str = "spec", cli: bool = False, positional: str | None = None) -> JobSpec:
    """Check `args` against the signature of `kind`'s function; return the spec ready for the store.

    `base_dir` anchors relative paths (the spec file's folder, or the current directory for CLI flags);
    `source` prefixes every error message (the spec file's name); `cli` words the fixes as flags (and
    `positional` names the parameter given as a command-line argument rather than a flag).
    Raises SpecError (a ValueError) naming the key, what was expected and the fix; FileNotFoundError
    is reported as a SpecError too, so nothing is queued on any bad key.
    """
    base_dir = Path(base_dir or Path.cwd()).resolve()
    params = {p.name: p for p in kind_params(kind)}

    def label(name: str) -> str:
        if cli and name == positional:
            return f"argument {name.upper()}"
        return f"option --{name.replace('_', '-')}" if cli else f"key {name!r}"

    def fix(name: str, annotation: Any) -> str:
        return f"pass --{name.replace('_', '-')}" if cli else f"write {_example(name, annotation)}"

    unknown = [key for key in args if key not in params]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, params, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(
            f"{source}: unknown key {key!r} for kind {kind!r}: {hint}"
            f"the keys of {kind!r} are {', '.join(params)}"
        )
    clean: dict[str, Any] = {}
    for name, value in args.items():
        annotation = params[name].annotation
        try:
            clean[name] = _convert(value, annotation, base_dir)
        except _Mismatch:
            raise SpecError(
                f"{source}: {label(name)} of kind {kind!r} must be {describe(annotation)}, "
                f"got {value!r} ({_type_name(value)}): {fix(name, annotation)}"
            ) from None
        except FileNotFoundError as exc:
            raise SpecError(
                f"{source}: {label(name)} of kind {kind!r}: {exc} does not exist: give an existing file or folder"
            ) from None
        bound = out_of_bounds(params[name], clean[name])
        if bound:
            raise SpecError(f"{source}: {label(name)} of kind {kind!r} must be {bound}, got {value!r}")
    out_param = params.get(DEFAULT_OUT_PARAM)
    # A job whose spec names no `out` gets its own output directory, even where the function has a
    # default: a default such as "benchmarks/results" would land wherever the worker happens to run.
    default_out = None
    if out_param is not None and path_role(out_param.annotation) == "output" and DEFAULT_OUT_PARAM not in clean:
        default_out = DEFAULT_OUT_PARAM
    for name, param in params.items():
        if param.required and name not in clean and name != default_out:
            raise SpecError(
                f"{source}: missing {label(name)} for kind {kind!r} ({describe(param.annotation)}): "
                f"{fix(name, param.annotation)}"
            )
    return JobSpec(kind=kind, args=clean, default_out=default_out)


def check_options(kind: str, options: Mapping[str, Any], *, fixed: tuple[str, ...] = (), source: str = "spec",
                  base_dir: Path | None = None) -> dict[str, Any]:
    """Some of `kind`'s options (a table of a sweep spec), checked as `validate_spec` checks a whole spec,
    without asking for the required ones; the `fixed` options are the caller's to set and refused here.
    Returns them in their JSON form (numbers as the option's type, paths absolute)."""
    if not isinstance(options, Mapping):
        raise SpecError(f"{source} must be a table of options, got {options!r}")
    base_dir = Path(base_dir or Path.cwd()).resolve()
    params = {p.name: p for p in kind_params(kind) if p.name not in fixed}
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{source}: unknown option {key!r}{hint}: use one of {', '.join(params)}")
        try:
            clean[key] = _convert(value, params[key].annotation, base_dir)
        except _Mismatch:
            raise SpecError(f"{source}: option {key!r} = {value!r} has the wrong type: expected "
                            f"{describe(params[key].annotation)}") from None
        except FileNotFoundError as exc:
            raise SpecError(f"{source}: option {key!r}: {exc} does not exist: give an existing file or folder") from None
        bound = out_of_bounds(params[key], clean[key])
        if bound:
            raise SpecError(f"{source}: option {key!r} must be {bound}, got {value!r}")
    return clean


def read_spec_file(path: Path) -> tuple[str, dict[str, Any]]:
    """(kind, raw arguments) of a TOML spec file, without validating the arguments."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML ({exc}): fix the syntax") from None
    except FileNotFoundError:
        raise SpecError(f"spec file {path} not found: check the path") from None
    except IsADirectoryError:
        raise SpecError(f"{path} is a folder: give a TOML spec file") from None
    kind = data.pop(KIND_KEY, None)
    if not isinstance(kind, str):
        raise SpecError(
            f'{path}: no {KIND_KEY!r} string: add a line such as kind = "score" '
            f"(kinds: {', '.join(sorted(available_kinds()))})"
        )
    return kind, data


def load_spec_file(path: Path) -> JobSpec:
    """Read and validate a TOML spec; relative paths in it are relative to the file's folder."""
    path = Path(path)
    kind, args = read_spec_file(path)
    return validate_spec(kind, args, base_dir=path.resolve().parent, source=str(path))


def call_kwargs(kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The stored JSON arguments of a job as the function takes them: path strings become Paths."""
    params = {p.name: p for p in kind_params(kind)}
    kwargs = {}
    for name, value in args.items():
        annotation = params[name].annotation if name in params else Any
        inner, _ = strip_optional(annotation)
        if value is not None and path_role(inner):
            value = Path(value)
        elif value is not None and typing.get_origin(inner) in LIST_ORIGINS and typing.get_args(inner) \
                and path_role(typing.get_args(inner)[0]):
            value = [Path(v) for v in value]
        kwargs[name] = value
    return kwargs
