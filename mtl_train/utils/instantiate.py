"""The one place where config nodes become objects (so a ``_target_`` allow-list can be added here later)."""

from __future__ import annotations

from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from mtl_train.errors import ConfigError, UserError


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Build ``node`` (the config at ``key``) with call-site ``kwargs`` overriding its fields.

    Errors raised by the target are reported as one :class:`ConfigError` naming ``key``; a
    :class:`UserError` raised by our own code passes through unchanged.
    """
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        reason = cause if cause is not None else error
        raise ConfigError(f"could not build `{key}` ({target}): {reason}. Check the keys under `{key}` "
                          f"(`mtl-train --cfg job` prints the composed config).") from None
