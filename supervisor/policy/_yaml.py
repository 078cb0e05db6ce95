"""YAML text -> plain JSON-like data plus a map of where every value sits (1-based line numbers).

Policies are untrusted input. The text is only *parsed* into YAML events
(``yaml.parse``: no constructor ever runs on a tag) and the value is built
here, event by event, accepting nothing but the JSON types:
mappings with string keys, sequences, strings, integers, finite-or-not floats
(range checks happen later), booleans and null. Plain scalars are read as
YAML 1.2 (core schema, ``supervisor/yaml12.py``): ``1e3`` is a number, and a
spelling YAML 1.1 reads otherwise (``NO``, ``on``, ``12:30``, ``010``) is
refused, never guessed. Everything else is refused
with its line: ``!!python/*`` and any other explicit tag, timestamps, binary,
sets, merge keys (``<<``), duplicate keys, anchors/aliases (a document that
re-uses a node could expand exponentially when walked, "billion laughs"),
multiple documents, nesting deeper than ``MAX_DEPTH`` and documents larger
than ``MAX_POLICY_BYTES``. The event stream is consumed with an explicit
stack, so no document depth can exhaust the interpreter's recursion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from supervisor import yaml12

__all__ = ["MAX_DEPTH", "MAX_POLICY_BYTES", "LoadedYaml", "YamlProblem", "load_yaml"]

MAX_POLICY_BYTES = 512 * 1024
MAX_DEPTH = 32

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses; nothing is constructed by it

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_STR = "tag:yaml.org,2002:str"
_SCALARS: dict[str, Callable[[Any, Any], Any]] = {
    _STR: yaml.constructor.SafeConstructor.construct_yaml_str,
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": yaml.constructor.SafeConstructor.construct_yaml_null,
}

Path = tuple[str | int, ...]


class YamlProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class LoadedYaml:
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)  # path of a value -> line of that value
    key_lines: dict[Path, int] = field(default_factory=dict)  # path of a mapping entry -> line of its key

    def line_for(self, path: Path, *, key: bool = False) -> int:
        """The line of ``path``, or of its closest ancestor that has one."""
        p = tuple(path)
        while True:
            if key and p in self.key_lines:
                return self.key_lines[p]
            if p in self.lines:
                return self.lines[p]
            if not p:
                return 1
            p = p[:-1]


def load_yaml(text: str, *, yaml11: bool = False) -> LoadedYaml:
    """Parse ``text``; raise ``YamlProblem`` with the line of the first problem.

    ``yaml11``: read plain scalars as YAML 1.1, as versions before YAML 1.2 reading did: only for a
    document already stored, whose meaning (and version hash) must not change under its tenant.
    """
    if not isinstance(text, str):
        raise YamlProblem(1, "policy must be YAML text")
    # Cheap check before encoding: a str never has fewer UTF-8 bytes than characters.
    if len(text) > MAX_POLICY_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise YamlProblem(1, f"policy document is larger than {MAX_POLICY_BYTES} bytes")
    if "\x00" in text:
        raise YamlProblem(text[: text.index("\x00")].count("\n") + 1, "NUL character in policy text")
    out = LoadedYaml(data=None)
    try:
        _Builder(out, yaml11=yaml11).run(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        if "nesting depth" in problem:  # libyaml >= 0.2.5 / PyYAML 6.0.3 stop a deep flow collection while scanning
            raise YamlProblem(line, f"document nested deeper than {MAX_DEPTH} levels") from None
        raise YamlProblem(line, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"YAML error: {str(exc).splitlines()[0]}") from None
    return out


@dataclass
class _Frame:
    container: dict[str, Any] | list[Any]
    path: Path
    key: str | None = None  # mappings: the key whose value comes next


class _Builder:
    """Builds the data from the event stream with an explicit stack.

    PyYAML's own composer recurses per nesting level (the C one crashes the
    process on a deep enough document); this never recurses and stops at
    ``MAX_DEPTH``.
    """

    def __init__(self, out: LoadedYaml, *, yaml11: bool = False) -> None:
        self.out = out
        self.yaml11 = yaml11
        self.stack: list[_Frame] = []
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.SafeLoader("")  # decodes plain scalars of the JSON tags only
        self.documents = 0

    def run(self, events: Any) -> None:
        for ev in events:
            line = ev.start_mark.line + 1 if ev.start_mark is not None else 1
            if isinstance(ev, yaml.DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    raise YamlProblem(line, "only one YAML document is allowed")
            elif isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
                raise YamlProblem(line, "YAML anchors and aliases are not allowed in a policy")
            elif isinstance(ev, yaml.ScalarEvent):
                self._scalar(ev, line)
            elif isinstance(ev, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                self._start(ev, line)
            elif isinstance(ev, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                self.stack.pop()

    def _slot(self, line: int, what: str) -> Path:
        """Where the next value goes; records its line."""
        if not self.stack:
            path: Path = ()
        else:
            top = self.stack[-1]
            if isinstance(top.container, list):
                path = (*top.path, len(top.container))
            elif top.key is None:
                raise YamlProblem(line, f"mapping keys must be strings, not a {what}")
            else:
                path = (*top.path, top.key)
        self.out.lines[path] = line
        return path

    def _put(self, value: Any) -> None:
        if not self.stack:
            self.out.data = value
            return
        top = self.stack[-1]
        if isinstance(top.container, list):
            top.container.append(value)
        else:
            assert top.key is not None
            top.container[top.key] = value
            top.key = None

    def _start(self, ev: Any, line: int) -> None:
        is_map = isinstance(ev, yaml.MappingStartEvent)
        tag = ev.tag if ev.tag not in (None, "!") else (_MAP if is_map else _SEQ)
        if tag != (_MAP if is_map else _SEQ):
            raise YamlProblem(line, f"tag {_short(tag)} is not allowed")
        path = self._slot(line, "mapping" if is_map else "list")
        if len(self.stack) >= MAX_DEPTH:
            raise YamlProblem(line, f"document nested deeper than {MAX_DEPTH} levels")
        container: dict[str, Any] | list[Any] = {} if is_map else []
        self._put(container)
        self.stack.append(_Frame(container, path))

    def _scalar(self, ev: Any, line: int) -> None:
        tag = ev.tag
        top = self.stack[-1] if self.stack else None
        is_key = isinstance(top, _Frame) and isinstance(top.container, dict) and top.key is None
        if tag is None or tag == "!":
            if is_key and ev.implicit[0] and ev.value == "<<":
                raise YamlProblem(line, "merge keys (<<) are not allowed in a policy")
            if ev.implicit[0] and not self.yaml11:
                try:
                    tag = yaml12.plain_tag(ev.value)
                except yaml12.AmbiguousScalar as exc:
                    raise YamlProblem(line, str(exc)) from None
            else:
                tag = self.resolver.resolve(yaml.ScalarNode, ev.value, ev.implicit)
        if "\x00" in ev.value:  # a double-quoted "\0" escape: stored text takes no NUL (supervisor/storable.py)
            raise YamlProblem(line, "NUL characters (U+0000) are not accepted")
        if is_key:
            assert isinstance(top, _Frame) and isinstance(top.container, dict)
            if tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(line, "merge keys (<<) are not allowed in a policy")
            if tag != _STR:
                raise YamlProblem(line, f"mapping keys must be strings (got {ev.value!r}; quote it)")
            if ev.value in top.container:
                raise YamlProblem(line, f"duplicate key {ev.value!r}")
            top.key = ev.value
            self.out.key_lines[(*top.path, ev.value)] = line
            return
        build = _SCALARS.get(tag)
        if build is None:
            raise YamlProblem(line, f"tag {_short(tag)} is not allowed (quote the value to make it a string)")
        node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
        try:
            value = build(self.constructor, node) if self.yaml11 else yaml12.construct(tag, ev.value)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. an integer with more digits than Python converts
            raise YamlProblem(line, f"bad value: {str(exc).splitlines()[0][:100]}") from None
        self._slot(line, "scalar")
        self._put(value)


def _short(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag
