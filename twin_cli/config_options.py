"""CLI flags built from the configuration classes themselves (as TRL builds its scripts' parsers
from its config dataclasses): one flag per field, nested sections as prefixes (`--sft-learning-rate`,
`--lora-target-modules`), help and defaults from the field. A new field is a new flag; nothing to
keep in step by hand."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Literal

import click
from pydantic import BaseModel, ValidationError

DEST = "cfg__"


def _unwrap(annotation):
    """X | None -> X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else annotation
    return annotation


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaves(model: type[BaseModel], path: tuple[str, ...] = ()):
    for name, field in model.model_fields.items():
        annotation = _unwrap(field.annotation)
        if _is_section(annotation):
            yield from _leaves(annotation, (*path, name))
        else:
            yield (*path, name), annotation, field


def flag_name(path: tuple[str, ...]) -> str:
    """('dpo', 'enabled') -> 'dpo' (an 'enabled' switch takes its section's name)."""
    parts = path[:-1] if path[-1] == "enabled" and len(path) > 1 else path
    return "-".join(parts).replace("_", "-")


def config_options(model: type[BaseModel], section: str = "", exclude: tuple[str, ...] = ()) -> Callable:
    """A decorator adding the flags of ``model``'s fields (top-level names in ``exclude`` left out).
    ``section`` files the values under that key in :func:`given_values` (the flags keep their names)."""

    def decorate(command):
        for path, annotation, field in reversed(list(_leaves(model))):
            if path[0] in exclude:
                continue
            name, dest = flag_name(path), DEST + "__".join((section, *path) if section else path)
            default = field.get_default(call_default_factory=True)
            help_text = (field.description or "") + (f" [default: {default}]" if default not in (None, "") else "")
            if annotation is bool:
                option = click.option(f"--{name}/--no-{name}", dest, default=None, help=help_text)
            elif typing.get_origin(annotation) is Literal:
                values = typing.get_args(annotation)
                option = click.option(f"--{name}", dest, type=click.Choice([str(v) for v in values]), default=None,
                                      help=help_text, callback=lambda _c, _p, given, values=values: next(
                                          (v for v in values if str(v) == given), None))
            elif typing.get_origin(annotation) is list:
                option = click.option(f"--{name}", dest, multiple=True, help=help_text + " (repeat the flag)")
            else:
                kind = annotation if annotation in (int, float, str) else str
                option = click.option(f"--{name}", dest, type=kind, default=None, help=help_text)
            command = option(command)
        return command

    return decorate


def given_values(kwargs: dict) -> dict:
    """The flags the user gave, as the nested dict the config class takes (popped from kwargs)."""
    out: dict = {}
    for key in [k for k in kwargs if k.startswith(DEST)]:
        value = kwargs.pop(key)
        if value is None or value == ():
            continue
        path = key[len(DEST):].split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = list(value) if isinstance(value, tuple) else value
    return out


def explain(exc: ValidationError, sections: tuple[str, ...] = ("train", "dataset", "gate")) -> str:
    """A pydantic error as lines naming the flag to change (section keys are not part of flag names)."""
    lines = []
    for error in exc.errors():
        path = tuple(str(p) for p in error["loc"] if not str(p).isdigit())
        path = path[1:] if len(path) > 1 and path[0] in sections else path
        where = f"--{flag_name(path)}" if path else "configuration"
        lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
