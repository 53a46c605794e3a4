"""The generated parts of ``mtl-train --help``, built from the config tree so that they cannot drift from it.

``configs/hydra/default.yaml`` holds the help text (Hydra's ``hydra.help.template``). Two parts of it are filled in
by the OmegaConf resolver ``mtl_train_help`` that :func:`register_help_resolver` registers:

- ``${mtl_train_help:groups}``: every config group with its options (the default one marked), from every config
  folder of the search path: the package's, and a user's own added with ``--config-dir`` or ``hydra.searchpath``;
- ``${mtl_train_help:keys}``: every key of ``configs/train.yaml`` and ``configs/trainer/default.yaml`` with its
  default and the comment beside it in the YAML file;
- ``${mtl_train_help:types}``: every task type (:data:`mtl_train.task_types.TASK_TYPES`) with the target it fits
  and the head, loss and metric it builds.

All are wrapped to 80 columns.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from mtl_train.task_types import TASK_TYPES

WIDTH = 80
NO_BREAK = "\u00a0"  # textwrap breaks lines at ASCII whitespace only
NAME_COLUMN = 26  # indent 2 + the longest key (trainer.eval_batch_size) + 1
# A top-level key with its value and, optionally, a comment; and a comment line that continues the previous one.
KEY_LINE = re.compile(r"^(?P<key>[A-Za-z_]\w*):[ \t]*(?P<value>[^#]*?)[ \t]*(?:#[ \t]*(?P<comment>.*))?$")
CONTINUED_COMMENT = re.compile(r"^[ \t]+#[ \t]*(?P<comment>.*)$")
# The files whose keys --help explains, and the prefix of their keys on the command line.
KEY_FILES = (("train.yaml", ""), ("trainer/default.yaml", "trainer."))


def commented_keys(path: Path) -> list[tuple[str, str, str]]:
    """``(key, default, comment)`` for each top-level scalar key of a flat YAML file; a comment that goes on, on
    the next lines (``   # ...``), is joined to it. Keys holding a mapping or list (no value on their line) are
    left out."""
    entries: list[list[str]] = []
    for line in path.read_text().splitlines():
        continued = CONTINUED_COMMENT.match(line)
        if continued and entries:
            entries[-1][2] = f"{entries[-1][2]} {continued['comment']}".strip()
            continue
        match = KEY_LINE.match(line)
        if match and match["value"]:
            entries.append([match["key"], match["value"], match["comment"] or ""])
    return [(key, value, comment) for key, value, comment in entries]


def entry(name: str, text: str) -> str:
    """``name`` in a column of :data:`NAME_COLUMN`, then ``text`` wrapped to :data:`WIDTH` with a hanging indent.
    ``text`` may hold non-breaking spaces (U+00A0) to keep words together; they are printed as spaces."""
    first = f"  {name}".ljust(NAME_COLUMN)
    if len(first) > NAME_COLUMN:
        first += "\n" + " " * NAME_COLUMN
    wrapped = textwrap.fill(text, WIDTH, initial_indent=first, subsequent_indent=" " * NAME_COLUMN,
                            break_on_hyphens=False, break_long_words=False)
    return wrapped.replace(NO_BREAK, " ")


def default_choices(config_dir: Path) -> dict[str, str]:
    """The option each group takes by default: the ``defaults`` list of ``train.yaml``."""
    defaults = yaml.safe_load((config_dir / "train.yaml").read_text())["defaults"]
    return {group: option for item in defaults if isinstance(item, dict) for group, option in item.items()}


def groups_help(config_dir: Path, extra_dirs: Sequence[Path] = ()) -> str:
    """One entry per config group (a folder of YAML files, ``hydra`` left out) of ``config_dir`` and the
    ``extra_dirs`` (a user's own config folders): its options from all of them, the default marked."""
    chosen = default_choices(config_dir)
    options: dict[str, set[str]] = {}
    for folder in (config_dir, *extra_dirs):
        for group in (p for p in folder.iterdir() if p.is_dir() and p.name != "hydra"):
            options.setdefault(group.name, set()).update(p.stem for p in group.glob("*.yaml"))
    lines = []
    for group, stems in sorted(options.items()):
        names = [stem + (" (default)" if stem == chosen.get(group) else "") for stem in sorted(stems)]
        lines.append(entry(group, ", ".join(names)))
    return "\n".join(lines)


def search_path_dirs(config_dir: Path) -> list[Path]:
    """The config folders of the running Hydra app's search path other than ``config_dir``: those added with
    ``--config-dir`` or ``hydra.searchpath=[file://...]``. Empty outside a Hydra app."""
    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    folders = [Path(source.path).resolve() for source in sources if source.schema == "file"]
    return [folder for folder in folders if folder.is_dir() and folder != config_dir.resolve()]


def keys_help(config_dir: Path) -> str:
    """One entry per key of :data:`KEY_FILES`: its meaning (the YAML comment) and its default."""
    lines = [entry(prefix + key, f"{comment} [default:{NO_BREAK}{value}]".lstrip())
             for file, prefix in KEY_FILES for key, value, comment in commented_keys(config_dir / file)]
    return "\n".join(lines)


def types_help() -> str:
    """One entry per task type: the target it fits, and its head, loss and metric."""
    return "\n".join(
        entry(name, f"{kind.target_text()}: heads={kind.head}, loss={kind.loss}, "
                    f"{kind.metric['_target_'].rsplit('.', 1)[-1]}".replace(" (", f"{NO_BREAK}("))
        for name, kind in TASK_TYPES.items())


def help_part(config_dir: Path, part: str, extra_dirs: Sequence[Path] = ()) -> str:
    """``groups`` (with the options of ``extra_dirs`` too), ``keys`` or ``types``, with ``$`` doubled: Hydra passes
    the help text through ``string.Template``."""
    if part == "groups":
        text = groups_help(config_dir, extra_dirs)
    elif part == "keys":
        text = keys_help(config_dir)
    elif part == "types":
        text = types_help()
    else:
        raise ValueError(f"mtl_train_help: unknown part {part!r}; use one of groups, keys, types")
    return text.replace("$", "$$")


def register_help_resolver(config_dir: str) -> None:
    """Register ``${mtl_train_help:groups}`` / ``${mtl_train_help:keys}`` for the config tree at ``config_dir``
    (plus, for the groups, the folders on the running app's search path)."""
    root = Path(config_dir)
    OmegaConf.register_new_resolver("mtl_train_help", lambda part: help_part(root, part, search_path_dirs(root)),
                                    replace=True)
