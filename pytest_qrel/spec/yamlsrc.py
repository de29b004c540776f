"""YAML loading that remembers line numbers, so every spec error can say ``file:line``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

MAX_DEPTH = 64
"""How deeply mappings and lists may nest. A real suite nests about 6 levels; the bound is checked
while the file is composed, so a file nested thousands of levels deep is one error line, not a
``RecursionError`` (the composer and the conversion below recurse once per level)."""

MAX_VALUES = 100_000
"""How many values (mappings, lists and scalars) a suite may hold once its aliases are expanded.
Composing keeps an alias as a reference to its anchor's node, so a 9-level alias bomb is a few
hundred bytes of nodes; it is sized before any expansion and refused when it would exceed this
(a real suite holds a few hundred values; an ImageNet class list inline, a few thousand)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-5`` (PyYAML's 1.1 rules need a dot)
    and refuses nesting deeper than :data:`MAX_DEPTH` while it composes."""

    name: str
    _depth = 0
    aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecError(
                    f"the YAML nests mappings or lists more than {MAX_DEPTH} levels deep",
                    file=self.name,
                    line=self.peek_event().start_mark.line + 1,
                    fix="a suite nests a few levels: flatten the value",
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class LineDict(dict):
    """A mapping from the YAML file; ``line`` is where it starts, ``key_lines[k]`` where key k is."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)


class LineList(list):
    line: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int | None:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


_STD = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(_STD + t for t in ("map", "seq", "str", "int", "float", "bool", "null", "timestamp"))
"""The YAML tags a suite may carry (the core schema plus dates). Anything else, written explicitly
(``!!python/object/apply:os.system``, ``!!set``, ``!!binary``, ``!custom``), is rejected with its
line: a suite is plain data, and a tag PyYAML's safe loader would read as a plain list or mapping
must not be silently accepted."""


def _check_tag(node: yaml.Node, loader: yaml.SafeLoader) -> None:
    if node.tag in ALLOWED_TAGS:
        return
    if node.tag == _STD + "merge":
        raise SpecError(
            "YAML merge keys ('<<') are not supported",
            file=loader.name,
            line=node.start_mark.line + 1,
            fix="write the keys out in each mapping",
        )
    shown = "!!" + node.tag[len(_STD):] if node.tag.startswith(_STD) else node.tag
    raise SpecError(
        f"YAML tag '{shown}' is not allowed",
        file=loader.name,
        line=node.start_mark.line + 1,
        fix="remove the tag: a suite holds only plain mappings, lists, strings and numbers",
    )


def _convert(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    _check_tag(node, loader)
    if isinstance(node, yaml.MappingNode):
        out = LineDict()
        out.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = _convert(key_node, loader)
            if not isinstance(key, (str, int, float, bool)):
                raise SpecError("mapping keys must be plain scalars", file=loader.name, line=key_node.start_mark.line + 1)
            if key in out:
                raise SpecError(
                    f"duplicate key '{key}'",
                    file=loader.name,
                    line=key_node.start_mark.line + 1,
                    fix="remove or rename one of them",
                )
            out[key] = _convert(value_node, loader)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LineList()
        seq.line = node.start_mark.line + 1
        for item in node.value:
            seq.append(_convert(item, loader))
            seq.item_lines.append(item.start_mark.line + 1)
        return seq
    return loader.construct_object(node, deep=True)


def _check_expanded_size(root: yaml.Node, loader: _Loader) -> None:
    """Refuse a document that would hold more than :data:`MAX_VALUES` values once its aliases are
    expanded, before expanding anything: sizes are summed over the node graph, each node once
    (an alias shares its anchor's node). The error names the innermost value that is too big,
    where the aliases multiply."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in open_:  # an alias inside its own anchor's value: infinite once expanded
            raise SpecError(
                "an alias (*name) refers to the value it is part of, which would never end",
                file=loader.name,
                line=node.start_mark.line + 1,
                fix="point the alias at a value outside its own anchor",
            )
        if id(node) not in sizes:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            open_.add(id(node))
            sizes[id(node)] = 1 + sum(size(c) for c in children)  # depth <= MAX_DEPTH: recursion is safe
            open_.discard(id(node))
        return sizes[id(node)]

    if size(root) <= MAX_VALUES:
        return
    node = root
    while True:
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        bigger = [c for c in children if isinstance(c, yaml.CollectionNode) and sizes[id(c)] > MAX_VALUES]
        if not bigger:
            break
        node = bigger[0]
    through = f" through the file's {loader.aliases} aliases (*name)" if loader.aliases else ""
    raise SpecError(
        f"this value expands to {size(node):,} values{through}, more than the {MAX_VALUES:,} a suite may hold",
        file=loader.name,
        line=node.start_mark.line + 1,
        fix="write the values out instead of nesting aliases" if loader.aliases else "split the data out of the suite file",
    )


def kind_of(x: Any) -> str:
    """How an error names a YAML value's type: ``a list`` (also for LineList), ``a mapping``, ``a number``..."""
    kinds = ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"), (str, "a string"), ((int, float), "a number"), (type(None), "nothing"))
    return next((name for t, name in kinds if isinstance(x, t)), type(x).__name__)


def load_yaml(path: str | Path) -> Any:
    """Parse one YAML document safely into LineDict/LineList/scalars; syntax errors become SpecError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("suite file does not exist", file=path, fix="check the path given to --qrel-suite") from None
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"the suite file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})", file=path, fix="save it as UTF-8"
        ) from None
    except OSError as exc:
        raise SpecError(f"cannot read suite file ({exc.strerror or exc})", file=path, fix="give the path of a readable YAML file") from None
    loader = _Loader(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, loader)
        return _convert(node, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise SpecError(f"invalid YAML: {problem}", file=path, line=line, fix="fix the YAML syntax") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=path) from None
    finally:
        loader.dispose()
