"""The import graph of agent_forge_core, tasks and flows: no circles, layers only import downwards, and
generic layers name no stage."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent_forge_core", "tasks", "flows")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> project modules it imports (anywhere in the file, inside functions too)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                r = resolve(t)
                # a package's own submodules and the three top-level packages' __init__ are not arrows
                if r and r != m and not m.startswith(r + ".") and r not in PACKAGES:
                    edges[m].add(r)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert circles(imports(modules())) == []


def test_layers_import_only_downwards():
    edges = imports(modules())
    for m, targets in edges.items():
        if m.startswith("agent_forge_core"):
            assert not any(t.startswith(("tasks", "flows")) for t in targets), (m, targets)
        if m.startswith("tasks"):
            assert not any(t.startswith("flows") for t in targets), (m, targets)
    for m, f in modules().items():  # the core never imports Prefect
        if m.startswith("agent_forge_core"):
            assert not re.search(r"^\s*(import prefect|from prefect)", f.read_text(), re.M), m


def test_only_the_registry_imports_stages_and_generic_layers_name_none():
    from agent_forge_core.stages.registry import available

    edges = imports(modules())
    stage_modules = {m for m in edges if m.endswith(".stage") and m.startswith("agent_forge_core.")}
    assert len(stage_modules) == len(available())
    for m, targets in edges.items():
        if m != "agent_forge_core.stages.registry":
            assert not (targets & stage_modules), (m, targets & stage_modules)
    generic = ["agent_forge_core/stages/contract.py", "agent_forge_core/stages/runner.py",
               "agent_forge_core/stages/plan.py", "agent_forge_core/fanout.py", "agent_forge_core/context.py",
               "agent_forge_core/config.py", "agent_forge_core/settings_base.py", "flows/forge.py", "flows/job.py",
               *[str(p.relative_to(ROOT)) for p in (ROOT / "tasks").glob("*.py")]]
    names = "|".join(re.escape(n) for n in available())
    for path in generic:
        text = (ROOT / path).read_text()
        hits = re.findall(rf"""==\s*["']({names})["']|["']({names})["']\s*==|if\s+\w+\s+in\s+\(["']({names})""", text)
        assert not hits, (path, hits)
