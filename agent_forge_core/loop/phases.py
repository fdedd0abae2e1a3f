"""One phase of the loop: its optimizer steps with the mechanisms the phase switches on, in this order per step

    forward (+ teacher, + heads) → backward → Grokfast filter → gradient noise → clip (loop-wide max norm)
    → AdamW step → Polyak update → stability signal → noise controller / curriculum update

Grokfast sits before the clip, as the reference applies it between backward and the optimizer step; the clip
is measured so the history shows what it took back (grad_norm_raw → grad_norm_filtered → grad_norm after the
noise; grad_norm_clipped is what the step used). The AdamW moments, the Grokfast EMA and the noise generator
live for the whole loop (`Trainer`), the heads and the Polyak average only for their phase.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..bitnet.convert import bit_layers
from ..bitnet.ternary import weight_codes
from ..training.loop import lr_at
from .calibration import calibrate
from .curriculum import Curriculum
from .data import given_batches, graded_batch, mixed_batches, mixed_sequences, phase_seed
from .dream import dream, reflect, yield_of
from .graded import LEVELS
from .grokfast import GrokfastEMA
from .noise import NoiseController, add_gradient_noise, anneal, flip_rate, lyapunov_proxy
from .objective import batch_loss
from .polyak import Polyak
from .selfmodel import SelfModelHeads, auroc
from .settings import LoopSettings, PhaseSettings
from .state import LoopState

MAX_GRAD_NORM = 1.0


@dataclass
class Trainer:
    model: torch.nn.Module
    tok: object
    cfg: LoopSettings
    ev: object  # the run's eval settings (shots, batch size, bring-your-own data)
    lr: float  # the loop's peak lr for this input (float or ternary latents)
    ternary: bool
    teacher: torch.nn.Module | None = None
    progress: Callable[[float, str], None] = lambda f, m: None
    grokfast: GrokfastEMA = field(init=False)
    noise_gen: torch.Generator = field(init=False)
    opt: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.opt = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=0.0)
        self.grokfast = GrokfastEMA(self.cfg.grokfast.alpha, self.cfg.grokfast.lamb)
        self.noise_gen = torch.Generator().manual_seed(self.cfg.seed + 7)

    def codes(self) -> dict[str, torch.Tensor]:
        return {n: weight_codes(m.weight.detach(), per_channel=m.per_channel)[0]
                for n, m in bit_layers(self.model).items()}

    def stability(self, batch, codes_before) -> float:
        """Ternary: code flips per weight in this step. Float: the depth-Lyapunov proxy on the batch's first row."""
        if self.ternary:
            return flip_rate(codes_before, self.codes())
        self.model.eval()
        value = lyapunov_proxy(self.model, batch["input_ids"][:1, :64], seed=self.cfg.seed)
        self.model.train()
        return value


def run_phase(k: int, phase: PhaseSettings, tr: Trainer, state: LoopState) -> dict:
    """Runs phase `k`; returns its history row (per-step records under `steps`) and updates `state`."""
    if phase.kind == "calibrate":
        return _calibrate(k, phase, tr, state)
    if phase.kind in ("dream", "reflect"):
        return _self_training(k, phase, tr, state)
    cfg = tr.cfg
    seed = phase_seed(cfg.seed, k)
    stream = None if phase.curriculum else mixed_batches(cfg.data, tr.tok, phase.steps, cfg.batch_size, cfg.max_len,
                                                         tr.ev.shots, seed, tr.ev.data)
    return train_steps(k, phase, tr, state, lambda s, cur: next(stream) if cur is None else graded_batch(
        cfg.curriculum.tasks, cur.level, tr.tok, cfg.batch_size, cfg.max_len, tr.ev.shots, seed * 100 + s))


def train_steps(k: int, phase: PhaseSettings, tr: Trainer, state: LoopState, next_batch) -> dict:
    cfg, model = tr.cfg, tr.model
    cur = Curriculum(**{**state.curriculum, "band": tuple(cfg.curriculum.band), "target": cfg.curriculum.target,
                        "kappa": cfg.curriculum.kappa, "every": cfg.curriculum.every}) if phase.curriculum else None
    if cur is not None:
        cur.history = []  # this phase's controller record
    heads = heads_opt = None
    if phase.self_model:
        sm = cfg.self_model
        torch.manual_seed(cfg.seed + 11 * k)
        heads = SelfModelHeads(model.config.hidden_size, model.config.num_hidden_layers, sm.weight,
                               sm.confidence_weight, sm.layer).to(next(model.parameters()).device)
        heads_opt = torch.optim.AdamW(heads.parameters(), lr=sm.lr, weight_decay=0.0)
    polyak = Polyak(tr.named) if phase.polyak else None
    band = cfg.noise.flip_band if tr.ternary else cfg.noise.lyapunov_band
    controller = NoiseController(eta=state.noise_eta or cfg.noise.eta, band=tuple(band), factor=cfg.noise.factor)
    eta0 = state.noise_eta or cfg.noise.eta
    teacher = tr.teacher if phase.distill else None
    peak = tr.lr * phase.lr_scale
    records, conf = [], []
    model.train()
    for s in range(phase.steps):
        for g in tr.opt.param_groups:
            g["lr"] = lr_at(s, phase.steps, min(cfg.warmup, phase.steps - 1), peak)
        batch = {k_: v.to(next(model.parameters()).device) for k_, v in next_batch(s, cur).items()}
        if heads is not None and s == 0:
            with torch.no_grad():
                hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states
            heads.fit_predictor(tuple(h[:, :-1] for h in hs), batch["labels"][:, 1:] != -100)  # L_self's positions
        loss, rec, (ok, n), pos = batch_loss(model, batch, teacher, cfg.distill, heads)
        loss.backward()
        rec = {"step": state.step, "phase_step": s, "lr": tr.opt.param_groups[0]["lr"], **rec}
        if phase.grokfast:
            rec["grad_norm_raw"], rec["grad_norm_filtered"] = tr.grokfast(tr.named)
        if phase.noise != "off":
            eta = controller.eta if phase.noise == "controlled" else anneal(eta0, s, phase.steps)
            sigma = add_gradient_noise(tr.params, eta * phase.noise_multiplier ** 2, state.step, cfg.noise.gamma,
                                       tr.noise_gen)
            rec.update(eta=eta, sigma=sigma)
        norm = float(torch.nn.utils.clip_grad_norm_(tr.params, MAX_GRAD_NORM))
        rec.update(grad_norm=norm, grad_norm_clipped=min(norm, MAX_GRAD_NORM))
        codes_before = tr.codes() if tr.ternary and phase.noise == "controlled" else None
        tr.opt.step()
        tr.opt.zero_grad(set_to_none=True)
        if heads is not None:
            heads_opt.step()
            heads_opt.zero_grad(set_to_none=True)
            if s >= phase.steps // 2:  # the head predicts before it trains on the batch: held-out predictions
                conf.append(pos)
        if polyak is not None:
            polyak.update(tr.named)
        if phase.noise == "controlled":
            rec["signal"] = tr.stability(batch, codes_before)
            controller.update(rec["signal"])
        if n:
            rec["train_accuracy"] = ok / n
        if cur is not None:
            rec["level"] = cur.level
            cur.observe(ok, n)
        records.append(rec)
        state.step += 1
        if not math.isfinite(rec["loss"]):
            break  # the gate rolls a diverged phase back; more steps only waste time
        tr.progress((s + 1) / phase.steps, f"phase {k + 1} {phase.name}: step {s + 1}/{phase.steps} "
                    f"loss {rec['loss']:.3f}")
    model.eval()
    row = {"steps": records, "signals": _signals(records)}
    if cur is not None:
        state.curriculum = {k_: v for k_, v in cur.state().items() if k_ != "history"}
        row["curriculum"] = {"share_in_band": cur.share_in_band(), "windows": cur.history, "level_end": cur.level}
    if phase.noise == "controlled":
        state.noise_eta = controller.eta
    if heads is not None:
        row["self_model"] = _head_summary(conf, records)
    row["polyak"] = polyak
    return row


def _signals(records: list[dict]) -> dict:
    def mean(key):
        vals = [r[key] for r in records if key in r and r[key] is not None and math.isfinite(r[key])]
        return sum(vals) / len(vals) if vals else None

    out = {k: mean(k) for k in ("loss", "ce", "kl", "grad_norm", "grad_norm_raw", "grad_norm_filtered",
                                "train_accuracy", "signal", "eta", "self_mse", "confidence_mse")}
    if out["grad_norm_raw"]:
        out["grokfast_amplification"] = out["grad_norm_filtered"] / out["grad_norm_raw"]
    if records:
        span = max(1, len(records) // 4)
        out["loss_first"] = sum(r["loss"] for r in records[:span]) / span
        out["loss_last"] = sum(r["loss"] for r in records[-span:]) / span
    return {k: v for k, v in out.items() if v is not None}


def _head_summary(conf: list, records: list[dict]) -> dict:
    if not conf:
        return {}
    scores = torch.cat([c[3][c[2]] for c in conf])
    correct = torch.cat([c[1][c[2]] for c in conf])
    # the head predicts the NLL: a low prediction should mean a right token
    return {"confidence_auroc": auroc(-scores, correct), "positions": int(correct.numel()),
            "self_mse_first": records[0].get("self_mse"), "self_mse_last": records[-1].get("self_mse")}


@torch.no_grad()
def _level_accuracy(tr: Trainer, task: str, level: int, n: int, seed: int) -> float:
    batch = graded_batch([task], level, tr.tok, n, tr.cfg.max_len, tr.ev.shots, seed)
    batch = {k: v.to(next(tr.model.parameters()).device) for k, v in batch.items()}
    _, _, (ok, rows), _ = batch_loss(tr.model, batch)
    return ok / max(1, rows)


def _calibrate(k: int, phase: PhaseSettings, tr: Trainer, state: LoopState) -> dict:
    """Teacher-forced exact match at every level of each graded task; the curriculum starts at the mean d*."""
    c = tr.cfg.curriculum
    tr.model.eval()
    seed = phase_seed(tr.cfg.seed, k)
    fits = {t: calibrate(lambda d, _t=t: _level_accuracy(tr, _t, d, c.calibration_examples, seed + d), list(LEVELS),
                         c.target, c.calibration_examples) for t in c.tasks}
    d_star = sum(f["d_star"] for f in fits.values()) / len(fits)
    state.curriculum = {"d": d_star}
    return {"steps": [], "calibration": fits, "signals": {"d_star": d_star}}


def _self_training(k: int, phase: PhaseSettings, tr: Trainer, state: LoopState) -> dict:
    """Dream (kind=dream) or rationalise (kind=reflect), then train on the kept samples with replay."""
    cfg, d, ev = tr.cfg, tr.cfg.dream, tr.ev
    seed = phase_seed(cfg.seed, k)
    tr.model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = dream(tr.model, tr.tok, d.tasks, d.prompts, ev.shots, seed, d.temperature, d.max_new_tokens, ev.batch_size,
                cfg.max_len, gen, ev.data)
    row: dict = {"dream": {"counts": out["counts"], "yield": yield_of(out["counts"])}}
    pairs = out["pairs"]
    if phase.kind == "reflect":
        ref = reflect(tr.model, tr.tok, out["failed"], d.temperature, d.max_new_tokens, ev.batch_size, cfg.max_len,
                      gen, ev.data)
        row["reflect"] = {"counts": ref["counts"], "rescued_share": yield_of(ref["counts"])}
        pairs = ref["pairs"]
    row["kept"] = len(pairs)
    if not pairs:
        row.update(steps=[], signals={"yield": 0.0}, note="nothing verified was generated: the phase trained on "
                   "nothing (a no-op)")
        return row
    n_replay = round(len(pairs) * d.replay_ratio)  # mixed_sequences rounds each focus's share up: cut to n
    replay = mixed_sequences(cfg.data, tr.tok, n_replay, cfg.max_len, ev.shots, seed, ev.data)[:n_replay]
    stream = given_batches(pairs + replay, tr.tok, cfg.batch_size, seed)
    trained = train_steps(k, phase, tr, state, lambda s, cur: next(stream))
    trained["signals"]["yield"] = row["dream"]["yield"] if phase.kind == "dream" else row["reflect"]["rescued_share"]
    return {**row, **trained}
