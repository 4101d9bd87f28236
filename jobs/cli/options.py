"""click parameters made from option declarations (`realfake.jobs.service.options.Param`), so that a
command's flags are the job function's keyword arguments, with the same names, types, choices, ranges,
defaults and help, and `realfake X --flag` runs what `realfake submit X --flag` queues.

Booleans that default to True (or to None, "decide for me") get `--x/--no-x`; those that default to
False are plain flags. Lists are repeatable flags. Input paths must exist.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click
from realfake.jobs.service.options import Param, base_type, describe, function_params, list_item, path_role


def click_type(param: Param, *, check_exists: bool = True) -> Any:
    """The click type of one value of `param` (for lists: of one item)."""
    annotation = list_item(param.annotation) or param.annotation
    role = path_role(annotation)
    if role is not None:
        return click.Path(exists=check_exists and role == "input", path_type=Path)
    if param.choices is not None and all(isinstance(c, str) for c in param.choices):
        return click.Choice(param.choices)
    inner = base_type(annotation)
    if inner is int:
        return click.IntRange(param.min, param.max) if (param.min, param.max) != (None, None) else click.INT
    if inner is float:
        return click.FloatRange(param.min, param.max) if (param.min, param.max) != (None, None) else click.FLOAT
    return {bool: click.BOOL}.get(inner, click.STRING)


def click_param(param: Param, *, argument: bool = False, unset_default: bool = False, check_exists: bool = True,
                help: str | None = None, **option_settings) -> click.Parameter:
    """The click Argument or Option for `param`. unset_default: the option defaults to None, "not
    given", so that the function's own default applies (what `submit` needs to leave specs short).
    option_settings: click.Option keywords of a command's own (e.g. a value that may be left out)."""
    multiple = list_item(param.annotation) is not None
    kind = click_type(param, check_exists=check_exists)
    if argument:
        return click.Argument([param.name], type=kind, nargs=-1 if multiple else 1, required=param.required)
    text = param.help if help is None else help
    default = None if unset_default else param.default
    if kind is click.BOOL and not multiple:
        if param.default is False and not unset_default:
            return click.Option([param.flag, param.name], is_flag=True, default=False, help=text)
        return click.Option([f"{param.flag}/--no-{param.flag[2:]}", param.name], default=default,
                            show_default=default is not None, help=text)
    settings = dict(type=kind, multiple=multiple, required=param.required and not unset_default,
                    default=() if multiple and default is None else default, show_default=default not in (None, ()),
                    metavar="PATH" if isinstance(kind, click.Path) else None, help=text)
    return click.Option([param.flag, param.name], **{**settings, **option_settings})


def command_params(function: Callable, *, arguments: Iterable[str] = (), skip: Iterable[str] = (),
                   settings: Mapping[str, dict] | None = None) -> list[click.Parameter]:
    """click parameters for every option of a job function: `arguments` become positional arguments,
    `skip` are left out (the command sets them itself), `settings` are click.Option keywords per option."""
    arguments, skip, settings = set(arguments), set(skip), dict(settings or {})
    return [click_param(param, argument=param.name in arguments, **settings.get(param.name, {}))
            for param in function_params(function) if param.name not in skip]


class JobCommand(click.Command):
    """A command whose options are those of a job function ("module:function"), made when the command is
    used (its --help, or a run), so that listing the commands never imports the job's module (torch).

    `arguments`: options given positionally; `skip`: options the command does not offer; `settings`:
    click.Option keywords per option; options the callback declares itself with @click.option (output
    format, ...) come after the generated ones."""

    def __init__(self, *args, target: str, arguments: Iterable[str] = (), skip: Iterable[str] = (),
                 settings: Mapping[str, dict] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.target, self.arguments, self.skip, self.settings = target, tuple(arguments), tuple(skip), settings
        self._own_params = list(self.params)
        self._generated: list[click.Parameter] | None = None

    def function(self) -> Callable:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self._generated is None:
            self._generated = command_params(self.function(), arguments=self.arguments, skip=self.skip,
                                             settings=self.settings)
            self.params = [*self._generated, *self._own_params]
        return super().get_params(ctx)


def as_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """click's values as the job function takes them: repeatable options as lists."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}


def spec_help(param: Param) -> str:
    """Help of a `submit KIND` flag: the option's help, its type in words and its default."""
    if param.name == "out" and path_role(param.annotation) == "output":
        note = "default: a new folder under $REALFAKE_HOME/jobs/<id>"
    elif param.required:
        note = "required"
    elif param.default is None:
        note = "default: not set"
    else:
        note = f"default: {param.default!r}"
    if list_item(param.annotation) is not None:
        note += "; repeat the flag for several"
    return (f"{param.help} " if param.help else "") + f"[{describe(param.annotation)}; {note}]"
