"""The bounded YAML loader of :func:`dualcache._untrusted.load_yaml`, in a module of its own so that PyYAML is
imported only when a YAML file is read (the runtime itself reads JSON only)."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dualcache._exceptions import ConfigError
from dualcache._untrusted import (
    MAX_YAML_ALIASES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    MAX_YAML_SCALAR_CHARS,
    QUOTE_CHARS,
    one_line,
    quote,
)

__all__ = ["BoundedLoader"]


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses alias bombs, deep nesting, long scalars and duplicate keys while composing.

    Counts are taken as nodes are composed, before anything is constructed, so a refused document never
    costs more than its (size-limited) text. The YAML 1.1 timestamp resolver is left out: a date-like
    scalar (``2025-03-11``) stays a string, as Pulumi's Go YAML reader hands it to the program.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._sizes: dict[int, int] = {}
        self._open_anchors: set[str] = set()

    def _fail(self, message: str, node_or_event: Any) -> ConfigError:
        mark = getattr(node_or_event, "start_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return ConfigError(message + where)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise self._fail(f"more than {MAX_YAML_ALIASES} aliases (*name)", event)
            if event.anchor in self._open_anchors:
                raise self._fail(
                    f"alias *{one_line(event.anchor, QUOTE_CHARS)} refers to a node that contains it", event
                )
            aliased = super().compose_node(parent, index)
            assert aliased is not None
            return aliased
        anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise self._fail(f"mappings and sequences nest deeper than {MAX_YAML_DEPTH} levels", event)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
            assert node is not None
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)
        self._measure(node)
        return node

    def _measure(self, node: Node) -> None:
        sizes = self._sizes
        if isinstance(node, ScalarNode):
            if len(node.value) > MAX_YAML_SCALAR_CHARS:
                raise self._fail(
                    f"a value is {len(node.value):,} characters long; the limit is {MAX_YAML_SCALAR_CHARS:,}", node
                )
            size = 1
        elif isinstance(node, SequenceNode):
            size = 1 + sum(sizes.get(id(child), 1) for child in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
            self._check_duplicates(node)
        else:  # pragma: no cover - PyYAML has no other node kinds
            size = 1
        if size > MAX_YAML_NODES:
            raise self._fail(
                f"the document expands to more than {MAX_YAML_NODES:,} nodes (aliases counted where they are used)",
                node,
            )
        sizes[id(node)] = size

    def _check_duplicates(self, node: MappingNode) -> None:
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            ident = (key.tag, key.value)
            line = key.start_mark.line + 1
            if ident in seen:
                raise ConfigError(f"duplicate key {quote(key.value)} at line {line} (first at line {seen[ident]})")
            seen[ident] = line


BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
