"""Safe YAML for manifests: one document, no aliases, no duplicate keys, line numbers kept.

``yaml.safe_load`` alone would silently take the last of two duplicate keys
and expand aliases (a "billion laughs" document stays small on disk but
explodes once serialised to JSON for the store). We compose the node tree
ourselves so errors found later (pydantic) can still be pinned to a line.
Plain scalars are read as YAML 1.2, as in policies (``supervisor/yaml12.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor.yaml12 import CoreLoader

__all__ = ["YamlProblem", "line_of", "load_document"]


class YamlProblem(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(CoreLoader):
    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlProblem(event.start_mark.line + 1, "YAML aliases (*name) are not allowed here")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _check_duplicate_keys(node: Node) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, MappingNode):
            seen: set[str] = set()
            for key, value in n.value:
                if isinstance(key, ScalarNode):
                    if key.value in seen:
                        raise YamlProblem(key.start_mark.line + 1, f"duplicate key {key.value!r}")
                    seen.add(key.value)
                stack.extend((key, value))
        elif isinstance(n, SequenceNode):
            stack.extend(n.value)


def load_document(text: str) -> tuple[Any, Node | None]:
    """Parse one YAML document; returns (data, node tree). Raises YamlProblem."""
    try:
        loader = _Loader(text)  # the reader refuses NUL and other control characters here, before parsing
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(text, str) else None
        raise YamlProblem(line, str(exc).splitlines()[0]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_duplicate_keys(node)
        return loader.construct_document(node), node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise YamlProblem(mark.line + 1 if mark else None, problem) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(None, str(exc).splitlines()[0] if str(exc) else "invalid YAML") from None
    except RecursionError:
        raise YamlProblem(None, "YAML nested too deeply") from None
    finally:
        loader.dispose()


def line_of(node: Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest node of ``loc`` that exists in the tree."""
    line: int | None = None
    for part in loc:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
