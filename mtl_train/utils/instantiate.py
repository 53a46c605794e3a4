"""The one place where config nodes become objects, after their keys and values are checked against the target.

A node's keys (less Hydra's own and those the caller passes) must be parameters of its ``_target_``'s signature
(``inspect.signature``; a target taking ``**kwargs`` accepts any key), and each value must match the parameter's
type hint (``typing.get_type_hints``; see :mod:`mtl_train.utils.config_values`).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Iterable
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, open_dict

from mtl_train.errors import ConfigError, UserError
from mtl_train.utils.config_values import check_keys, check_search_space, check_value

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
"""Keys Hydra's instantiate reads itself; they are not arguments of the target."""

SEARCH_KEY = "search"
"""A method's hyperparameter search space for ``experiment=tune`` (e.g. ``search: {alpha: interval(0.1, 3.0)}``):
checked against the target's parameters, never passed to it."""

MERGED_KEY_FIX = "; if a task set or experiment sets it for another option, remove it with ~{key}"
"""Added to an unknown key: task sets and experiments set keys of the options they choose, which stay when the
command line picks another option of the group (e.g. ``experiment=sener_multi_mnist weighting=ew``)."""


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Build ``node`` (the config at ``key``) with call-site ``kwargs`` overriding its fields.

    The node is checked first (:func:`check_node`). Errors raised by the target are reported as one
    :class:`ConfigError` naming ``key``; a :class:`UserError` raised by our own code passes through unchanged.
    """
    check_node(node, key, kwargs)
    if SEARCH_KEY in node:
        node = node.copy()
        with open_dict(node):
            del node[SEARCH_KEY]
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        reason = cause if cause is not None else error
        raise ConfigError(f"could not build `{key}` ({node._target_}): {reason}. Check the keys under `{key}` "
                          f"(`mtl-train --cfg job` prints the composed config).") from None


def check_node(node: Any, key: str, injected: Iterable[str] = ()) -> None:
    """Check the ``_target_`` node ``node`` found at ``key``: each of its keys, less Hydra's own and the
    ``injected`` ones (which the caller passes when it builds the node), must be a parameter of the target,
    set, and of the parameter's type; the keys of its :data:`SEARCH_KEY` must be parameters too, each with a
    search-space expression. Nested ``_target_`` nodes are checked the same way."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key} must be a config node with a _target_ (pick an option of its config group), "
                          f"got {node!r}")
    target = load_target(node, key)
    parameters = inspect.signature(target).parameters
    skipped = HYDRA_KEYS | {SEARCH_KEY} | set(injected)
    keys = [str(name) for name in node.keys() if name not in skipped]
    valid = [name for name, p in parameters.items() if name not in skipped and p.kind in
             (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        check_keys(key, keys, valid, f"setting of {target.__name__}", MERGED_KEY_FIX)
    if SEARCH_KEY in node:
        takes_any_key = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        check_search_space(node, SEARCH_KEY, f"{key}.{SEARCH_KEY}", None if takes_any_key else valid)
    hints = target_hints(target)
    for name in keys:
        child = node._get_node(name)
        if isinstance(child, DictConfig) and "_target_" in child:
            check_node(child, f"{key}.{name}")
            continue
        parameter = parameters.get(name)
        default = None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
        check_value(node, name, f"{key}.{name}", hints.get(name, Any), default)


def load_target(node: DictConfig, key: str) -> Any:
    """The class or function ``node._target_`` names (:func:`locate`)."""
    try:
        return locate(node._target_)
    except Exception as error:  # ImportError, AttributeError, or whatever importing the module raises
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ConfigError(
            f"{key}._target_={node._target_!r} cannot be imported ({reason}); if it is your own code, run mtl-train "
            "with the folder holding its package on PYTHONPATH (PYTHONPATH=. mtl-train --config-dir configs ...), "
            "else pick an option of the config group (`mtl-train --help` lists them)") from None


def locate(path: str) -> Any:
    """The object at the dotted ``path``: the longest prefix that is a module, then attributes of it.

    Unlike Hydra's lookup, it raises the error that names the problem: ``ModuleNotFoundError`` for a package
    that is not on the path, ``AttributeError`` for a name the module lacks, and whatever importing the module
    raised (a missing dependency of the user's module included)."""
    parts = path.split(".")
    for index in range(len(parts), 0, -1):
        name = ".".join(parts[:index])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if index > 1 and error.name is not None and (name == error.name or name.startswith(f"{error.name}.")):
                continue  # ``name`` itself is not a module: try a shorter prefix
            raise
        for attribute in parts[index:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(f"empty target {path!r}")


def target_hints(target: Any) -> dict[str, Any]:
    """The evaluated type hints of ``target``'s parameters (its ``__init__``'s for a class); empty when they
    cannot be evaluated (then only the keys are checked)."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # an unresolvable forward reference in a third-party target
        return {}
