"""Command-line flags generated from the settings models, so no field is listed twice."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ValidationError

S = TypeVar("S", bound=BaseModel)


def _flag(name: str, extra: Any) -> str:
    if isinstance(extra, dict) and "flag" in extra:
        name = str(extra["flag"])
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """Strip Optional[...] / X | None down to X."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _add_option(
    group: argparse._ArgumentGroup, flag: str, dest: str, annotation: Any, default: Any, help_: str
) -> None:
    base = _base_type(annotation)
    show = f"{help_} (default: {default!r})" if help_ else f"default: {default!r}"
    show = show.replace("%", "%%")  # argparse expands %-formats in help
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": show}
    if base is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif get_origin(base) is Literal:
        group.add_argument(flag, choices=list(get_args(base)), **kw)
    elif get_origin(base) is list:
        (item,) = get_args(base) or (str,)
        group.add_argument(flag, type=item, action="append", **kw)
    elif base in (int, float):
        group.add_argument(flag, type=base, **kw)
    else:
        group.add_argument(flag, type=str, **kw)


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls: type[BaseModel]) -> None:
    """One flag per leaf field of a (nested) settings model; dest is 'group.field'."""
    for group_name, group_field in settings_cls.model_fields.items():
        sub = group_field.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            raise TypeError(f"{settings_cls.__name__}.{group_name} must be a nested model")
        group = parser.add_argument_group(f"{group_name} settings")
        for name, f in sub.model_fields.items():
            _add_option(
                group,
                _flag(name, f.json_schema_extra),
                f"{group_name}.{name}",
                f.annotation,
                f.default,
                f.description or "",
            )


def flag_for(settings_cls: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The CLI flag of a settings field from a validation error's location."""
    if len(loc) >= 2:
        group = settings_cls.model_fields.get(str(loc[0]))
        sub = group.annotation if group else None
        if isinstance(sub, type) and issubclass(sub, BaseModel) and str(loc[1]) in sub.model_fields:
            return _flag(str(loc[1]), sub.model_fields[str(loc[1])].json_schema_extra)
    return _flag(str(loc[-1]), None) if loc else "settings"


def parse_settings(command: str, settings_cls: type[S], args: argparse.Namespace) -> S | None:
    """The command's settings from its flags, or None after printing the first invalid flag as
    one error line (`tessera COMMAND: error: --flag: why`)."""
    try:
        return settings_cls(**settings_overrides(args))
    except ValidationError as e:
        detail = e.errors()[0]
        flag = flag_for(settings_cls, tuple(detail["loc"]))
        print(f"tessera {command}: error: {flag}: {detail['msg']}", file=sys.stderr)
        return None


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags actually given, nested by group, to pass as settings init kwargs."""
    nested: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if "." in dest:
            group, name = dest.split(".", 1)
            nested.setdefault(group, {})[name] = value
    return nested


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, title: str, skip: tuple[str, ...] = ()
) -> None:
    """One flag per field of a dataclass (e.g. SamplingParams); dest is 'title.field'."""
    group = parser.add_argument_group(f"{title} options")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else []
        _add_option(group, _flag(f.name, None), f"{title}:{f.name}", hints[f.name], default, "")


def dataclass_overrides(args: argparse.Namespace, title: str) -> dict[str, Any]:
    """Values given for the dataclass flags added under ``title``."""
    prefix = f"{title}:"
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}
