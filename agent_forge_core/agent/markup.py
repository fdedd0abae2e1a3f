"""The tool-call markup the model writes inside its one-line answer, and what the runtime inserts back.

    call:    <calc>17*3</calc>    <mem_write>key=value</mem_write>    <mem_read>key</mem_read>    <search>query</search>
    result:  <result>51</result>  (a search's passages come back as <docs>...</docs>)

A call is complete when its closing tag is written; arguments and results are single lines (the evals and
the one-line answer format stop at a newline). `strip_markup` gives what a task checker sees: calls
removed, results kept as plain text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

RESULT, DOCS = "result", "docs"
MAX_RESULT = 400  # characters of a result that go back into the context

_CALL = re.compile(r"<(?P<tool>[a-z][a-z0-9_]*)>(?P<args>[^<>\n]*)</(?P=tool)>")
_ANY_TAG = re.compile(r"</?[a-z][a-z0-9_]*>")


@dataclass(frozen=True)
class Call:
    tool: str
    args: str
    start: int  # offsets of the whole call in the text it was found in
    end: int


def find_call(text: str, tools) -> Call | None:
    """The first complete call of a known tool in `text` (results and unknown tags are not calls)."""
    for m in _CALL.finditer(text):
        if m.group("tool") in tools and m.group("tool") not in (RESULT, DOCS):
            return Call(m.group("tool"), m.group("args").strip(), m.start(), m.end())
    return None


def one_line(text: str, limit: int = MAX_RESULT) -> str:
    flat = " ".join(str(text).split()).replace("<", "‹").replace(">", "›")  # results cannot fake a tag
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def wrap(tag: str, text: str) -> str:
    return f"<{tag}>{one_line(text)}</{tag}>"


def strip_markup(text: str) -> str:
    """Calls removed, result and docs tags unwrapped: `<calc>2+3</calc><result>5</result> Answer: 5` -> `5 Answer: 5`."""
    text = _CALL.sub(lambda m: "" if m.group("tool") not in (RESULT, DOCS) else m.group(0), text)
    return "\n".join(" ".join(_ANY_TAG.sub(" ", line).split()) for line in text.split("\n"))
