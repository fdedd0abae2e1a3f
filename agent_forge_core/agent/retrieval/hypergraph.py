"""Passages linked by shared identifiers: each identifier (a dotted name like `object.__getattr__`, a name
with an underscore, a call like `len()`) that appears in 2..`max_edge` passages is a hyperedge over them.
A hit's neighbours are the passages that share the most hyperedges with it (ties: lower id first)."""
from __future__ import annotations

import re
from collections import Counter, defaultdict

IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\b|\b[A-Za-z0-9]*_[A-Za-z0-9_]+\b|\b[A-Za-z_]\w*\(\)")


def identifiers(text: str) -> set[str]:
    return {m.group(0) for m in IDENT.finditer(text)}


class Hypergraph:
    def __init__(self, edges: dict[str, list[int]]):
        self.edges = edges
        self.of: dict[int, list[str]] = defaultdict(list)
        for name, members in edges.items():
            for m in members:
                self.of[m].append(name)

    @classmethod
    def build(cls, texts: list[str], max_edge: int = 20) -> "Hypergraph":
        members: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(texts):
            for name in identifiers(t):
                members[name].append(i)
        return cls({n: m for n, m in sorted(members.items()) if 2 <= len(m) <= max_edge})

    def neighbours(self, doc: int, n: int) -> list[int]:
        shared = Counter(m for name in self.of.get(doc, []) for m in self.edges[name] if m != doc)
        return sorted(shared, key=lambda d: (-shared[d], d))[:n]
