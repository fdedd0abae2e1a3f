"""Two-pass inference over a checkpoint with experts (Transformer² §3.2): the dispatcher picks z' for each
prompt, the model answers with W'(z'). The runtime (chat, serve, and the runner's evaluation, where it is the router
of `evals.suite.evaluate`) and the benchmark use it.

Files beside the (unchanged) base weights: `experts/<domain>.safetensors`, `experts.json` (domains, target),
`dispatcher.json` (mode and what it learned: the linear probe, the classification expert's file, the CEM mixes).
U and V are recomputed here from the base weights (`svf.SVF`), and every expert is checked against the
fingerprint it was saved with.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from ..evals.suite import evaluate
from .dispatch import OTHER, LinearProbe, linear_router, prompt_router
from .expert import Expert, mix
from .svf import SVF

EXPERTS_FILE = "experts.json"
DISPATCHER_FILE = "dispatcher.json"
DESIGN_FILE = "agent_design.json"  # the searched design chat and serve answer with (`designs.Design`)
ARCHIVE_FILE = "adas_archive.json"
TEXT_QUERY_CHARS = 2000  # what the dispatcher reads of a perplexity text to pick its expert


def has_experts(folder: str | Path) -> bool:
    return (Path(folder) / DISPATCHER_FILE).is_file() and (Path(folder) / EXPERTS_FILE).is_file()


def read_design(folder: str | Path) -> dict | None:
    """The searched agent design beside a checkpoint (dispatch, mix, pattern, tools...), if there is one. Chat and
    serve take its dispatch and tools; its answer pattern is the eval's (one sampled chat answer is not voted)."""
    path = Path(folder) / DESIGN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


MODES = ("linear", "prompt", "cls_expert", "cem", "static", "none")


class TwoPass:
    """Modes: the dispatcher's (linear, prompt, cls_expert: per prompt; cem: per task), plus what a searched agent
    design may ask for: `static` (one mix α for every prompt) and `none` (the base weights)."""

    def __init__(self, model, tok, folder: str | Path, mode: str | None = None, alpha: list[float] | None = None,
                 svf: SVF | None = None, verify: bool = True):
        """`verify=False`: the model holds a re-encoding of the weights the experts were trained on (a compression
        candidate being judged), so their fingerprints are not expected to match; the written artifact is
        re-anchored (`expert.rebase_experts`) and checked again when it is loaded."""
        folder = Path(folder)
        self.model, self.tok = model, tok
        self.spec = json.loads((folder / EXPERTS_FILE).read_text())
        self.dispatcher = json.loads((folder / DISPATCHER_FILE).read_text())
        self.mode = mode or self.dispatcher["mode"]
        if self.mode not in MODES:
            raise ValueError(f"{folder / DISPATCHER_FILE}: unknown dispatch mode {self.mode!r}; allowed: {list(MODES)}")
        self.svf = svf if svf is not None and svf.target == self.spec["target"] else SVF(model, self.spec["target"])
        self.experts = {d: Expert.load(folder / f) for d, f in self.spec["files"].items()}
        for e in self.experts.values():
            if verify:
                e.verify(self.svf)
        self.domains = list(self.experts)
        self.alpha = alpha
        if self.mode == "static" and (alpha is None or len(alpha) != len(self.domains)):
            raise ValueError(f"a static mix needs one weight per expert ({self.domains}), got {alpha}")
        if self.mode == "linear":
            self.route = linear_router(model, tok, self.domains, LinearProbe.from_dict(self.dispatcher["linear"]))
        elif self.mode == "prompt":
            self.route = prompt_router(model, tok, self.domains)
        elif self.mode == "cls_expert":
            if "cls_expert" not in self.dispatcher:
                raise ValueError(f"{folder}: no classification expert was trained (experts.dispatch=cls_expert)")
            cls = Expert.load(folder / self.dispatcher["cls_expert"])
            if verify:
                cls.verify(self.svf)
            self.route = prompt_router(model, tok, self.domains, self.svf, cls.z)
        elif self.mode == "cem" and "cem" not in self.dispatcher:
            raise ValueError(f"{folder}: no CEM mixes were searched (experts.dispatch=cem)")

    def z_of(self, choice: str):
        """A domain's expert, a CEM mix (`mix:<task>`), the static mix, or None (base: `OTHER` and anything else)."""
        if choice == "static":
            return mix(list(self.experts.values()), self.alpha)
        if choice.startswith("mix:"):
            alpha = self.dispatcher.get("cem", {}).get(choice[4:])
            return None if alpha is None else mix(list(self.experts.values()), alpha)
        e = self.experts.get(choice)
        return e.z if e else None

    @staticmethod
    def target_of(folder: str | Path) -> str:
        return json.loads((Path(folder) / EXPERTS_FILE).read_text())["target"]

    def choose(self, queries: list[str], task: str = "") -> list[str]:
        """Each query's choice; a CEM mix is per task (no task, as in a chat message: the base)."""
        if self.mode in ("cem", "static", "none"):
            one = {"cem": f"mix:{task}" if task else OTHER, "static": "static", "none": OTHER}[self.mode]
            return [one] * len(queries)
        return self.route(queries)

    def choose_one(self, query: str) -> str:
        """The expert for one chat or API message."""
        return self.choose([query])[0]

    @contextmanager
    def applied(self, choice: str):
        """The model answers with W'(z) of `choice` inside the block, with W again after it."""
        self.svf.apply(self.z_of(choice))
        try:
            yield
        finally:
            self.svf.apply(None)

    def groups(self, choices: list[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, c in enumerate(choices):
            out.setdefault(c, []).append(i)
        return out

    def choose_text(self, text: str) -> str:
        """The expert for a perplexity text: the dispatcher reads its start as a language-domain query."""
        return self.choose([text[:TEXT_QUERY_CHARS]], "language")[0]

    def evaluate(self, cfg, split: str = "test") -> tuple[dict[str, float], dict[str, dict[str, int]]]:
        """The eval suite's metrics with each prompt (each perplexity text) answered by its routed expert (plain
        greedy decoding, no tools), and where each task's prompts were routed."""
        routed: dict[str, dict[str, int]] = {}
        return evaluate(self.model, self.tok, cfg, split, router=self, routed=routed), routed
