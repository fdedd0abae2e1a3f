"""Stage 6, baking: Prompt Baking (Bhargava et al. 2024) of tool use, memory, automatic retrieval and a
self-guided persona into the weights, one sub-bake after another.

For each bake b in `baking.order`: its prompt u_b (`prompts.py`; the persona's written by the model,
`persona.py`), trajectories sampled from the current model prompted with u_b and the runtime in the loop
(`trajectories.py`), the student trained on KL(prompted teacher ‖ unprompted student) at the generated
positions (`train.py`, `loss.py`), merged before the next bake (whose teacher is the merged model with its
own prompt: re-baking), with a share of the earlier bakes' trajectories replayed against their own
teachers' targets (`replay`: without it each bake overwrote the one before), and the input model's own answers
to the tasks no bake teaches against its own targets (`anchor`: in the quick chain in-context recall went 0.71 ->
0.21 over the four bakes without it, 0.67 with it; `BakingSettings.anchor`). Measured (`probes.py`) in three
conditions per bake, the input without and with u_b and the baked model without it, and every earlier bake
again after each bake (forgetting).

A float input trains LoRA (merged); a BitNet input trains its latent weights under the straight-through
estimator and is written as BitNet again (`ternary_input=refuse` stops instead). The checkpoint carries
`runtime.json` (the baked tools, no instructions: the prompt is in the weights), the prompts
(`prompt_<bake>.txt`) and `baking_history.json`; manifest metrics are the eval suite with the runtime on.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
import uuid
from typing import Iterator

from ..agent.runtime import BUILTIN, Runtime
from ..agent.settings import RUNTIME_FILE, AgentSettings, RuntimeSpec
from ..errors import ConfigError
from ..formats import bitnet as bitnet_format
from ..formats.files import add_sidecars
from ..model_io import load_model, save_model
from ..stages.contract import Built, StageContext, StageSpec
from .persona import expand, persona_prompt
from .probes import PRIMARY, PROBES, probe_tables, recovery
from .prompts import PROMPTS, TOOLS
from .queries import ANCHOR_TASKS, suite_queries, training_queries
from .settings import REFERENCE, BakingSettings
from ..training.precision import autocast
from .train import bake, teacher_logprobs
from .trajectories import sample

# 3: the memory prompt's no-call demonstrations; 4: no identity questions in the tool bake; 5: trajectories
# keep the generator's ids
VERSION = 9  # 6: the runtime and prompts are sidecars (carried by later stages); 7: four tool demonstrations, anchor;
# 8: the `output` probes (every bake after the last), the final agent's comparison; 9: the tool probe's call form
HISTORY_FILE = "baking_history.json"
TRAFFIC_SEED = 2000  # the agent's traffic (`traffic`) draws other queries than its bakes' (seed + i)


def scratch_agent(scratch, settings) -> AgentSettings:
    """Agent settings whose memory lives in `scratch` (probes never touch the user's memory); the run's index."""
    return AgentSettings(memory=str(scratch / "memory.sqlite"), index_dir=settings.agent.index_dir)


def load_input(folder, cfg: BakingSettings, device: str):
    """(model, tokenizer, student kind, BitNet storage layout (`save_bitnet`'s arguments) or None)."""
    if not bitnet_format.detect(folder):
        model, tok = load_model(str(folder), device=device)
        return model, tok, "lora", None
    if cfg.ternary_input == "refuse":
        raise ConfigError(f"baking: the input {folder.name} is a BitNet (ternary) checkpoint and "
                          "baking.ternary_input=refuse; set baking.ternary_input=ste to train its latent weights "
                          "under the straight-through estimator, or set bitnet.enabled=false to bake the float model")
    model, tok = bitnet_format.load_bitnet(folder, trainable=True, device=device)
    return model, tok, "latent", bitnet_format.layout(folder)


def bake_prompts(model, tok, runtime, cfg: BakingSettings) -> dict[str, str]:
    out = {}
    for b in cfg.order:
        out[b] = persona_prompt(cfg.persona, expand(model, tok, cfg.persona)) if b == "persona" else PROMPTS[b](runtime)
    return out


def measure(b: str, model, tok, runtime, prompt: str, cfg: BakingSettings, shots: int,
            n: int | None = None, primary_only: bool = False) -> dict[str, float]:
    with autocast(model.device, cfg.decode_precision, model):
        return PROBES[b](model, tok, runtime, prompt, n or cfg.probe_examples, cfg.seed, shots,
                         name=cfg.persona.name, turns=tuple(cfg.forgetting_turns), n_turns=cfg.forgetting_examples,
                         primary_only=primary_only)


def rehearsal(bank: dict[str, list], cfg: BakingSettings, seed: int) -> list:
    """Earlier bakes' trajectories to replay: `replay` x the bake's own count, shared evenly among them."""
    if not bank or cfg.replay <= 0:
        return []
    each = max(1, round(cfg.replay * cfg.trajectories / len(bank)))
    rng = random.Random(f"replay:{cfg.seed}:{seed}")
    return [x for items in bank.values() for x in rng.sample(items, min(each, len(items)))]


def anchor_set(model, tok, runtime, cfg: BakingSettings, shots: int, pad: int) -> list:
    """The input model's own answers, unprompted, to train-split prompts of the tasks no bake teaches
    (`ANCHOR_TASKS`), with its own distributions as targets: replayed in every bake, so the weights keep what no
    prompt asked to change (Learning without Forgetting, Li & Hoiem 2016: distillation from the model before the
    change on the inputs of the old tasks)."""
    n = round(cfg.anchor * cfg.trajectories)
    if n <= 0:
        return []
    queries = suite_queries(list(ANCHOR_TASKS), "train", n, shots, cfg.seed + 1000)
    with autocast(model.device, cfg.decode_precision, model):
        trajs = sample(model, tok, runtime, "", queries, cfg.temperature, cfg.max_new_tokens, cfg.seed + 1000,
                       session="bake-anchor")
    return list(zip(trajs, teacher_logprobs(model, trajs, pad, temperature=cfg.teacher_temperature)))


def bake_steps(b: str, cfg: BakingSettings) -> int:
    return max(1, round(cfg.steps * getattr(cfg.step_factor, b)))


def build(inputs: list[str], cfg: BakingSettings, ctx: StageContext, keys: dict[str, str]) -> Iterator[Built]:
    (parent,) = inputs
    src = ctx.store.get(parent)
    model, tok, kind, fmt = load_input(src, cfg, str(ctx.device))
    scratch = ctx.work_dir / f"baking-{uuid.uuid4().hex[:8]}"
    runtime = Runtime.open(None, model, tok, scratch_agent(scratch, ctx.settings), spec=RuntimeSpec(tools=list(BUILTIN)))
    shots = ctx.settings.eval.shots
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    steps = len(cfg.order) * (2 + cfg.persona.pursuit_rounds) + 1
    done = [0]

    def note(msg: str) -> None:
        ctx.progress(min(done[0] / steps, 0.99), f"baking: {msg}")

    try:
        note("prompts")
        t0 = time.time()
        prompts = bake_prompts(model, tok, runtime, cfg)
        input_s = {"prompts": time.time() - t0}
        probes: dict[str, dict] = {}
        for b in cfg.order:  # the input model, without and with each prompt
            note(f"{b}: base and prompted probes")
            t0 = time.time()
            probes[b] = {"base": measure(b, model, tok, runtime, "", cfg, shots),
                         "prompted": measure(b, model, tok, runtime, prompts[b], cfg, shots)}
            input_s[f"probes_{b}"] = time.time() - t0
        done[0] += 1
        note("anchor")
        t0 = time.time()
        anchor = anchor_set(model, tok, runtime, cfg, shots, pad)
        input_s["anchor"] = time.time() - t0
        history: dict[str, dict] = {}
        forgetting: dict[str, dict] = {}
        bank: dict[str, list] = {}  # each bake's training trajectories with its teacher's targets
        rounds = [(b, r) for b in cfg.order for r in range(1 + (cfg.persona.pursuit_rounds if b == "persona" else 0))]
        for i, (b, r) in enumerate(rounds):
            name = b if r == 0 else f"{b}_pursuit{r}"
            t0 = time.time()
            note(f"{name}: sampling trajectories")
            queries = training_queries(b, cfg.trajectories + cfg.heldout, cfg.other_share, shots, cfg.seed + i,
                                       tuple(cfg.persona.train_turns), getattr(cfg.chat_share, b, 0.0))
            with autocast(model.device, cfg.decode_precision, model):
                trajs = sample(model, tok, runtime, prompts[b], queries, cfg.temperature, cfg.max_new_tokens,
                               cfg.seed + i, session=f"bake-{name}")
            if len(trajs) <= cfg.heldout:
                raise ConfigError(f"baking: the prompted model wrote nothing to learn for {name} ({len(trajs)} "
                                  "trajectories); raise baking.max_new_tokens or check the prompt")
            sampled_s = time.time() - t0
            done[0] += 1
            model, curve, targets = bake(model, trajs[cfg.heldout:], trajs[:cfg.heldout], cfg, pad, kind,
                                         progress=lambda f, m, _n=name: note(f"{_n}: {m}"),
                                         replay=rehearsal(bank, cfg, i) + anchor, steps=bake_steps(b, cfg))
            # no later bake replays more than replay x trajectories of one bake (float32 targets: 8 MB each)
            bank[name] = list(zip(trajs[cfg.heldout:], targets))[:math.ceil(cfg.replay * cfg.trajectories)]
            done[0] += 1
            trained_s = time.time() - t0 - sampled_s
            note(f"{name}: probes")
            probes[b][name if r else "baked"] = measure(b, model, tok, runtime, "", cfg, shots)
            forgetting[name] = {e: measure(e, model, tok, runtime, "", cfg, shots, cfg.forgetting_examples,
                                           primary_only=True)[PRIMARY[e]] for e in cfg.order[:cfg.order.index(b)]}
            forgetting[name][b] = probes[b][name if r else "baked"][PRIMARY[b]]
            history[name] = {**curve, "trajectories": len(trajs) - cfg.heldout, "heldout_trajectories": cfg.heldout,
                             "sampling_s": sampled_s, "train_s": trained_s,
                             "probe_s": time.time() - t0 - sampled_s - trained_s, "wall_s": time.time() - t0,
                             "examples": [t.text for t in trajs[cfg.heldout:cfg.heldout + 3]],
                             "tool_calls": sum("</" in t.text for t in trajs) / len(trajs)}
            ctx.log.info("baking %s: %s %.3f -> %.3f (held-out KL %s); %s %s", name, cfg.objective,
                         curve["steps"][0]["loss"], curve["steps"][-1]["loss"],
                         [round(h["kl"], 3) for h in curve["heldout"]],
                         PRIMARY[b], {c: round(v[PRIMARY[b]], 3) for c, v in probes[b].items()})
        # the stage's output as the agent gets it: every bake probed after the last one (`baked` is right after its
        # own bake, before later bakes could overwrite it; the final agent table compares against this)
        note("probes of the output")
        last_bake, last_round = rounds[-1]
        for b in cfg.order:
            probes[b]["output"] = probes[b][f"{b}_pursuit{last_round}" if last_round else "baked"] if b == last_bake \
                else measure(b, model, tok, runtime, "", cfg, shots)
        info = {
            "student": kind, "order": cfg.order, "departures": cfg.departures(REFERENCE), "probes": probes,
            "anchor_trajectories": len(anchor),
            "recovery": {b: recovery(p["base"], p["prompted"], p["baked"]) for b, p in probes.items()},
            "forgetting": forgetting, "primary": {b: PRIMARY[b] for b in cfg.order}, "input_s": input_s,
            "agent": baked_capabilities({b: p["output"] for b, p in probes.items()}),
            "tables": probe_tables(probes, forgetting),
            "loss": {n: {"objective": cfg.objective, "first": h["steps"][0]["loss"], "last": h["steps"][-1]["loss"],
                         "heldout_kl": [x["kl"] for x in h["heldout"]]} for n, h in history.items()},
        }
        folder = ctx.work_dir / f"baking-{uuid.uuid4().hex}"
        if fmt:
            bitnet_format.save_bitnet(model, tok, folder, **fmt)
        else:
            save_model(model, tok, folder)
        baked_tools = [t for b in cfg.order for t in TOOLS[b]]
        (folder / RUNTIME_FILE).write_text(RuntimeSpec(tools=baked_tools, instructions=False).model_dump_json(indent=1))
        for b, text in prompts.items():
            (folder / f"prompt_{b}.txt").write_text(text)
        # the agent's runtime travels down the chain: experts and compression rewrite the folder
        add_sidecars(folder, [RUNTIME_FILE, *(f"prompt_{b}.txt" for b in prompts)])
        (folder / HISTORY_FILE).write_text(json.dumps({"history": history, **info}, indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    yield Built(variant="", folder=folder, parent=parent, info=info, model=model, tokenizer=tok)


def baked_capabilities(measured: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"<bake> <metric>": value} of each bake's probe, the undefined ones (no call made: NaN) left out."""
    return {f"{b} {m}": v for b, got in measured.items() for m, v in got.items() if v is not None and math.isfinite(v)}


def agent_probe(model, tok, folder, settings, scratch) -> dict[str, float]:
    """The bakes measured on a later checkpoint (the final agent): its own runtime (the baked tools, a fresh memory
    session, and its experts: each probe answered by the expert its dispatcher picks, as chat and serve answer), no
    prompt, the probes of the stage's `baked` condition with the run's baking settings."""
    cfg = settings.baking
    runtime = Runtime.open(folder, model, tok, scratch_agent(scratch, settings),
                           session=f"agent-probe-{uuid.uuid4().hex[:8]}")
    return baked_capabilities({b: measure(b, model, tok, runtime, "", cfg, settings.eval.shots) for b in cfg.order})


def traffic(model, tok, folder, settings, scratch, n: int) -> list[list[int]]:
    """What the baked agent reads and writes (compression calibrates on it): its own answers, runtime in the loop
    and no prompt, to `n` train-split queries per bake drawn as its training queries are (other seeds), as the
    query's and the answer's token ids (the executor's results included, as the model read them)."""
    cfg = settings.baking
    runtime = Runtime.open(folder, model, tok, scratch_agent(scratch, settings),
                           session=f"traffic-{uuid.uuid4().hex[:8]}")
    out = []
    for i, b in enumerate(cfg.order):
        seed = cfg.seed + TRAFFIC_SEED + i
        queries = training_queries(b, n, cfg.other_share, settings.eval.shots, seed, tuple(cfg.persona.train_turns),
                                   getattr(cfg.chat_share, b, 0.0))
        with autocast(model.device, cfg.decode_precision, model):
            trajs = sample(model, tok, runtime, "", queries, cfg.temperature, cfg.max_new_tokens, seed,
                           session=f"traffic-{b}")
        out += [t.student_ids()[0] for t in trajs]
    return out


SPEC = StageSpec(
    name="baking",
    version=VERSION,
    takes="one",
    build=build,
    settings=BakingSettings,
    agent_probe=agent_probe,
    traffic=traffic,
    description="Prompt Baking of tool use, memory, automatic retrieval and a self-guided persona (KL to the "
                "prompted model, LoRA or ternary latents under STE).",
)
