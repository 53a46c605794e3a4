"""Config keys and values against what the code accepts: a list of valid keys, and Python type hints.

Type hints are matched as a config can express values: ``int``, ``float`` (an int is a valid float), ``bool``,
``str``, ``None``, unions, ``Literal``, lists (``list``, ``tuple``, ``Sequence``, ``Iterable``) and mappings. A
hint no config value can match (``torch.Tensor``, ``Optimizer``) is not checked; in a union it is left out.
Every failure is one :class:`~mtl_train.errors.ConfigError` naming the key, what is valid and an example.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtl_train.errors import ConfigError

SCALAR_NAMES = {int: "an integer", float: "a float (number)", bool: "true or false", str: "a string",
                type(None): "null"}
PLURAL_NAMES = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
LIST_ORIGINS = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
MAPPING_ORIGINS = (dict, collections.abc.Mapping)


def check_keys(path: str, keys: Iterable[Any], valid: Iterable[str], kind: str, fix: str = "") -> None:
    """Raise :class:`ConfigError` for the first of ``keys`` (of the node at ``path``) not in ``valid``: "<key> is
    not a <kind>; valid keys: ...". ``fix`` (with ``{key}`` standing for the full key) is appended."""
    valid = sorted(valid)
    for name in keys:
        if name not in valid:
            full = f"{path}.{name}" if path else str(name)
            raise ConfigError(f"{full} is not a {kind}; valid keys: {', '.join(valid)}{fix.format(key=full)}")


def check_types(path: str, node: DictConfig, types_by_key: Mapping[str, Any]) -> None:
    """Each key of ``node`` (at ``path``) listed in ``types_by_key`` holds a value of its type."""
    for name, hint in types_by_key.items():
        if name in node:
            check_value(node, name, f"{path}.{name}" if path else name, hint)


def check_search_space(node: DictConfig, name: str, path: str, valid: Iterable[str] | None) -> None:
    """``node[name]`` (the key ``path``) maps parameters of the node's target (``valid``; None: any) to the sweep
    expressions Hydra's Optuna sweeper samples from: ``interval(a, b)``, ``tag(log, interval(a, b))``,
    ``choice(a, b, ...)`` or ``range(a, b, step)`` (https://hydra.cc/docs/plugins/optuna_sweeper/)."""
    space = node[name]
    if not isinstance(space, DictConfig):
        raise ConfigError(f"{path}={space!r} must be a mapping from settings to search expressions, e.g. "
                          f"{path}.alpha='interval(0.1, 3.0)'")
    if valid is not None:
        check_keys(path, space.keys(), valid, "setting to search over")
    parser = OverridesParser.create()
    for key, expression in space.items():
        try:
            sweep = parser.parse_override(f"{key}={expression}").is_sweep_override()
        except HydraException:  # a syntax error in the expression
            sweep = False
        if not sweep:
            raise ConfigError(f"{path}.{key}={expression!r} is not a search expression; write interval(LOW, HIGH), "
                              f"tag(log, interval(LOW, HIGH)) or choice(A, B, ...), e.g. "
                              f"{path}.{key}='interval(0.1, 3.0)'")


def check_value(node: DictConfig, name: str, path: str, hint: Any, default: Any = None) -> None:
    """``node[name]`` (the key ``path``) is set, resolves and matches ``hint``; ``default``, when a config can hold
    it, is shown as an example."""
    if OmegaConf.is_missing(node, name):
        raise ConfigError(f"{path} is required but not set (??? in the config); set it, e.g. {path}=VALUE")
    try:
        value = node[name]
    except OmegaConfBaseException as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{path}={node._get_node(name)._value()} cannot be resolved ({reason}); set the key it "
                          f"refers to, or give {path} a value") from None
    plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    if representable(hint) and not matches(plain, hint):
        source = f" (from {node._get_node(name)._value()})" if OmegaConf.is_interpolation(node, name) else ""
        raise ConfigError(f"{path}={plain!r}{source} must be {describe(hint)}{example(path, default)}")


def example(path: str, default: Any) -> str:
    """``, e.g. <path>=<default>`` for a scalar ``default`` (as it is written on the command line), else ``""``."""
    if isinstance(default, bool):
        return f", e.g. {path}={str(default).lower()}"
    if isinstance(default, (int, float, str)):
        return f", e.g. {path}={default}"
    return ""


def union_args(hint: Any) -> tuple[Any, ...] | None:
    """The alternatives of a union hint (``X | Y``, ``Optional[X]``), or None for any other hint."""
    origin = typing.get_origin(hint)
    return typing.get_args(hint) if origin is Union or origin is types.UnionType else None


def representable(hint: Any) -> bool:
    """Whether some config value can match ``hint`` (plain scalars, None, literals, lists, mappings, Any)."""
    alternatives = union_args(hint)
    if alternatives is not None:
        return any(representable(alternative) for alternative in alternatives)
    origin = typing.get_origin(hint) or hint
    return (hint is Any or hint is inspect.Parameter.empty or hint in SCALAR_NAMES or origin is Literal
            or origin in LIST_ORIGINS or origin in MAPPING_ORIGINS)


def matches(value: Any, hint: Any) -> bool:
    """Whether the plain config value ``value`` (after ``OmegaConf.to_container``) is of type ``hint``."""
    alternatives = union_args(hint)
    if alternatives is not None:
        return any(matches(value, alternative) for alternative in alternatives)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in MAPPING_ORIGINS:
        key_hint, value_hint = args if args else (Any, Any)
        return isinstance(value, dict) and all(matches(k, key_hint) and matches(v, value_hint)
                                               for k, v in value.items())
    if origin in LIST_ORIGINS:
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, arg) for v, arg in zip(value, args))
        item_hint = args[0] if args else Any
        return all(matches(v, item_hint) for v in value)
    return False  # a class no config value is an instance of (e.g. torch.Tensor)


def describe(hint: Any) -> str:
    """``hint`` in words, as in "must be <description>": ``an integer or null``, ``a list of numbers``, ..."""
    alternatives = union_args(hint)
    if alternatives is not None:
        return " or ".join(describe(alternative) for alternative in alternatives if representable(alternative))
    if hint in SCALAR_NAMES:
        return SCALAR_NAMES[hint]
    if hint is Any:
        return "any value"
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in MAPPING_ORIGINS:
        return f"a mapping to {plural(args[1])}" if args else "a mapping"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} {plural(args[0])}"
    return f"a list of {plural(args[0])}" if args else "a list"


def plural(hint: Any) -> str:
    """What a list of ``hint`` holds, in words (``integers``, ``numbers or strings``, ``values``)."""
    alternatives = union_args(hint)
    if alternatives is not None:
        return " or ".join(plural(alternative) for alternative in alternatives if representable(alternative))
    return PLURAL_NAMES.get(hint, "values")
