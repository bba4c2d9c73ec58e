"""One settings model for every command: a dataclass per command, documented field by field.

A field is declared once with :func:`setting` (default, help text, unit, choices, check); from
that declaration come the command-line options and ``--help`` (:func:`add_arguments`), the
``--config`` YAML and the study file's sections (:func:`from_mapping`), and type conversion
with validation before any heavy work: ``2e-5``, ``1e6``, ``4K``, ``500M`` and ``true`` are
all read for what they mean, an unknown key fails naming the closest valid one.

A field whose type is itself a settings dataclass (``PrepareConfig.mixture``) is flattened:
its fields are options of the parent (``--long-fraction``), and keys of the parent mapping.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

from .errors import LongmixError
from .units import format_exact, parse_count, parse_length

UNITS = ("count", "binary_count", "length")


class SettingsError(LongmixError):
    """A setting that is unknown, of the wrong type, or out of range."""


def setting(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    unit: str | None = None,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    positional: bool = False,
    cli: bool = True,
    metavar: str | None = None,
    repeatable: bool = False,
    parse_any: bool = False,
) -> Any:
    """A documented dataclass field.

    ``parse_any``: ``parse`` reads YAML values of any type, not only strings.
    ``unit``: ``count`` (decimal K/M/B: budgets), ``binary_count`` or ``length`` (binary K/M:
    sequence lengths) for integer fields given as ``4K`` or ``500M``. ``choices``: allowed
    values (or a function returning them, read when a value is checked). ``check``: returns an
    error message for a bad value, None for a good one. ``parse``: reads a string form (e.g.
    ``cc=0.6,book=0.4``) into the field's value. ``flag``: the option's name when it differs
    from the field's (``--part-size`` for ``part_bytes``); ``aliases``: other accepted keys.
    ``cli=False`` keeps a field out of the command line (YAML and Python only); ``repeatable``
    options may be given several times, each parsed and the results joined.
    """
    if unit is not None and unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}")
    metadata = {
        "help": help,
        "unit": unit,
        "choices": choices,
        "check": check,
        "parse": parse,
        "flag": flag,
        "aliases": aliases,
        "positional": positional,
        "cli": cli,
        "metavar": metavar,
        "repeatable": repeatable,
        "parse_any": parse_any,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# ---------------------------------------------------------------------------- introspection


@dataclasses.dataclass(frozen=True)
class Spec:
    """One field of a settings class, as the parser and converter see it."""

    name: str
    type: Any
    field: Field
    path: tuple[str, ...]  # nested dataclass fields leading to it ("mixture",)

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def help(self) -> str:
        return self.meta.get("help", "")

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + self.name.replace("_", "-")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key accepted in a mapping for this field."""
        flag_key = self.flag.lstrip("-").replace("-", "_")
        return tuple(dict.fromkeys((self.name, flag_key, *self.meta.get("aliases", ()))))

    @property
    def required(self) -> bool:
        return self.field.default is MISSING and self.field.default_factory is MISSING

    def default(self) -> Any:
        if self.field.default is not MISSING:
            return self.field.default
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return None

    def choices(self) -> tuple[str, ...] | None:
        choices = self.meta.get("choices")
        return choices() if callable(choices) else choices


def specs(cls: type) -> list[Spec]:
    """The leaf fields of a settings class, nested settings flattened, in declaration order."""
    out: list[Spec] = []
    _collect(cls, (), out)
    seen: dict[str, Spec] = {}
    for spec in out:
        for key in spec.keys:
            if key in seen and seen[key] is not spec:
                raise TypeError(
                    f"{cls.__name__}: key {key!r} is declared twice ({seen[key].name}, {spec.name})"
                )
            seen[key] = spec
    return out


def _collect(cls: type, path: tuple[str, ...], out: list[Spec]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            _collect(kind, (*path, f.name), out)
        else:
            out.append(Spec(f.name, kind, f, path))


# ---------------------------------------------------------------------------- conversion


def _strip_optional(kind: Any) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"settings of type {kind} are not supported")
        return rest[0], True
    return kind, False


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def convert(spec: Spec, value: Any, source: str = "") -> Any:
    """``value`` (from YAML, the command line or Python) as the field's type, checked."""
    where = f"{source}: " if source else ""
    label = f"{where}{spec.name}"
    kind, optional = _strip_optional(spec.type)
    if value is None or (
        optional and isinstance(value, str) and value.strip().lower() in ("none", "null")
    ):
        if optional:
            return None
        raise SettingsError(f"{label}: a value is required")
    parse = spec.meta.get("parse")
    try:
        if parse is not None and (isinstance(value, str) or spec.meta.get("parse_any")):
            result = parse(value)
        elif (
            parse is not None
            and isinstance(value, list)
            and value
            and all(isinstance(v, str) for v in value)
        ):
            result = tuple(item for text in value for item in parse(text))  # a repeated option
        else:
            result = _convert_type(kind, value, spec.meta.get("unit"))
    except SettingsError:
        raise
    except (TypeError, ValueError) as err:
        raise SettingsError(
            f"{label}: {value!r} is not {_describe(kind, spec.meta.get('unit'))} ({err})"
        ) from None
    choices = spec.choices()
    if choices is not None and result not in choices:
        valid = [*(("none",) if optional else ()), *map(str, choices)]
        close = difflib.get_close_matches(str(result), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SettingsError(f"{label}: {result!r} is not one of {', '.join(valid)}{hint}")
    check = spec.meta.get("check")
    if check is not None:
        problem = check(result)
        if problem:
            raise SettingsError(f"{label}: {problem}")
    return result


def _describe(kind: Any, unit: str | None) -> str:
    if unit == "count":
        return "a count (e.g. 500M, 5B, 1e6)"
    if unit in ("length", "binary_count"):
        return "a length (e.g. 32K, 4M)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(
        kind, f"of type {kind}"
    )


def _convert_type(kind: Any, value: Any, unit: str | None) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("expected a number, not true/false")
        if unit is not None:
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            text = str(value)
            return (
                parse_length(text)
                if unit == "length"
                else parse_count(text, binary=unit == "binary_count")
            )
        if isinstance(value, int):
            return value
        number = (
            float(value) if not isinstance(value, str) else float(value.strip().replace("_", ""))
        )
        if not number.is_integer():
            raise ValueError("expected a whole number")
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("expected a number, not true/false")
        return float(value)
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ValueError("expected text")
        return str(value)
    if origin is tuple:
        args = typing.get_args(kind)
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i.strip() if isinstance(i, str) else i for i in items]
        items = [i for i in items if i != ""]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert_type(args[0], i, unit) for i in items)
        return tuple(_convert_type(a, i, unit) for a, i in zip(args, items, strict=True))
    if kind is Any or kind is object:
        return value
    if isinstance(kind, type) and issubclass(kind, Path):
        return Path(value)
    raise TypeError(f"settings of type {kind} need a parse function")


# ---------------------------------------------------------------------------- mappings


def key_index(cls: type) -> dict[str, Spec]:
    return {key: spec for spec in specs(cls) for key in spec.keys}


def check_keys(
    cls: type, data: Mapping[str, Any], source: str, extra: tuple[str, ...] = ()
) -> None:
    """Fail on the first unknown key, naming the closest valid one."""
    index = key_index(cls)
    valid = [*index, *extra]
    for key in data:
        normal = str(key).replace("-", "_")
        if normal not in index and normal not in extra:
            close = difflib.get_close_matches(normal, valid, n=1, cutoff=0.6)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f" (valid: {', '.join(sorted(valid))})"
            )
            raise SettingsError(f"{source}: unknown settings {key}{hint}")


def from_mapping(
    cls: type, data: Mapping[str, Any] | None, source: str = "settings", /, **overrides: Any
) -> Any:
    """An instance of ``cls`` from a flat mapping (YAML, a study section), ``overrides`` on top.

    Keys may use ``-`` or ``_``; nested settings classes take their keys from the same mapping.
    Values are converted and checked field by field; unknown or missing keys fail at once.
    """
    merged = dict(data or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    check_keys(cls, merged, source)
    index = key_index(cls)
    values: dict[str, Any] = {}
    for key, value in merged.items():
        spec = index[str(key).replace("-", "_")]
        if spec.name in values and values[spec.name][0] != key:
            raise SettingsError(
                f"{source}: {spec.name} is given twice ({values[spec.name][0]!r} and {key!r})"
            )
        values[spec.name] = (key, convert(spec, value, source))
    return _build(cls, (), {name: v for name, (_, v) in values.items()}, source)


def _build(cls: type, path: tuple[str, ...], values: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(kind, (*path, f.name), values, source)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            hint = (
                f.metadata.get("metavar")
                if f.metadata.get("positional")
                else (f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
            )
            raise SettingsError(f"{source}: {f.name} is required ({hint})")
    return cls(**kwargs)


def to_mapping(obj: Any) -> dict[str, Any]:
    """The flat mapping :func:`from_mapping` reads back into an equal object."""
    out: dict[str, Any] = {}
    for spec in specs(type(obj)):
        holder = obj
        for name in spec.path:
            holder = getattr(holder, name)
        out[spec.name] = getattr(holder, spec.name)
    return out


def replace(obj: Any, **changes: Any) -> Any:
    """A copy of ``obj`` with flat ``changes`` converted and checked like any other input."""
    return from_mapping(type(obj), {**to_mapping(obj), **changes}, type(obj).__name__)


# ---------------------------------------------------------------------------- command line


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """One option per field of ``cls`` (nested settings flattened), help from the declarations.

    Every option defaults to None, so that values from ``--config`` stay unless given here;
    :func:`from_args` fills in the declared defaults.
    """
    for spec in specs(cls):
        if not spec.meta.get("cli", True) or spec.name in skip:
            continue
        default = spec.default()
        shown = (
            ""
            if spec.required or default in (None, (), "")
            else f" (default: {_show(default, spec.meta.get('unit'))})"
        )
        help_text = (spec.help + shown).replace("%", "%%")  # argparse formats help with %
        choices = spec.choices() if not callable(spec.meta.get("choices")) else None
        kind, optional = _strip_optional(spec.type)
        metavar = spec.meta.get("metavar")
        if choices is not None and optional:
            # argparse would refuse "none", a valid value here: convert() checks the choice
            metavar = metavar or "{" + ",".join(("none", *map(str, choices))) + "}"
            choices = None
        if spec.meta.get("positional"):
            parser.add_argument(spec.name, nargs="*", default=None, help=help_text, metavar=metavar)
            continue
        flags = [spec.flag]
        if kind is bool:
            parser.add_argument(
                *flags,
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif spec.meta.get("repeatable"):
            parser.add_argument(
                *flags,
                dest=spec.name,
                action="append",
                default=None,
                help=help_text,
                metavar=metavar or spec.name.upper(),
            )
        else:
            parser.add_argument(
                *flags,
                dest=spec.name,
                default=None,
                help=help_text,
                choices=choices,
                metavar=metavar or (None if choices else spec.name.upper()),
            )


def _show(value: Any, unit: str | None = None) -> str:
    """A default as the user would write it: ``80K`` for a length of 81,920, ``2e-05``."""
    if unit is not None and isinstance(value, int) and not isinstance(value, bool):
        return format_exact(value, binary=unit != "count")
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def args_mapping(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options the user gave (not None), as a mapping for :func:`from_mapping`."""
    out = {}
    for spec in specs(cls):
        value = getattr(args, spec.name, None)
        if value is not None and value != []:
            out[spec.name] = value
    return out


def from_args(
    cls: type, args: argparse.Namespace, config_file: str | Path | None = None, /, **overrides: Any
) -> Any:
    """Settings from ``--config`` YAML (if any), the command line on top, then ``overrides``."""
    data: dict[str, Any] = {}
    source = "command line"
    if config_file:
        data = read_yaml_mapping(config_file)
        source = str(config_file)
        check_keys(cls, data, source)
    data.update(args_mapping(args, cls))
    return from_mapping(cls, data, source, **overrides)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a clear error for a missing, broken or non-mapping file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SettingsError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SettingsError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    return data


def describe(cls: type) -> Iterator[tuple[str, str, str]]:
    """(option, default, help) per field: for docs and tables."""
    for spec in specs(cls):
        default = "required" if spec.required else _show(spec.default(), spec.meta.get("unit"))
        yield spec.flag if not spec.meta.get("positional") else spec.name, default, spec.help
