"""Settings of the agent runtime.

`RuntimeSpec` is what a checkpoint's `runtime.json` may say (which built-in or installed tools, the call cap,
the retrieval corpus); `AgentSettings` (the `agent` config section) is this machine's side: where memory
lives, extra tools by import path, the server's limits. All of it is runtime: never part of a key.
"""
from __future__ import annotations

from pydantic import Field

from ..settings_base import Section

RUNTIME_FILE = "runtime.json"


class RuntimeSpec(Section):
    tools: list[str] = Field(default_factory=lambda: ["calc", "mem_write", "mem_read", "search"],
                             description="Built-in (calc, mem_write, mem_read, search) or installed tools.")
    max_calls: int = Field(4, ge=0, le=16, description="Tool calls executed per answer; later ones get an error result.")
    instructions: bool = Field(True, description="Put the tools' instructions and examples before the conversation "
                               "(a baked checkpoint does not need them).")
    corpus: str = Field("pydoc", description="Retrieval corpus: `pydoc` (CPython's pydoc_data topics) or a folder.")
    retrieval_k: int = Field(2, ge=1, le=10)
    neighbours: int = Field(0, ge=0, le=5, description="Hypergraph neighbours returned with the top hit.")
    dense: bool = Field(False, description="Fuse dense (the model's own mean-pooled embeddings) with BM25.")
    passage_words: int = Field(90, ge=20, le=400)


class AgentSettings(Section):
    memory: str = Field(".forge/agent/memory.sqlite", description="SQLite file of the agents' memory.")
    agent: str = Field("agent", description="Memory is kept per agent and per session.")
    session: str = Field("default")
    tools: list[str] = Field(default_factory=list, description="Extra tools on this machine: module:function.")
    index_dir: str = Field(".forge/agent/indexes", description="Where retrieval indexes are built and kept.")
    max_new_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_concurrency: int = Field(4, ge=1, description="serve: requests in flight; more are answered 429.")
