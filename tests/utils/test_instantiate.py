"""instantiate / check_node: a node's keys and values are checked against its target before it is built."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from omegaconf import OmegaConf

from mtl_train.errors import ConfigError
from mtl_train.utils.instantiate import check_node, instantiate


class Widget:
    """A target with typed parameters (what check_node reads)."""

    def __init__(self, task_names: Sequence[str], size: int, rate: float = 0.5, mode: str = "a") -> None:
        self.task_names, self.size, self.rate, self.mode = list(task_names), size, rate, mode


class Open:
    """A target that takes any keyword."""

    def __init__(self, size: int = 1, **options: object) -> None:
        self.size, self.options = size, options


def node(**keys: object):
    return OmegaConf.create({"_target_": f"{__name__}.{keys.pop('cls', 'Widget')}", **keys})


def test_a_good_node_is_built_with_the_call_site_arguments() -> None:
    widget = instantiate(node(size=3, rate=1), "widget", task_names=["a", "b"])
    assert (widget.task_names, widget.size, widget.rate, widget.mode) == (["a", "b"], 3, 1, "a")


def test_an_unknown_key_lists_the_valid_ones_without_the_injected_ones() -> None:
    with pytest.raises(ConfigError) as error:
        instantiate(node(size=3, sise=4), "widget", task_names=["a"])
    assert str(error.value) == ("widget.sise is not a setting of Widget; valid keys: mode, rate, size; if a task set "
                                "or experiment sets it for another option, remove it with ~widget.sise")


def test_a_target_taking_kwargs_accepts_any_key_but_still_checks_types() -> None:
    assert instantiate(node(cls="Open", colour="red"), "open").options == {"colour": "red"}
    with pytest.raises(ConfigError, match=r"^open\.size='big' must be an integer, e.g\. open\.size=1$"):
        instantiate(node(cls="Open", size="big"), "open")


def test_a_value_of_the_wrong_type_is_caught_before_the_target_runs() -> None:
    with pytest.raises(ConfigError) as error:
        instantiate(node(size=3, rate="fast"), "widget", task_names=["a"])
    assert str(error.value) == "widget.rate='fast' must be a float (number), e.g. widget.rate=0.5"


def test_injected_keys_are_neither_checked_nor_resolved() -> None:
    """A standalone head YAML reads ``${..num_outputs}``; a caller passing the size itself can still build it."""
    head = OmegaConf.create({"_target_": f"{__name__}.Widget", "size": "${..num_outputs}"})
    assert instantiate(head, "head", task_names=["a"], size=5).size == 5


def test_an_unimportable_target_is_one_message() -> None:
    with pytest.raises(ConfigError, match=r"^weighting\._target_='mtl_train\.weighting\.nope\.Nope' cannot be "
                                          r"imported \("):
        check_node(OmegaConf.create({"_target_": "mtl_train.weighting.nope.Nope"}), "weighting")


def test_a_node_without_a_target_is_one_message() -> None:
    with pytest.raises(ConfigError, match=r"^weighting must be a config node with a _target_"):
        check_node(OmegaConf.create({"alpha": 1.5}), "weighting")


def test_nested_target_nodes_are_checked_too() -> None:
    outer = OmegaConf.create({"_target_": f"{__name__}.Open", "inner": {"_target_": f"{__name__}.Widget",
                                                                       "size": 1, "colour": "red"}})
    with pytest.raises(ConfigError, match=r"^outer\.inner\.colour is not a setting of Widget"):
        check_node(outer, "outer")
