"""The one YAML reader of policies, fault plans and campaigns: regular files, line numbers kept.

Every complaint about such a file reads ``file:line: reason``, so the parse
keeps where each piece came from. ``compose`` gives the node tree (each node
knows its line; the policy reader walks it); ``load`` builds plain values
from that same tree, mappings as ``LineDict`` and sequences as ``LineList``,
which remember the line of themselves and of each key or item (the plan
reader uses them). ``kind`` and ``said`` word a value as the user wrote it
(a list, a mapping, 'text'), never as the Python class that holds it.
"""

from __future__ import annotations

import datetime
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import InputError
from .inputs import InputFileError, read_text


class LineDict(dict[Any, Any]):
    """A mapping from YAML with the line of itself and of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A sequence from YAML with the line of itself and of each item."""

    line: int = 0
    item_lines: list[int]


class YamlError(ValueError):
    """The text is not YAML (or uses what these files cannot hold); carries the line of the problem."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class YamlFileError(InputError, ValueError):
    """A YAML file that cannot be used: ``file:line: reason`` (or ``file: reason`` with no line)."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {reason}")


class _Loader(yaml.SafeLoader):
    pass


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _mapping(loader: _Loader, node: MappingNode) -> LineDict:
    out = LineDict()
    out.line = _line(node)
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise YamlError(f"a key must be a name or a number, not {kind(key)}", _line(key_node)) from None
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = _line(key_node)
    return out


def _sequence(loader: _Loader, node: SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = _line(node)
    out.item_lines = [_line(child) for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def compose(text: str) -> Node | None:
    """The node tree of a YAML document (None for an empty one); YamlError where it is not YAML."""
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(str(exc.problem or exc), _line_of_mark(mark)) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None


def _line_of_mark(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


def construct(node: Node | None) -> Any:
    """Plain values, LineDicts and LineLists from a node tree of ``compose``."""
    if node is None:
        return None
    loader = _Loader("")
    try:
        return loader.construct_document(node)
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlError(str(exc.problem or exc), _line_of_mark(mark)) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None
    finally:
        loader.dispose()


def load(text: str) -> Any:
    """Parse YAML text into plain values, LineDicts and LineLists."""
    return construct(compose(text))


def read(path: str, what: str) -> str:
    """The text of the YAML file ``path`` (a regular UTF-8 file); YamlFileError naming it otherwise.

    ``what`` is the file's role (``policy``, ``fault plan``, ``campaign``).
    """
    try:
        return read_text(path, what)
    except InputFileError as exc:
        prefix = f"cannot read {what} {path}: "
        text = str(exc)
        raise YamlFileError(path, None, text[len(prefix) :] if text.startswith(prefix) else text) from None


def line_of(container: Any, key: Any = None) -> int:
    """Best line for ``container[key]`` (or the container itself); 0 if unknown."""
    if isinstance(container, LineDict):
        if key is not None and key in container.key_lines:
            return container.key_lines[key]
        return container.line
    if isinstance(container, LineList):
        if isinstance(key, int) and 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return 0


def kind(value: Any) -> str:
    """What sort of value the user wrote, in words: 'a list', 'a mapping', 'a string', 'nothing'."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return "a value of another kind"


def said(value: Any) -> str:
    """A value as the user wrote it, for 'X must be ..., not <said>': a scalar quoted, a container by its kind."""
    if value is None or isinstance(value, dict | list | tuple | set | datetime.date | bytes):
        return kind(value)
    return repr(value)
