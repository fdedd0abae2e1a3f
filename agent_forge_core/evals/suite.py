"""The eval suite run on every stage's output.

Metrics (all on the held-out split unless asked otherwise):
- `perplexity`: exp(mean token NLL) over the first `ppl_tokens` tokens of held-out in-domain text (pydoc
  topics), scored in non-overlapping windows of `ppl_window` tokens (each window starts without context,
  so this is an upper bound on the sliding-window perplexity; the same for every model, which is what
  gates compare). `perplexity_ood`: the same on out-of-domain English (`text.ood_text`).
- `<task>`: accuracy of greedy decoding with `shots` in-context examples, checked by the task's checker,
  on the split's own phrasing families (`tasks.py`).
- `<task>_se`: its standard error, Agresti-Coull: with x correct of n, p~ = (x + 2) / (n + 4) and
  se = sqrt(p~ (1 - p~) / (n + 4)) (never 0 at 0/n or n/n, unlike the plain binomial sqrt(p(1-p)/n)).
  Two accuracies on n examples differ beyond noise when |a - b| > 2 sqrt(se_a^2 + se_b^2) (~95%).
- `<task>_nll`: mean per-token NLL of the reference target given the prompt (teacher forcing); a
  continuous signal that moves before accuracy does.
"""
from __future__ import annotations

import math
import weakref
from contextlib import nullcontext
from typing import Callable, ContextManager, Protocol

import torch

from .settings import EvalSettings
from .tasks import SPLITS, get_task, with_shots
from .text import natural_text, ood_text

# metric -> (text of a split, the splits it has); the out-of-domain text has no train part
PERPLEXITY_TEXTS = {"perplexity": (natural_text, SPLITS), "perplexity_ood": (ood_text, ("validation", "test"))}


def is_lower_better(metric: str) -> bool:
    return metric in PERPLEXITY_TEXTS or metric.endswith("_nll")


def standard_error(correct: int, n: int) -> float:
    """Agresti-Coull standard error of an accuracy of `correct` out of `n`."""
    p = (correct + 2) / (n + 4)
    return math.sqrt(p * (1 - p) / (n + 4))


def difference_noise(se_a: float, se_b: float) -> float:
    """Two standard errors of a difference of two accuracies (~95%): below it, a difference is noise."""
    return 2 * math.sqrt(se_a**2 + se_b**2)


@torch.no_grad()
def perplexity(model, tokenizer, text: str, max_tokens: int, window: int) -> float:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:max_tokens]
    n_win = max(1, ids.numel() // window)
    ids = ids[: n_win * window].view(n_win, window).to(model.device)
    total, count = 0.0, 0
    for i in range(0, n_win, 8):
        batch = ids[i : i + 8]
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


_NEWLINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def newline_ids(tokenizer) -> torch.Tensor:
    """Ids of the tokens whose text holds a newline. Decoding the whole vocabulary costs ~0.2 s for SmolLM2's
    49K tokens, once per generation call (the loop makes ~60): kept per tokenizer and its size (tokens added
    later, as Quiet-STaR's, make a new entry)."""
    size = len(tokenizer)
    hit = _NEWLINES.get(tokenizer)
    if hit is None or hit[0] != size:
        vocab = tokenizer.get_vocab()
        ids = [i for i in vocab.values() if "\n" in tokenizer.decode([i])]
        hit = (size, torch.tensor(sorted(ids), dtype=torch.long))
        _NEWLINES[tokenizer] = hit
    return hit[1]


def suppressed_ids(model) -> list[int]:
    """Token ids the model's generation config forbids (`suppress_tokens`), as `generate` honours them."""
    return list(getattr(getattr(model, "generation_config", None), "suppress_tokens", None) or [])


def suppress(logits: torch.Tensor, ids) -> torch.Tensor:
    """`logits` with the given token ids made impossible (a copy; unchanged when `ids` is empty)."""
    ids = list(ids)
    if not ids:
        return logits
    return logits.index_fill(-1, torch.tensor(ids, device=logits.device), float("-inf"))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _prefill(model, tokenizer, enc: list[list[int]]):
    """One forward of the left-padded prompts `enc` (every prompt ends at the same column), keeping the KV cache
    and the last position's logits only (the prompts' own would cost a vocabulary-wide projection each): returns
    (the model's output, key mask, position ids)."""
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for j, e in enumerate(enc):
        ids[j, width - len(e) :] = torch.tensor(e)
        mask[j, width - len(e) :] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    res = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    return res, mask, position_ids


def _decode(model, tokenizer, res, mask: torch.Tensor, position_ids: torch.Tensor, max_new_tokens: int,
            temperature: float, generator: torch.Generator | None) -> list[str]:
    """Tokens after a prefill (`_prefill`'s output) until each row's first newline or end of sequence."""
    newline = newline_ids(tokenizer).to(model.device)
    banned = suppressed_ids(model)
    pad_id = _pad_id(tokenizer)
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_id
    done = torch.zeros(mask.size(0), dtype=torch.bool, device=model.device)
    generated = []
    cur_pos = position_ids[:, -1:]
    for step in range(max_new_tokens):
        if step:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            cur_pos = cur_pos + 1
            res = model(input_ids=generated[-1][:, None], attention_mask=mask, position_ids=cur_pos,
                        past_key_values=res.past_key_values, use_cache=True, logits_to_keep=1)
        logits = suppress(res.logits[:, -1], banned)
        if temperature > 0:
            probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        generated.append(nxt)
        done |= torch.isin(nxt, newline) | (nxt == eos_id)
        if bool(done.all()):
            break
    out = []
    for row in torch.stack(generated, dim=1).cpu():
        toks = row.tolist()
        if eos_id in toks:
            toks = toks[: toks.index(eos_id)]
        out.append(tokenizer.decode(toks, skip_special_tokens=True))
    return out


@torch.no_grad()
def greedy_complete(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                    temperature: float = 0.0, generator: torch.Generator | None = None) -> list[str]:
    """Greedy completions, stopped per sequence at the first newline (answers are one line). Tokens the
    model's generation config suppresses (e.g. Quiet-STaR's thought tokens) are never emitted. With
    `temperature` > 0, each token is sampled from softmax(logits / temperature) instead (drawn on the CPU from
    `generator`, so a seeded run samples the same text)."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[i : i + batch_size]]
        res, mask, pos = _prefill(model, tokenizer, enc)
        out += _decode(model, tokenizer, res, mask, pos, max_new_tokens, temperature, generator)
    return out


def _pair_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(the prompt's token ids, those of prompt + target): the target's tokens are the second's after the first's
    length (tokenized together, as the model reads them)."""
    return (tokenizer(prompt, add_special_tokens=False).input_ids,
            tokenizer(prompt + target, add_special_tokens=False).input_ids)


def _cached_target_nll(model, res, mask: torch.Tensor, position_ids: torch.Tensor,
                       targets: list[list[int]]) -> tuple[float, int]:
    """(summed NLL, token count) of each row's `targets` tokens after its prompt, whose KV a prefill left in
    `res`: the first target token is scored by the prefill's last logits, the rest by one forward of the targets
    (right-padded) on the cache, which is then cropped back to the prompts, as generation expects it."""
    longest = max(map(len, targets))
    labels = torch.full((len(targets), longest), -100, dtype=torch.long)
    for j, t in enumerate(targets):
        labels[j, : len(t)] = torch.tensor(t, dtype=torch.long)
    labels = labels.to(mask.device)
    logits = res.logits[:, -1:]
    if longest > 1:
        inputs = labels[:, :-1].clamp(min=0)  # a pad is any id: it only feeds positions that predict a pad
        tmask = (labels[:, :-1] != -100).long()
        pos = position_ids[:, -1:] + torch.arange(1, longest, device=mask.device)[None, :]
        more = model(input_ids=inputs, attention_mask=torch.cat([mask, tmask], dim=1), position_ids=pos,
                     past_key_values=res.past_key_values, use_cache=True).logits
        res.past_key_values.crop(-(longest - 1))  # negative: tokens off the end (old and new transformers agree)
        logits = torch.cat([logits, more], dim=1)
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    return nll.item(), int((labels != -100).sum())


@torch.no_grad()
def answer_and_score(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int,
                     batch_size: int) -> tuple[list[str], float, int]:
    """`greedy_complete` on the prompts and `target_nll_sum` of the targets, sharing each batch's prompt forward
    (the targets are scored on the prefill's KV cache before decoding starts from it): (completions, summed NLL,
    token count). A pair whose prompt's tokens are not a prefix of the tokens of prompt + target (a merge across
    the boundary) is scored by `target_nll_sum`, as alone."""
    completions, total, count = [], 0.0, 0
    for i in range(0, len(pairs), batch_size):
        enc, targets, apart = [], [], []
        for prompt, target in pairs[i : i + batch_size]:
            p, t = _pair_ids(tokenizer, prompt, target)
            enc.append(p)
            shared = t[: len(p)] == p and len(t) > len(p)
            targets.append(t[len(p) :] if shared else [])
            if not shared:
                apart.append((prompt, target))
        res, mask, pos = _prefill(model, tokenizer, enc)
        if any(targets):
            nll, n = _cached_target_nll(model, res, mask, pos, targets)
            total, count = total + nll, count + n
        if apart:
            nll, n = target_nll_sum(model, tokenizer, apart, batch_size)
            total, count = total + nll, count + n
        completions += _decode(model, tokenizer, res, mask, pos, max_new_tokens, 0.0, None)
    return completions, total, count


@torch.no_grad()
def target_nll(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int) -> float:
    """Mean per-token NLL of each target given its prompt."""
    total, count = target_nll_sum(model, tokenizer, pairs, batch_size)
    return total / max(count, 1)


@torch.no_grad()
def target_nll_sum(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int) -> tuple[float, int]:
    """(summed NLL of the targets' tokens given their prompts, their token count)."""
    total, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        seqs, labels, starts = [], [], []
        for prompt, target in pairs[i : i + batch_size]:
            p, t = _pair_ids(tokenizer, prompt, target)
            seqs.append(t)
            labels.append([-100] * len(p) + t[len(p) :])
            starts.append(len(p))
        width = max(map(len, seqs))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=model.device)
        lab = torch.tensor([l + [-100] * (width - len(l)) for l in labels], device=model.device)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long().to(model.device)
        # logits from the first position that predicts a target token on (`lo`): the prompts' own positions would
        # cost a vocabulary-wide projection and log-softmax each (~2/3 of the work on the eval's prompts)
        lo = max(min(starts) - 1, 0)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=width - lo).logits
        if logits.size(1) == width:  # a wrapper that ignores logits_to_keep
            logits = logits[:, lo:]
        logits = logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), lab[:, lo + 1 :].reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += nll.item()
        count += int((lab[:, 1:] != -100).sum())
    return total, count


class Router(Protocol):
    """Which weights answer each prompt (a checkpoint with experts: `experts.two_pass.TwoPass`)."""

    def choose(self, queries: list[str], task: str = "") -> list[str]: ...

    def choose_text(self, text: str) -> str: ...

    def groups(self, choices: list[str]) -> dict[str, list[int]]: ...

    def applied(self, choice: str) -> ContextManager: ...


def routed_blocks(router: Router | None, prompts: list[str], task: str = "", routed: dict | None = None):
    """[(the block the prompts at `indices` are answered in, indices)]: one per choice of the router (a CEM mix
    needs the `task`), one plain block without a router; `routed` receives {task: {choice: count}}."""
    if router is None:
        return [(nullcontext(), list(range(len(prompts))))]
    groups = router.groups(router.choose(prompts, task))
    if routed is not None:
        routed[task] = {c: len(ix) for c, ix in groups.items()}
    return [(router.applied(c), ix) for c, ix in groups.items()]


def evaluate(
    model,
    tokenizer,
    cfg: EvalSettings,
    split: str = "test",
    progress: Callable[[float, str], None] | None = None,
    complete: Callable | None = None,
    router: Router | None = None,
    routed: dict | None = None,
) -> dict[str, float]:
    """The metrics of the module docstring. `complete(model, tokenizer, prompts) -> completions` replaces
    plain greedy decoding for the accuracies: an agent's runtime answers with its tools in the loop
    (`agent.runtime.Runtime.completer`), markup stripped before the checker. `router`: every measurement of a
    prompt (its answer and its target's NLL) and of a perplexity text is made with the weights the router picks
    for it, so a checkpoint with experts is measured as it answers; `routed` receives where each went."""
    model.eval()
    metrics: dict[str, float] = {}
    steps = len(PERPLEXITY_TEXTS) + len(cfg.tasks)
    for k, (name, (text, splits)) in enumerate(PERPLEXITY_TEXTS.items()):
        if split not in splits:
            continue
        if progress:
            progress(k / steps, f"eval: {name}")
        body = text(split)
        choice = router.choose_text(body) if router else None
        if routed is not None and router:
            routed[name] = {choice: 1}
        with router.applied(choice) if router else nullcontext():
            metrics[name] = perplexity(model, tokenizer, body, cfg.ppl_tokens, cfg.ppl_window)
    for k, name in enumerate(cfg.tasks, len(PERPLEXITY_TEXTS)):
        if progress:
            progress(k / steps, f"eval: {name}")
        task = get_task(name, cfg.data)
        items = with_shots(task, split, cfg.n_examples, cfg.shots, cfg.seed)
        prompts = [p for p, _ in items]
        correct, nll, tokens = 0, 0.0, 0
        for block, ix in routed_blocks(router, prompts, name, routed):
            with block:
                pairs = [(prompts[i], items[i][1].target) for i in ix]
                if complete:
                    completions = complete(model, tokenizer, [p for p, _ in pairs])
                    total, count = target_nll_sum(model, tokenizer, pairs, cfg.batch_size)
                else:
                    completions, total, count = answer_and_score(model, tokenizer, pairs, cfg.max_new_tokens,
                                                                 cfg.batch_size)
            correct += sum(task.check(c, items[i][1]) for c, i in zip(completions, ix))
            nll, tokens = nll + total, tokens + count
        metrics[name] = correct / len(items)
        metrics[f"{name}_se"] = standard_error(correct, len(items))
        metrics[f"{name}_nll"] = nll / max(tokens, 1)
    if progress:
        progress(1.0, "eval: done")
    return metrics
