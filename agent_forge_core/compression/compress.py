"""Compressing a checkpoint: every tensor through the codec its plan rule names, into one artifact.

1. Plan: each tensor's rule (`plan.match`); the tied head is not stored twice; BitNet ternary layers
   keep their packed codes (`ternary` passthrough).
2. Calibrate: Hessians H = XᵀX of every linear's inputs on held-in text, when a chosen codec uses them
   (VPTQ) or `auto` scores with them.
3. Encode: fixed-codec tensors once; `auto` tensors once per candidate, then one plan for the whole model
   (`plan.select_auto`: the cheapest that meets `target_bpw` within `error_budget`).
4. Write the artifact (`formats/compressed.py`), check its payload size against the accounted bits and
   time one decode.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..formats.bitnet import ternary_layers
from ..formats.compressed import SEP, check_size, decode_state, kept_entry, tensor_entry, write_artifact
from ..merge.safetensors_io import LazyCheckpoint
from ..model_io import load_model
from .calibration import linear_hessians
from .codecs import get_codec
from .plan import Choice, Option, match, relative_error, select_auto
from .settings import CompressionSettings

KEEP_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def numel(shape) -> int:
    return torch.Size(shape).numel()


@dataclass
class _Payload:
    """What the artifact will hold: stored tensors and one entry per tensor of the model."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    entries: dict[str, dict] = field(default_factory=dict)

    def add_encoded(self, name: str, enc, err: float, rule: int) -> None:
        for f, t in enc.packed().items():
            self.tensors[f"{name}{SEP}{f}"] = t
        self.entries[name] = tensor_entry(enc, err, rule)

    def add_kept(self, name: str, t: torch.Tensor, rule: int) -> None:
        self.tensors[name] = t
        self.entries[name] = kept_entry(t, rule)

    def add_ternary(self, module: str, shape: list[int], packed: torch.Tensor, gamma: torch.Tensor) -> None:
        self.tensors[f"{module}.weight{SEP}packed"], self.tensors[f"{module}.weight{SEP}gamma"] = packed, gamma
        bits = (packed.numel() + gamma.numel() * gamma.element_size()) * 8
        self.entries[f"{module}.weight"] = {"codec": "ternary", "shape": shape, "bits": bits,
                                            "bits_per_weight": bits / numel(shape), "rule": -1,
                                            "passthrough": ["packed", "gamma"]}


def _plan(ckpt: LazyCheckpoint, cfg: CompressionSettings, ternary: dict, tied: bool) -> tuple[list[str], dict[str, Choice]]:
    """Tensor names to write (ternary codes aside) and each one's rule; the tied head has none."""
    rules = [r.model_dump() for r in cfg.rules]
    passthrough = {f"{t}.{f}" for t in ternary for f in ("packed", "gamma")}
    names = [n for n in ckpt.names() if n not in passthrough]
    choices = {n: match(n, ckpt.infos[n].shape, rules) for n in names}
    if tied:
        choices.pop("lm_head.weight", None)
    return names, choices


def _calibrate(src: Path, choices: dict[str, Choice], cfg: CompressionSettings, device: str, progress, log) -> dict:
    """H = XᵀX per linear whose codec (or `auto`) uses a Hessian; {} when none does or calibration is off."""
    def wants_h(choice: Choice) -> bool:
        if choice.codec == "auto":
            return True
        return choice.codec != "keep" and get_codec(choice.codec, **choice.params).uses_hessian

    linear = [n.removesuffix(".weight") for n, c in choices.items() if n.endswith(".weight") and wants_h(c)]
    if not linear or not cfg.calibration_tokens:
        return {}
    t0 = time.time()
    model, tok = load_model(str(src), device=device)
    modules = dict(model.named_modules())
    linear = [n for n in linear if isinstance(modules.get(n), torch.nn.Linear)]
    progress(0.0, f"compression: calibrating {len(linear)} linears")
    hessians = linear_hessians(model, tok, linear, cfg.calibration_tokens, cfg.calibration_len, cfg.seed, device)
    log.info("compression: Hessians of %d linears from %d tokens in %.1fs", len(hessians), cfg.calibration_tokens,
             time.time() - t0)
    return hessians


def compress_checkpoint(src: Path, cfg: CompressionSettings, out: Path, device: str = "cpu",
                        progress: Callable[[float, str], None] = lambda f, m: None,
                        log: logging.Logger | logging.LoggerAdapter = logging.getLogger("agent_forge"),
                        source_key: str = "") -> dict:
    """Write the compressed artifact of checkpoint folder `src` to `out`; returns the manifest info."""
    ckpt = LazyCheckpoint(src)
    ternary = ternary_layers(src)
    tied = bool(json.loads((src / "config.json").read_text()).get("tie_word_embeddings", False))
    names, choices = _plan(ckpt, cfg, ternary, tied)
    hessians = _calibrate(src, choices, cfg, device, progress, log)
    candidates = [(c.codec, c.params) for c in cfg.auto_candidates]

    payload = _Payload()
    auto: dict[str, list] = {}
    encode_s: Counter[str] = Counter()
    for i, name in enumerate(names):
        progress(0.05 + 0.9 * i / len(names), f"compression: {name}")
        if name not in choices:  # the tied head: the embedding's weights
            payload.entries[name] = {"codec": "tied", "shape": list(ckpt.infos[name].shape), "bits": 0,
                                     "bits_per_weight": 0.0, "rule": -1}
            continue
        w, choice = ckpt.get(name), choices[name]
        if choice.codec == "keep":
            payload.add_kept(name, w.to(KEEP_DTYPES[cfg.keep_dtype]) if w.is_floating_point() else w, choice.rule)
            continue
        H = hessians.get(name.removesuffix(".weight"))
        encoded = []
        for codec_name, params in ([(choice.codec, choice.params)] if choice.codec != "auto" else candidates):
            codec = get_codec(codec_name, **params)
            t0 = time.time()
            enc = codec.encode(w.float(), H)
            encode_s[codec_name] += time.time() - t0
            encoded.append((enc, relative_error(w.float(), codec.decode(enc), H)))
        if choice.codec == "auto":
            auto[name] = [(choice.rule, enc, err) for enc, err in encoded]
        else:
            payload.add_encoded(name, *encoded[0], choice.rule)
    for t in sorted(ternary):  # BitNet layers: their packed codes as they are
        payload.add_ternary(t, ternary[t], ckpt.get(f"{t}.packed"), ckpt.get(f"{t}.gamma"))
    picked = _choose_auto(payload, auto, candidates, cfg)

    totals = write_artifact(out, payload.tensors, payload.entries, src,
                            {"source": source_key, "ternary_passthrough": sorted(ternary)})
    size = check_size(out)
    t0 = time.time()
    decode_state(out)  # timed once here from the files as written; the runner's load decodes again to evaluate
    decode_s = time.time() - t0
    log.info("compression: %.3f bits/weight model-wide (%.3f over coded tensors), %d payload bytes",
             totals["bits_per_weight"], totals["coded_bits_per_weight"], totals["payload_bytes"])
    return {"bits_per_weight": totals["bits_per_weight"], "coded_bits_per_weight": totals["coded_bits_per_weight"],
            "by_codec": totals["by_codec"], "payload_bytes": totals["payload_bytes"], **size,
            "auto_choices": dict(Counter(picked.values())), "encode_seconds": dict(encode_s),
            "decode_seconds": decode_s, "hessians": len(hessians)}


def _choose_auto(payload: _Payload, auto: dict[str, list], candidates: list, cfg: CompressionSettings) -> dict[str, str]:
    """One candidate per `auto` tensor for the whole model (`select_auto`), added to the payload;
    returns {tensor: the chosen candidate, as text}."""
    if not auto:
        return {}
    fixed = sum(e["bits"] for e in payload.entries.values())
    total = sum(numel(e["shape"]) for e in payload.entries.values() if e["codec"] != "tied") + sum(
        numel(opts[0][1].shape) for opts in auto.values())
    options = {n: [Option(j, enc.bits, err, numel(enc.shape)) for j, (_, enc, err) in enumerate(opts)]
               for n, opts in auto.items()}
    picked = {}
    for n, opt in select_auto(options, fixed, total, cfg.target_bpw, cfg.error_budget).items():
        rule, enc, err = auto[n][opt.index]
        payload.add_encoded(n, enc, err, rule)
        picked[n] = f"{enc.codec} {json.dumps(candidates[opt.index][1], sort_keys=True)}"
    return picked
