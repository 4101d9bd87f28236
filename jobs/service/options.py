"""Options declared once, described the same way to everything that reads them.

A job function's keyword arguments are its options (`realfake.jobs.service.params` gives paths their
role). A function that takes `**options` names the dataclass that declares them in its `options`
attribute; each field of it is declared with `option(default, help, ...)`:

    @dataclass(frozen=True)
    class TrainConfig:
        epochs: int = option(10, "Epochs to train.", min=1)
        ghost_shift: int = option(0, "Move each batch's maps by up to N cells.", min=0, inputs=("ghosts",))

    def run_train(data_dir: InputPath, out: OutputPath = Path("runs"), **options) -> dict: ...
    run_train.options = TrainConfig

A plain keyword argument declares its range in its annotation, `Annotated[int, Bounds(min=1)]`.
`function_params(run_train)` then lists data_dir, out and every field as `Param`s, and from those the
job-spec validator checks TOML specs and `submit` flags, the CLI builds its commands, and a sweep
writes the exact command line of each of its runs (`command_line`); `check_values` refuses a value
out of its declared choices or range for a direct call that went through neither. Help text of plain
keyword arguments comes from the function's Google-style `Args:` docstring section.

Standard library only.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

_INPUT, _OUTPUT = "input", "output"  # the Annotated metadata of InputPath / OutputPath
LIST_ORIGINS = (list, tuple, Sequence)
# What option() keeps in a field's metadata.
_META_KEYS = ("help", "choices", "min", "max", "inputs", "applies")


@dataclasses.dataclass(frozen=True)
class Param:
    """One option: a keyword argument of a job function, or a field of its options dataclass.

    choices/min/max bound its value (the CLI enforces them; Literal annotations give choices too);
    inputs: the model inputs ("pixels", "ghosts") it applies to, None for every model; applies: what the
    option does, said when a model of another input is given it (e.g. "moves JPEG ghost maps")."""

    name: str
    annotation: Any
    required: bool
    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    inputs: tuple[str, ...] | None = None
    applies: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range of a plain keyword argument, kept in its annotation: `Annotated[int, Bounds(min=1)]`."""

    min: float | None = None
    max: float | None = None


def option(default: Any, help: str, *, choices: Sequence | None = None, min: float | None = None,
           max: float | None = None, inputs: Sequence[str] | None = None, applies: str | None = None):
    """A dataclass field that declares one option (see the module docstring)."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
                "inputs": tuple(inputs) if inputs is not None else None, "applies": applies}
    return dataclasses.field(default=default, metadata=metadata)


def strip_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, whether None is allowed) for `X | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) == 1:
            return members[0], optional
        return typing.Union[tuple(members)], optional  # noqa: UP007 (built from a runtime tuple)
    return annotation, False


def base_type(annotation: Any) -> Any:
    """The annotation without `| None` and without `Annotated` metadata."""
    inner, _ = strip_optional(annotation)
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    return inner


def annotated_bounds(annotation: Any) -> Bounds:
    """The Bounds in an `Annotated` annotation (also inside `| None`), else no bounds."""
    inner, _ = strip_optional(annotation)
    if typing.get_origin(inner) is typing.Annotated:
        for meta in typing.get_args(inner)[1:]:
            if isinstance(meta, Bounds):
                return meta
    return Bounds()


def path_role(annotation: Any) -> str | None:
    """'input' for InputPath, 'output' for OutputPath, 'path' for a plain Path, else None."""
    annotation, _ = strip_optional(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        if base is Path or (isinstance(base, type) and issubclass(base, Path)):
            return _INPUT if _INPUT in meta else _OUTPUT if _OUTPUT in meta else "path"
        return None
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return "path"
    return None


def list_item(annotation: Any) -> Any | None:
    """The item annotation of a list annotation, else None."""
    inner = base_type(annotation)
    if typing.get_origin(inner) in LIST_ORIGINS:
        args = typing.get_args(inner)
        return args[0] if args else str
    return None


def literal_choices(annotation: Any) -> tuple | None:
    inner = base_type(annotation)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def describe(annotation: Any) -> str:
    """What a value of this annotation looks like, in words, for error messages and --help."""
    inner, optional = strip_optional(annotation)
    role = path_role(inner)
    if role == _INPUT:
        text = "a path to an existing file or folder"
    elif role is not None:
        text = "a path"
    else:
        if typing.get_origin(inner) is typing.Annotated:
            inner = typing.get_args(inner)[0]
        origin = typing.get_origin(inner)
        if inner is bool:
            text = "true or false"
        elif inner is int:
            text = "an integer"
        elif inner is float:
            text = "a number"
        elif inner is str:
            text = "a string"
        elif origin is Literal:
            text = "one of " + ", ".join(repr(v) for v in typing.get_args(inner))
        elif origin in LIST_ORIGINS:
            args = typing.get_args(inner)
            text = f"a list of {_plural(describe(args[0]))}" if args else "a list"
        elif origin in (typing.Union, types.UnionType):
            text = " or ".join(describe(a) for a in typing.get_args(inner))
        else:
            text = getattr(inner, "__name__", str(inner))
    return f"{text} (or left out)" if optional else text


def _plural(text: str) -> str:
    for singular, plural in (("a string", "strings"), ("an integer", "integers"), ("a number", "numbers"),
                             ("a path to an existing file or folder", "existing paths"), ("a path", "paths"),
                             ("true or false", "booleans")):
        if text == singular:
            return plural
    return text


def docstring_args(doc: str) -> dict[str, str]:
    """Google-style `Args:` entries of a docstring (name -> one-line text), used as --help text."""
    out: dict[str, str] = {}
    in_args, current = False, None
    for line in inspect.cleandoc(doc).splitlines():
        if re.match(r"^(Args|Arguments|Parameters):\s*$", line):
            in_args = True
            continue
        if not in_args:
            continue
        if line and not line[0].isspace():
            break  # the next section
        match = re.match(r"^\s{2,8}(\w+)\s*(\([^)]*\))?:\s*(.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(3).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


def dataclass_params(cls: type) -> list[Param]:
    """The fields of an options dataclass as Params (see `option`)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    params = []
    for field in dataclasses.fields(cls):
        meta = {key: field.metadata.get(key) for key in _META_KEYS}
        default = field.default if field.default is not dataclasses.MISSING else None
        params.append(Param(name=field.name, annotation=hints[field.name], required=False, default=default,
                            help=meta["help"] or "",
                            choices=meta["choices"] or literal_choices(hints[field.name]),
                            min=meta["min"], max=meta["max"], inputs=meta["inputs"], applies=meta["applies"]))
    return params


def function_params(function: Callable) -> list[Param]:
    """The options of a job function, in order: its keyword arguments, then the fields of the dataclass
    named by its `options` attribute when it takes **options. Raises TypeError/NameError when its
    annotations do not resolve (the function author's bug)."""
    hints = typing.get_type_hints(function, include_extras=True)
    docs = docstring_args(function.__doc__ or "")
    params = []
    takes_options = False
    for p in inspect.signature(function).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            takes_options = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue  # cannot be given by name
        annotation = hints.get(p.name, Any)
        bounds = annotated_bounds(annotation)
        params.append(Param(name=p.name, annotation=annotation, required=p.default is inspect.Parameter.empty,
                            default=None if p.default is inspect.Parameter.empty else p.default,
                            help=docs.get(p.name, ""), choices=literal_choices(annotation), min=bounds.min,
                            max=bounds.max))
    options_class = getattr(function, "options", None)
    if takes_options and options_class is not None:
        params += dataclass_params(options_class)
    return params


def out_of_bounds(param: Param, value: Any) -> str | None:
    """What `value` must be when it breaks its option's declared choices or range (e.g. "at least 1"),
    else None. Lists and tables are checked item by item elsewhere, if at all."""
    if value is None or isinstance(value, (list, tuple, dict)):
        return None
    if param.choices is not None and value not in param.choices:
        return "one of " + ", ".join(repr(c) for c in param.choices)
    if param.min is not None and param.max is not None and not param.min <= value <= param.max:
        return f"between {param.min:g} and {param.max:g}"
    if param.min is not None and value < param.min:
        return f"at least {param.min:g}"
    if param.max is not None and value > param.max:
        return f"at most {param.max:g}"
    return None


def check_values(params: Sequence[Param], values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the flag of the first value in `values` outside its declared choices or range.

    The CLI (click ranges) and the job-spec validator enforce the same declarations; this is for the
    calls that go through neither (Python callers, a sweep's runs)."""
    for param in params:
        value = values.get(param.name)
        bound = out_of_bounds(param, value)
        if bound and param.choices is not None and value not in param.choices:
            raise ValueError(f"unknown {param.flag} {value!r}: choose one of {', '.join(map(str, param.choices))}")
        if bound:
            raise ValueError(f"{param.flag} {value!r} must be {bound}")


def check_arguments(function: Callable, values: Mapping[str, Any]) -> None:
    """`check_values` for a job function's own keyword arguments (pass its `locals()` on entry)."""
    check_values(function_params(function), values)


def flag_words(param: Param, value: Any) -> list[str]:
    """The command-line words that give `param` the value `value` (booleans as --x / --no-x; lists as the
    flag repeated; None as nothing)."""
    if value is None:
        return []
    inner = base_type(param.annotation)
    if inner is bool:
        if value:
            return [param.flag]
        return [] if param.default is False else ["--no-" + param.flag[2:]]
    if list_item(param.annotation) is not None and isinstance(value, (list, tuple)):
        return [word for item in value for word in (param.flag, str(item))]
    return [param.flag, str(value)]


def command_line(command: str, params: Sequence[Param], arguments: Sequence[Any], values: Mapping[str, Any],
                 keep_in_shell: str = "") -> str:
    """`realfake COMMAND ARG... --flag value ...` for option values given by their Python names.

    `keep_in_shell`: a shell variable (e.g. "$SEED") left outside the quotes so that the shell expands it."""
    by_name = {p.name: p for p in params}
    unknown = [key for key in values if key not in by_name]
    if unknown:
        raise ValueError(f"`realfake {command}` has no option {unknown[0]!r}")

    def quote(word: Any) -> str:
        word = str(word)
        if not keep_in_shell:
            return shlex.quote(word)
        return keep_in_shell.join(shlex.quote(piece) if piece else "" for piece in word.split(keep_in_shell))

    words = ["realfake", *command.split(), *(quote(a) for a in arguments)]
    for key, value in values.items():
        words += [quote(w) if not w.startswith("--") else w for w in flag_words(by_name[key], value)]
    return " ".join(words)
