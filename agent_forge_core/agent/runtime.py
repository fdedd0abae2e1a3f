"""An agent: a model with its tools, memory and retrieval index, answering in the tool-call loop.

`Runtime.open(folder, model, tokenizer, agent_settings)` reads the checkpoint's `runtime.json` (what the
agent was built with; defaults when there is none), resolves its tools (built-in and installed ones; plus
this machine's `agent.tools`), opens the SQLite memory of (agent, session) and loads the retrieval index,
building it once per (corpus digest, dense model) under `agent.index_dir` (plain files, no pickle).
`answer()` runs one turn; `completer()` is the eval suite's hook: the suite's prompts answered with the
tools in the loop, markup stripped before the task checker sees them (results kept).
"""
from __future__ import annotations

import hashlib
import json
import uuid
from contextlib import nullcontext
from pathlib import Path

from ..errors import ConfigError
from ..evals.suite import routed_blocks
from ..experts.two_pass import TwoPass, has_experts, read_design
from .generate import Generation, generate, generate_batch
from .markup import strip_markup
from .memory import Memory
from .prompt import conversation, instructions
from .settings import RUNTIME_FILE, AgentSettings, RuntimeSpec
from .tools import Tool, calculator_tool, import_tool, installed_tools, memory_tools, search_tool

BUILTIN = ("calc", "mem_write", "mem_read", "search")


def read_spec(folder: str | Path | None) -> RuntimeSpec:
    path = Path(folder) / RUNTIME_FILE if folder else None
    if path is None or not path.is_file():
        return RuntimeSpec()
    try:
        return RuntimeSpec.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a valid runtime description ({e}); re-create the checkpoint") from None


def index_for(spec: RuntimeSpec, settings: AgentSettings, model=None, tokenizer=None, model_key: str = ""):
    """The retrieval index of the spec's corpus: loaded if built before, else built and kept."""
    from .retrieval.corpus import digest, load_corpus
    from .retrieval.index import RetrievalIndex

    passages = load_corpus(spec.corpus, spec.passage_words)
    name = hashlib.sha256(f"{digest(passages)}|{spec.dense and model_key}".encode()).hexdigest()[:16]
    folder = Path(settings.index_dir) / name
    if (folder / "meta.json").is_file():
        index = RetrievalIndex.load(folder)
    else:
        embedder = (model, tokenizer) if spec.dense else None
        index = RetrievalIndex.build(passages, spec.corpus, embedder, model_key if spec.dense else None)
        tmp = folder.with_name(f".{name}-{uuid.uuid4().hex[:8]}")
        index.save(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process built it meanwhile: theirs is the same
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if spec.dense:
        index.attach_model(model, tokenizer)
    return index


class Runtime:
    def __init__(self, spec: RuntimeSpec, tools: dict[str, Tool], memory: Memory | None, index=None,
                 two_pass: TwoPass | None = None):
        self.spec, self.tools, self.memory, self.index = spec, tools, memory, index
        self.two_pass = two_pass  # a checkpoint with SVF experts: each message answered by its dispatched expert

    @classmethod
    def open(cls, folder, model, tokenizer, settings: AgentSettings | None = None, session: str | None = None,
             model_key: str = "", spec: RuntimeSpec | None = None, verify_experts: bool = True) -> "Runtime":
        settings = settings or AgentSettings()
        design = read_design(folder) if folder else None
        if spec is None and design is not None and not (Path(folder) / RUNTIME_FILE).is_file():
            # a searched agent design says which tools it was scored with
            tools = (["calc"] if design.get("tools") else []) + (["search"] if design.get("retrieval") else [])
            spec = RuntimeSpec(tools=tools, instructions=bool(tools))
        spec = spec or read_spec(folder)
        installed = installed_tools()
        unknown = [t for t in spec.tools if t not in BUILTIN and t not in installed]
        if unknown:
            raise ConfigError(f"runtime tools {unknown} are neither built in {list(BUILTIN)} nor installed (entry point "
                              "group agent_forge.tools); install the package that provides them")
        memory = Memory(settings.memory, settings.agent, session or settings.session)
        tools: dict[str, Tool] = {}
        index = None
        for name in spec.tools:
            if name == "calc":
                tools[name] = calculator_tool()
            elif name in ("mem_write", "mem_read"):
                tools.update({t.name: t for t in memory_tools(memory) if t.name == name})
            elif name == "search":
                index = index_for(spec, settings, model, tokenizer, model_key)
                tools[name] = search_tool(index, spec.retrieval_k, spec.neighbours)
            else:
                tools[name] = installed[name]
        for path in settings.tools:  # this machine's own extra tools
            tool = import_tool(path)
            tools[tool.name] = tool
        two_pass = None
        if folder and model is not None and has_experts(folder):
            two_pass = TwoPass(model, tokenizer, folder, design and design["dispatch"], design and design.get("mix"),
                               verify=verify_experts)
        return cls(spec, tools, memory, index, two_pass)

    def expert(self, question: str):
        """The block in which the model answers `question`: with its dispatched expert, if it has experts."""
        return self.two_pass.applied(self.two_pass.choose_one(question)) if self.two_pass else nullcontext()

    def preface(self, extra: list[Tool] = ()) -> str:
        return instructions([*self.tools.values(), *extra]) if self.spec.instructions else ""

    def prompt(self, question: str, turns: list[tuple[str, str]] = (), extra: list[Tool] = (), system: str = "") -> str:
        head = "\n".join(x for x in (system, self.preface(extra)) if x)
        return conversation(list(turns), question, head)

    def answer(self, model, tokenizer, question: str, turns: list[tuple[str, str]] = (), **kw) -> Generation:
        with self.expert(question):
            return generate(model, tokenizer, self.prompt(question, turns), self.tools, max_calls=self.spec.max_calls, **kw)

    def routed(self, texts: list[str], task: str = "", route: bool = True) -> list[tuple[object, list[int]]]:
        """[(the block in which the texts at `indices` are answered, indices)]: one per expert the dispatcher picks
        (a CEM mix needs the `task`); one plain block without experts or with `route=False`."""
        return routed_blocks(self.two_pass if route else None, texts, task)

    def completer(self, max_new_tokens: int, batch_size: int = 8, temperature: float = 0.0, seed: int = 0,
                  task: str = "", route: bool = True):
        """The eval suite's hook: each prompt answered with the tools in the loop (and its dispatched expert; a
        CEM mix needs the `task`), markup stripped. `route=False`: the caller applies the experts (the suite's
        `router`, which also routes the target NLLs)."""

        def complete(model, tokenizer, prompts: list[str]) -> list[str]:
            head = self.preface()
            full = [f"{head}\n\n{p}" if head else p for p in prompts]
            out: list[str] = [""] * len(prompts)
            for block, ix in self.routed(prompts, task, route):
                with block:
                    gens = generate_batch(model, tokenizer, [full[i] for i in ix], self.tools, max_new_tokens=max_new_tokens,
                                          max_calls=self.spec.max_calls, batch_size=batch_size, temperature=temperature,
                                          seed=seed)
                for i, g in zip(ix, gens):
                    out[i] = strip_markup(g.text)
            return out

        return complete
