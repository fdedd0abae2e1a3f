"""Tools: Python functions the model calls by name with one line of text, each with a JSON-schema description
in the shape of OpenAI function calling (what `serve` lists and what clients know).

Built in: `calc` (the safe calculator), `mem_write` / `mem_read` (the session's memory), `search` (the
retrieval index; its result is a `<docs>` line). Users add their own:
- installed packages: an entry point in group `agent_forge.tools` naming a `Tool` or a function;
- on this machine only: `module:function` in `--tool` / `agent.tools` of the local config. A checkpoint's
  `runtime.json` comes from the store and may name built-in and installed tools only, never an import
  path: loading a checkpoint must not import code the store chose.
A function tool takes the call's text and returns text; its description is its docstring's first line.
An exception becomes the call's result `error: ...`: the answer goes on.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable

from .calculator import CalculatorError, calculate
from .markup import DOCS, RESULT

ENTRY_POINTS = "agent_forge.tools"


def _one_string(name: str, description: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}}, "required": [name]}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[[str], str]
    parameters: dict = field(default_factory=lambda: _one_string("input", "the call's text"))
    result_tag: str = RESULT
    example: str = ""  # a call and its result, for the instructions: `<calc>17*3</calc><result>51</result>`

    def openai_schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def run(self, args: str) -> str:
        try:
            return str(self.fn(args))
        except CalculatorError as e:
            return f"error: {e}"
        except Exception as e:  # noqa: BLE001 - a tool's failure is the call's result, not the answer's end
            return f"error: {type(e).__name__}: {e}"


def calculator_tool() -> Tool:
    return Tool("calc", "Evaluate an arithmetic expression (numbers, + - * / // % **, parentheses).", calculate,
                _one_string("expression", "e.g. (17+4)*3"), example="<calc>17*3</calc><result>51</result>")


def memory_tools(memory) -> list[Tool]:
    return [
        Tool("mem_write", "Remember a value under a key for later conversations: key=value.", memory.tool_write,
             _one_string("entry", "key=value"), example="<mem_write>cat=41</mem_write><result>stored</result>"),
        Tool("mem_read", "Recall the value remembered under a key.", memory.tool_read, _one_string("key", "the key"),
             example="<mem_read>cat</mem_read><result>41</result>"),
    ]


def search_tool(index, k: int = 2, neighbours: int = 0) -> Tool:
    from .retrieval.index import docs_text

    return Tool("search", f"Search the documentation ({index.meta['description']}); returns passages.",
                lambda q: docs_text(index.search(q, k, neighbours)), _one_string("query", "what to look up"),
                result_tag=DOCS, example="<search>with statement __enter__</search><docs>[with] ...</docs>")


def function_tool(fn: Callable[[str], str], name: str | None = None) -> Tool:
    doc = (fn.__doc__ or "").strip().splitlines()
    return Tool(name or fn.__name__, doc[0] if doc else (name or fn.__name__), fn)


def installed_tools() -> dict[str, Tool]:
    """Tools that installed packages declare (entry point group `agent_forge.tools`)."""
    out = {}
    for ep in entry_points(group=ENTRY_POINTS):
        obj = ep.load()
        tool = obj if isinstance(obj, Tool) else function_tool(obj, ep.name)
        out[tool.name] = tool
    return out


def import_tool(path: str) -> Tool:
    """`module:function` from this machine's own configuration (never from a checkpoint's runtime.json)."""
    if ":" not in path:
        raise ValueError(f"tool {path!r}: give module:function")
    module, attr = path.split(":", 1)
    obj = getattr(importlib.import_module(module), attr)
    return obj if isinstance(obj, Tool) else function_tool(obj)
