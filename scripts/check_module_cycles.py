#!/usr/bin/env python3
"""Fail when two top-level modules of src/ depend on each other, directly or through others.

A module's dependencies are the `crate::NAME` paths in its files, test modules excluded. The
data path reads top to bottom (README.md, Layout): a cycle means two stages own one job.
"""
import collections
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def dependencies():
    deps = collections.defaultdict(set)
    for path in SRC.rglob("*.rs"):
        top = path.relative_to(SRC).parts[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = path.read_text()
        cut = text.find("#[cfg(test)]")
        if cut >= 0:
            text = text[:cut]
        for name in re.findall(r"crate::([a-z_]+)", text):
            if name != top:
                deps[top].add(name)
    return deps


def cycles(deps):
    found = set()
    for start in sorted(deps):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(deps.get(node, ())):
                if nxt == start:
                    found.add(tuple(path))
                elif nxt not in path:
                    stack.append((nxt, path + [nxt]))
    # One line per cycle, whatever module it was found from.
    seen, out = set(), []
    for c in sorted(found, key=len):
        if frozenset(c) not in seen:
            seen.add(frozenset(c))
            out.append(" -> ".join(c + (c[0],)))
    return out


if __name__ == "__main__":
    found = cycles(dependencies())
    for line in found:
        print(f"module cycle: {line}", file=sys.stderr)
    print(f"module cycles: {len(found)}")
    sys.exit(1 if found else 0)
