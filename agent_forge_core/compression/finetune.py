"""End-to-end fine-tuning of a quantized model's continuous parameters, its codes fixed: VPTQ's
(Liu et al. 2024) fine-tuning of codebooks and layer norms after quantization, as AQLM's and QuIP#'s
global fine-tuning.

After every tensor is encoded, the float values a codec declares trainable (`Codec.trainable`: VPTQ's
codebooks) and the kept 1-D tensors (RMSNorm weights) are tuned so the quantized model's next-token
distribution matches the uncompressed model's on calibration text (held-in, the train split):

    L = (1/T) Σ_t KL( p_float(·|x_<t) ‖ p_quant(·|x_<t) )

with Adam. Indices, scales of untuned codecs and every other tensor stay as encoded, so the artifact's size
does not change. Tuned codebooks are rounded to float16 for storage, and the loss reported after tuning is
measured with the rounded values (what the artifact holds).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..training.sft_data import text_sequences
from .codecs import Encoded, get_codec
from .settings import FinetuneSettings

LOSS_TOKENS = 2048  # calibration tokens the reported before/after loss is measured on


@dataclass
class Tuned:
    """What fine-tuning changed: encodings with tuned fields, kept tensors with tuned values, the losses."""

    encoded: dict[str, Encoded]
    kept: dict[str, torch.Tensor]
    loss_before: float
    loss_after: float
    steps: int
    seconds: float

    def summary(self) -> dict:
        return {"loss_before": self.loss_before, "loss_after": self.loss_after, "steps": self.steps,
                "seconds": self.seconds, "tensors": len(self.encoded), "kept": len(self.kept)}


class _Decoded(torch.nn.Module):
    """weight = codec.decode(encoding with its trainable fields replaced by parameters)."""

    def __init__(self, enc: Encoded, fields: list[str]):
        super().__init__()
        self.enc, self.codec = enc, get_codec(enc.codec)
        self.fields = torch.nn.ParameterDict({f: torch.nn.Parameter(enc.payload[f].float().clone()) for f in fields})

    def forward(self, _weight: torch.Tensor) -> torch.Tensor:
        payload = {**self.enc.payload, **dict(self.fields.items())}
        return self.codec.decode(Encoded(self.enc.codec, self.enc.shape, payload, self.enc.params, self.enc.widths))


def trainable_fields(enc: Encoded) -> list[str]:
    prefixes = get_codec(enc.codec).trainable
    return [f for f in enc.payload if f.startswith(prefixes)] if prefixes else []


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student)."""
    t = F.log_softmax(teacher_logits.float(), -1)
    s = F.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def finetune(teacher, student, tokenizer, encoded: dict[str, Encoded], decoded: dict[str, torch.Tensor],
             kept: dict[str, torch.Tensor], cfg: FinetuneSettings, seq_len: int, seed: int,
             device: str = "cpu") -> Tuned:
    """Tune `student` (holding the decoded weights) towards `teacher` (the uncompressed model).

    `encoded`: every coded tensor's encoding (only those whose codec has trainable fields are tuned);
    `decoded`: the state the artifact rebuilds (coded tensors decoded, kept ones as stored), loaded into the
    student; `kept`: the kept tensors as stored (1-D ones are tuned, and written back in their dtype)."""
    t0 = time.time()
    teacher.eval()
    for p in [*teacher.parameters(), *student.parameters()]:
        p.requires_grad_(False)
    student.load_state_dict({n: t.to(student.get_parameter(n).dtype) for n, t in decoded.items()}, strict=False)
    params, tuned_kept = [], {}
    for name, enc in encoded.items():
        fields = trainable_fields(enc)
        if fields:
            module = student.get_submodule(name.removesuffix(".weight"))
            parametrize.register_parametrization(module, "weight", _Decoded(enc, fields), unsafe=True)
            params += list(module.parametrizations.weight[0].fields.values())
    for name, t in kept.items():
        if t.dim() == 1 and t.is_floating_point():
            p = student.get_parameter(name)
            p.requires_grad_(True)
            tuned_kept[name] = p
            params.append(p)
    seqs = [torch.tensor(ids) for ids, _ in text_sequences(tokenizer, seq_len, max(1, cfg.tokens // seq_len), seed)]
    data = torch.stack(seqs).to(device)

    def loss_on(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(input_ids=batch).logits
        return _kl(target, student(input_ids=batch).logits)

    held = data[: max(1, LOSS_TOKENS // seq_len)]  # a fixed part of the calibration text: before/after comparable

    @torch.no_grad()
    def calibration_loss() -> float:
        with parametrize.cached():
            return sum(float(loss_on(held[i: i + cfg.batch])) * len(held[i: i + cfg.batch])
                       for i in range(0, len(held), cfg.batch)) / len(held)

    student.eval()  # no dropout: the loss is deterministic given the batch
    before = calibration_loss()
    if params:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        g = torch.Generator().manual_seed(seed)
        for step in range(cfg.steps):
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine to 0
            for group in opt.param_groups:
                group["lr"] = lr
            batch = data[torch.randperm(len(data), generator=g)[: cfg.batch]]
            opt.zero_grad(set_to_none=True)
            loss_on(batch).backward()
            opt.step()
    out_enc = {}
    for name, enc in encoded.items():
        fields = trainable_fields(enc)
        if not fields:
            continue
        module = student.get_submodule(name.removesuffix(".weight"))
        tuned = module.parametrizations.weight[0].fields
        # stored as the codec stores them (float16 codebooks): round now, so the loss below is the artifact's
        payload = {**enc.payload, **{f: tuned[f].detach().to(enc.payload[f].dtype) for f in fields}}
        for f in fields:
            tuned[f].data.copy_(payload[f].float())
        out_enc[name] = Encoded(enc.codec, enc.shape, payload, enc.params, enc.widths, enc.extra_bits)
    out_kept = {}
    for name, p in tuned_kept.items():
        out_kept[name] = p.detach().to(kept[name].dtype)
        p.data.copy_(out_kept[name].float())
    after = calibration_loss()
    return Tuned(out_enc, out_kept, before, after, cfg.steps if params else 0, time.time() - t0)
