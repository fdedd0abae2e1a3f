"""Training one bake: the teacher's distributions once, then the student on the KL (`loss.baking_kl`).

The teacher is the model before this bake with the prompt on (the reference's `disable_adapter()` on the
prompted ids). It does not change during a bake, so its log-probabilities at the generated positions are
computed once, before the student moves; that also serves a ternary student, whose latent weights have no
adapter to switch off. Students:
- `lora`: peft LoRA on the attention projections (W' = W + (alpha/r)·B·A), merged after training;
- `latent`: a BitNet model's BitLinear latent weights trained directly under the straight-through
  estimator (the forward pass uses the ternary weights), written as BitNet again.
The half-baking curve: the training KL per step, and the KL on held-out trajectories every few steps.
Training steps run under bfloat16 autocast by default (`train_precision`); the teacher and the curve are float32.
`objective=sft` is the control: cross-entropy on the sampled tokens themselves (a plain fine-tune on the
same trajectories, what the seed's origin did), same positions, steps and normalisation; its held-out
line is still the KL to the prompted teacher, so the two objectives are compared on the same measure.
"""
from __future__ import annotations

import copy
import random
import time
from typing import Callable

import torch

from ..agent.generate import SHARED_MIN
from ..training.lora import lora_config
from ..training.attention import attention_kernel
from ..training.precision import autocast, held_weights
from .loss import baking_kl, gen_positions
from .trajectories import Trajectory, aligned


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft keeps its adapters inside


def _forward(model, rows: list[tuple[list[int], list[int]]], pad_id: int, with_targets: bool = False, head=None):
    """Logits at the positions that predict a generated token, in row order ([N, V]) (and those tokens).
    Only those positions go through the output head: on a 49k vocabulary it is a fifth of a 135M model's
    compute, and the logits of prompt and query positions (and their gradients) are never needed.
    `head`: (a batch-1 cache of ids every row follows, their count) from `head_cache`; the rows then hold
    only what follows it (rows are right-padded, so the default positions after the cache are right)."""
    ids = _pad([r[0] for r in rows], pad_id).to(model.device)
    mask = _pad([r[1] for r in rows], 0).to(model.device)
    attn = _pad([[1] * len(r[0]) for r in rows], 0).to(model.device)
    past = None
    if head is not None:
        past = copy.deepcopy(head[0])  # the decoder appends to the cache it is given
        past.batch_repeat_interleave(len(rows))
        attn = torch.cat([torch.ones((len(rows), head[1]), dtype=attn.dtype, device=attn.device), attn], dim=1)
    inner = _inner(model)
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=attn, past_key_values=past,
                                 use_cache=head is not None).last_hidden_state[:, :-1]
    at = gen_positions(mask)
    logits = inner.get_output_embeddings()(hidden[at])
    return (logits, ids[:, 1:][at]) if with_targets else logits


@torch.no_grad()
def head_cache(model, ids: list[int]):
    """The decoder's cache after `ids` (batch 1)."""
    return _inner(model).get_decoder()(input_ids=torch.tensor([ids], device=model.device),
                                       use_cache=True).past_key_values


@torch.no_grad()
def teacher_logprobs(model, trajs: list[Trajectory], pad_id: int, batch_size: int = 8,
                     read_prompt_once: bool = True, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per trajectory, the prompted model's log-probabilities log softmax(z / T) at its generated positions
    (float32: with an empty prompt and T = 1 the KL is exactly 0; 128 trajectories of 40 tokens over a 49k
    vocabulary hold 1 GB).
    A bake's trajectories share their prompt: it is read once and its cache serves every batch (the prompt
    with two demonstrations is most of each prompted row)."""
    model.eval()
    prompt = trajs[0].prompt_ids if trajs else []
    head = None
    if read_prompt_once and len(prompt) >= SHARED_MIN and all(t.prompt_ids == prompt for t in trajs):
        head = (head_cache(model, prompt), len(prompt))
    out = []
    for i in range(0, len(trajs), batch_size):
        chunk = trajs[i:i + batch_size]
        rows = [t.student_ids() for t in chunk] if head else [t.teacher_ids() for t in chunk]
        logp = torch.log_softmax(_forward(model, rows, pad_id, head=head).float() / temperature, dim=-1)
        sizes = [sum(t.teacher_ids()[1][1:]) for t in chunk]
        out += [x.cpu() for x in torch.split(logp, sizes)]
    return out


def kl_of(model, trajs: list[Trajectory], targets: list[torch.Tensor], pad_id: int, batch_size: int = 8) -> float:
    """Mean per-trajectory KL(teacher ‖ model) (the loss without gradient), read in runs of similar length
    (`length_groups`, as training does): the sum is the same, without the padding's compute."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(trajs), batch_size):
            rows = [t.student_ids() for t in trajs[i:i + batch_size]]
            for g in length_groups([len(r[0]) for r in rows]):
                logits = _forward(model, [rows[j] for j in g], pad_id)
                target = torch.cat([targets[i + j] for j in g]).to(logits.device)
                total += float(baking_kl(logits, target, 1))
    return total / max(len(trajs), 1)


def make_student(model, kind: str, cfg, seed: int):
    """(trainable model, its parameters) for the `lora` or `latent` student."""
    if kind == "lora":
        from peft import get_peft_model

        torch.manual_seed(seed)  # LoRA's A matrices are random
        peft_model = get_peft_model(model, lora_config(cfg.lora_r, cfg.lora_alpha, 0.0, cfg.target_modules))
        return peft_model, [p for p in peft_model.parameters() if p.requires_grad]
    from ..bitnet.convert import bit_layers

    for p in model.parameters():
        p.requires_grad_(False)
    params = [layer.weight for layer in bit_layers(model).values()]
    for p in params:
        p.requires_grad_(True)
    return model, params


def finish_student(student, kind: str):
    """The plain model after training: the adapter folded into the weights (lora), or the model itself."""
    if kind == "lora":
        return student.merge_and_unload()
    for p in student.parameters():
        p.requires_grad_(False)
    return student


def length_groups(lengths: list[int], slack: float = 1.25) -> list[list[int]]:
    """Indices split into runs of similar length (shortest first): a run grows while its padded size
    (count x longest) stays within `slack` x its real tokens. A bake's rows range from a short answer to
    several retrieved passages; padded together, about 40% of a batch's compute went to padding (retrieval
    steps ran 1.72x faster in runs, `bench/baking_speed.py`)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None and (len(g) + 1) * lengths[i] <= slack * (sum(lengths[j] for j in g) + lengths[i]):
            g.append(i)
        else:
            groups.append([i])
    return groups


def accumulate(student, batch: list[Trajectory], targets: list[torch.Tensor], pad_id: int, objective: str,
               precision: str, slack: float = 1.25, kernel: str = "eager") -> float:
    """One batch's loss, its gradient accumulated run by run (`length_groups`): each run's loss is its share
    of the batch loss (divided by the whole batch size), so the gradient is the padded batch's."""
    device = next(student.parameters()).device
    rows = [t.student_ids() for t in batch]
    total = 0.0
    # the frozen weights' bfloat16 copies, made once for all runs
    with held_weights(student, precision), attention_kernel(student, kernel):
        for g in length_groups([len(r[0]) for r in rows], slack):
            with autocast(device, precision):
                logits, tokens = _forward(student, [rows[i] for i in g], pad_id, with_targets=True)
            if objective == "sft":
                loss = torch.nn.functional.cross_entropy(logits.float(), tokens, reduction="sum") / len(batch)
            else:
                loss = baking_kl(logits, torch.cat([targets[i] for i in g]).to(logits.device), len(batch))
            loss.backward()
            total += loss.item()
    return total


def bake(model, trajs: list[Trajectory], heldout: list[Trajectory], cfg, pad_id: int, kind: str = "lora",
         progress: Callable[[float, str], None] | None = None,
         replay: list[tuple[Trajectory, torch.Tensor]] = (), steps: int | None = None,
         ) -> tuple[object, dict, list[torch.Tensor]]:
    """Train the student to match the prompted teacher; returns (baked plain model, history, the teacher's
    log-probabilities on `trajs`). `replay`: earlier bakes' trajectories with their own teachers' targets,
    drawn into the batches with this bake's (rehearsal, so a later bake does not overwrite an earlier one).
    `steps`: optimiser steps, `cfg.steps` when not given."""
    bad = [t.text for t in trajs + heldout if not aligned(t)]
    if bad:
        raise ValueError(f"trajectory ids differ under the prompted and unprompted masks: {bad[:2]}")
    own = teacher_logprobs(model, trajs, pad_id, temperature=cfg.teacher_temperature)
    held_targets = teacher_logprobs(model, heldout, pad_id, temperature=cfg.teacher_temperature)
    pool, targets = list(trajs) + [t for t, _ in replay], own + [x for _, x in replay]
    student, params = make_student(model, kind, cfg, cfg.seed)
    lr = cfg.lr if kind == "lora" else cfg.ste_lr
    opt = torch.optim.Adam(params, lr=lr)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    history: dict = {"student": kind, "objective": cfg.objective, "lr": lr, "replayed": len(replay), "steps": [],
                     "heldout": []}

    def held(step: int) -> None:
        if heldout:
            t0 = time.time()
            student.eval()
            history["heldout"].append({"step": step, "kl": kl_of(student, heldout, held_targets, pad_id)})
            history["heldout_s"] = history.get("heldout_s", 0.0) + time.time() - t0  # inside the bake's train_s

    held(0)
    steps = steps or cfg.steps
    for step in range(1, steps + 1):
        if len(order) < cfg.batch_size:
            more = list(range(len(pool)))
            rng.shuffle(more)
            order += more
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        student.train()
        opt.zero_grad(set_to_none=True)
        loss = accumulate(student, [pool[i] for i in idx], [targets[i] for i in idx], pad_id, cfg.objective,
                          cfg.train_precision, kernel=cfg.train_attention)
        opt.step()
        history["steps"].append({"step": step, "loss": loss})
        if step % cfg.curve_every == 0 or step == steps:
            held(step)
        if progress:
            progress(step / steps, f"step {step}/{steps} {cfg.objective} {loss:.3f}")
    model = finish_student(student, kind)
    model.eval()
    return model, history, own
