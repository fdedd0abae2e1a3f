"""Compressing a checkpoint: every tensor through the codec its plan rule names, into one artifact.

1. Plan: each tensor's rule (`plan.match`); the tied head is not stored twice; BitNet ternary layers
   keep their packed codes (`ternary` passthrough).
2. Calibrate: Hessians H = XᵀX of every linear's inputs on held-in text and the agent's own traffic, when a
   chosen codec uses them (VPTQ, GPTQ) or `auto` scores with them.
3. Encode: fixed-codec tensors once; `auto` tensors once per candidate, then one plan for the whole model
   (`plan.select_auto`: the cheapest that meets `target_bpw` within `error_budget`; with `target_bpw: auto`
   the smallest target whose gates pass, `target_search.py`, each plan judged by the caller's `judge`).
4. Fine-tune (`finetune.py`): codebooks and norms distilled end to end, codes fixed.
5. Write the artifact (`formats/compressed.py`), check its payload size against the accounted bits and
   time one decode.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError, GateFailed
from ..formats.bitnet import ternary_layers
from ..formats.compressed import SEP, check_size, decode_state, kept_entry, tensor_entry, write_artifact
from ..merge.safetensors_io import LazyCheckpoint
from ..model_io import load_model
from .calibration import linear_hessians
from .codecs import Encoded, get_codec
from .finetune import finetune, trainable_fields
from .plan import Choice, Option, cheapest_bits, match, relative_error, select_auto
from .rate_quality import write_curve
from .settings import CompressionSettings
from .target_search import Probe, smallest_passing

KEEP_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# state dict of a candidate model (every coded tensor decoded, kept ones as stored) -> its verdict
Judge = Callable[[dict[str, torch.Tensor]], Probe]
# (the input model, its tokenizer) -> token sequences of the agent's own traffic (`calibration.py`)
Traffic = Callable[[Any, Any], list[list[int]]]


def numel(shape) -> int:
    return torch.Size(shape).numel()


@dataclass
class _Payload:
    """What the artifact will hold, by tensor: encodings (with error and rule), kept tensors, ternary codes."""

    encoded: dict[str, tuple[Encoded, float, int]] = field(default_factory=dict)
    kept: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    ternary: dict[str, tuple[list[int], torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    tied: dict[str, list[int]] = field(default_factory=dict)

    def decoded(self) -> dict[str, torch.Tensor]:
        """The state a model rebuilt from the artifact holds (ternary layers aside)."""
        state = {n: get_codec(enc.codec).decode(enc) for n, (enc, _, _) in self.encoded.items()}
        return {**state, **{n: t for n, (t, _) in self.kept.items()}}

    def entries(self) -> dict[str, dict]:
        out = {n: tensor_entry(enc, err, rule) for n, (enc, err, rule) in self.encoded.items()}
        out.update({n: kept_entry(t, rule) for n, (t, rule) in self.kept.items()})
        for module, (shape, packed, gamma) in self.ternary.items():
            bits = (packed.numel() + gamma.numel() * gamma.element_size()) * 8
            out[f"{module}.weight"] = {"codec": "ternary", "shape": shape, "bits": bits,
                                       "bits_per_weight": bits / numel(shape), "rule": -1,
                                       "passthrough": ["packed", "gamma"]}
        out.update({n: {"codec": "tied", "shape": shape, "bits": 0, "bits_per_weight": 0.0, "rule": -1}
                    for n, shape in self.tied.items()})
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{n}{SEP}{f}": t for n, (enc, _, _) in self.encoded.items() for f, t in enc.packed().items()}
        out.update({n: t for n, (t, _) in self.kept.items()})
        for module, (_, packed, gamma) in self.ternary.items():
            out[f"{module}.weight{SEP}packed"], out[f"{module}.weight{SEP}gamma"] = packed, gamma
        return out


def _plan(ckpt: LazyCheckpoint, cfg: CompressionSettings, ternary: dict, tied: bool) -> tuple[list[str], dict[str, Choice]]:
    """Tensor names to write (ternary codes aside) and each one's rule; the tied head has none."""
    rules = [r.model_dump() for r in cfg.rules]
    passthrough = {f"{t}.{f}" for t in ternary for f in ("packed", "gamma")}
    names = [n for n in ckpt.names() if n not in passthrough]
    choices = {n: match(n, ckpt.infos[n].shape, rules) for n in names}
    if tied:
        choices.pop("lm_head.weight", None)
    return names, choices


def _calibrate(src: Path, choices: dict[str, Choice], cfg: CompressionSettings, device: str, progress, log,
               traffic: Traffic | None) -> tuple[dict, dict]:
    """H = XᵀX per linear whose codec (or `auto`) uses a Hessian ({} when none does or calibration is off), and
    what it was computed on."""
    def wants_h(choice: Choice) -> bool:
        if choice.codec == "auto":
            return True
        return choice.codec != "keep" and get_codec(choice.codec, **choice.params).uses_hessian

    linear = [n.removesuffix(".weight") for n, c in choices.items() if n.endswith(".weight") and wants_h(c)]
    if not linear or not cfg.calibration_tokens:
        return {}, {}
    t0 = time.time()
    model, tok = load_model(str(src), device=device)
    modules = dict(model.named_modules())
    linear = [n for n in linear if isinstance(modules.get(n), torch.nn.Linear)]
    progress(0.0, "compression: the agent's traffic" if traffic else f"compression: calibrating {len(linear)} linears")
    t1 = time.time()
    seqs = traffic(model, tok) if traffic else []
    traffic_s = time.time() - t1
    progress(0.02, f"compression: calibrating {len(linear)} linears")
    hessians = linear_hessians(model, tok, linear, cfg.calibration_tokens, cfg.calibration_len, cfg.seed, device,
                               traffic=seqs)
    data = {"text_tokens": max(1, cfg.calibration_tokens // cfg.calibration_len) * cfg.calibration_len,
            "traffic_sequences": len(seqs), "traffic_tokens": sum(map(len, seqs)), "traffic_s": round(traffic_s, 1),
            "seconds": round(time.time() - t0, 1)}
    log.info("compression: Hessians of %d linears from %d text tokens and %d of the agent's traffic (%d sequences) "
             "in %.1fs", len(hessians), data["text_tokens"], data["traffic_tokens"], len(seqs), data["seconds"])
    return hessians, data


def compress_checkpoint(src: Path, cfg: CompressionSettings, out: Path, device: str = "cpu",
                        progress: Callable[[float, str], None] = lambda f, m: None,
                        log: logging.Logger | logging.LoggerAdapter = logging.getLogger("agent_forge"),
                        source_key: str = "", judge: Judge | None = None, traffic: Traffic | None = None) -> dict:
    """Write the compressed artifact of checkpoint folder `src` to `out`; returns the manifest info.
    `judge` evaluates candidate plans for `target_bpw: auto` (on the validation split); `traffic` gives the agent's
    own token sequences, calibrated on beside the text."""
    ckpt = LazyCheckpoint(src)
    ternary = ternary_layers(src)
    tied = bool(json.loads((src / "config.json").read_text()).get("tie_word_embeddings", False))
    names, choices = _plan(ckpt, cfg, ternary, tied)
    hessians, calibration = _calibrate(src, choices, cfg, device, progress, log, traffic)
    candidates = [(c.codec, c.params) for c in cfg.auto_candidates]

    payload = _Payload()
    auto: dict[str, list] = {}
    encode_s: Counter[str] = Counter()
    for i, name in enumerate(names):
        progress(0.05 + 0.6 * i / len(names), f"compression: {name}")
        if name not in choices:  # the tied head: the embedding's weights
            payload.tied[name] = list(ckpt.infos[name].shape)
            continue
        w, choice = ckpt.get(name), choices[name]
        if choice.codec == "keep":
            payload.kept[name] = (w.to(KEEP_DTYPES[cfg.keep_dtype]) if w.is_floating_point() else w, choice.rule)
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
            payload.encoded[name] = (*encoded[0], choice.rule)
    for t in sorted(ternary):  # BitNet layers: their packed codes as they are
        payload.ternary[t] = (ternary[t], ckpt.get(f"{t}.packed"), ckpt.get(f"{t}.gamma"))
    progress(0.65, "compression: choosing the plan")
    picked, search = _choose_auto(payload, auto, candidates, cfg, judge, log)
    tuned = _finetune(src, ckpt, payload, hessians, cfg, device, log) if cfg.finetune.enabled else None

    totals = write_artifact(out, payload.tensors(), payload.entries(), src,
                            {"source": source_key, "ternary_passthrough": sorted(ternary)})
    if search.get("curve"):
        write_curve(out, search["curve"], search["chosen_bpw"])
    size = check_size(out)
    t0 = time.time()
    decode_state(out)  # timed once here from the files as written; the runner's load decodes again to evaluate
    decode_s = time.time() - t0
    log.info("compression: %.3f bits/weight model-wide (%.3f over coded tensors), %d payload bytes",
             totals["bits_per_weight"], totals["coded_bits_per_weight"], totals["payload_bytes"])
    info = {"bits_per_weight": totals["bits_per_weight"], "coded_bits_per_weight": totals["coded_bits_per_weight"],
            "by_codec": totals["by_codec"], "payload_bytes": totals["payload_bytes"], **size,
            "auto_choices": dict(Counter(picked.values())), "encode_seconds": dict(encode_s),
            "decode_seconds": decode_s, "hessians": len(hessians), "calibration": calibration, **search}
    if tuned is not None:
        info["finetune"] = tuned
    if search.get("curve"):
        info["tables"] = {"rate-quality curve walked by target_bpw auto (validation split)": search["curve"]}
    return info


def _choose_auto(payload: _Payload, auto: dict[str, list], candidates: list, cfg: CompressionSettings,
                 judge: Judge | None, log) -> tuple[dict[str, str], dict]:
    """One candidate per `auto` tensor for the whole model, added to the payload. Returns {tensor: the
    chosen candidate, as text} and what the search found (curve, next larger plan)."""
    if not auto:
        return {}, {}
    entries = payload.entries()
    fixed = sum(e["bits"] for e in entries.values())
    total = sum(numel(e["shape"]) for e in entries.values() if e["codec"] != "tied") + sum(
        numel(opts[0][1].shape) for opts in auto.values())
    options = {n: [Option(j, enc.bits, err, numel(enc.shape)) for j, (_, enc, err) in enumerate(opts)]
               for n, opts in auto.items()}

    def bpw(sel: dict[str, Option]) -> float:
        return (fixed + sum(o.bits for o in sel.values())) / total

    cheapest = (fixed + cheapest_bits(options, cfg.error_budget)) / total

    def plan_at(target: float | None) -> tuple[dict[str, Option], float]:
        sel = select_auto(options, fixed, total, target, cfg.error_budget)
        return sel, bpw(sel)

    search: dict = {}
    if cfg.target_bpw == "auto":
        if judge is None:
            raise ConfigError("compression.target_bpw: auto needs an evaluator of candidate plans (the stage "
                              "supplies one); called directly, pass `judge` or set a number for target_bpw")
        base = payload.decoded()

        def judge_plan(sel: dict[str, Option], plan_bpw: float) -> Probe:
            state = {n: get_codec(auto[n][o.index][1].codec).decode(auto[n][o.index][1]) for n, o in sel.items()}
            probe = judge({**base, **state})
            probe.bpw = plan_bpw
            log.info("compression: plan of %.3f bits/weight %s on validation%s", plan_bpw,
                     "passes" if probe.passed else "fails", "" if probe.passed else ": " + "; ".join(probe.failures))
            return probe

        result = smallest_passing(plan_at, cheapest, judge_plan, cfg.search_tolerance, cfg.search_probes)
        curve = sorted((p.row() for p in result.probes), key=lambda r: r["bits_per_weight"])
        if result.plan is None:
            best = result.probes[0]  # the first probe: the most accurate plan
            raise GateFailed(
                f"compression: no plan passes the gates on the validation split; even the most accurate one "
                f"({best.bpw:.3f} bits/weight) fails:\n  " + "\n  ".join(best.failures) + "\nAdd a more accurate "
                "auto candidate (e.g. {codec: rtn, params: {bits: 8, group: 64}}), or loosen compression.gates.")
        sel = result.plan
        search = {"curve": curve, "chosen_bpw": bpw(sel)}
    else:
        sel, _ = plan_at(cfg.target_bpw)
    search["next_larger_bpw"] = _next_larger(plan_at, bpw(sel), bpw(plan_at(None)[0]))
    picked = {}
    for n, opt in sel.items():
        rule, enc, err = auto[n][opt.index]
        payload.encoded[n] = (enc, err, rule)
        picked[n] = f"{enc.codec} {json.dumps(candidates[opt.index][1], sort_keys=True)}"
    return picked, search


def _next_larger(plan_at, chosen: float, largest: float) -> float | None:
    """Bits per weight of the next plan above `chosen` (None: it is the largest): what to try when it fails."""
    step = 1 / 64
    while chosen + step < largest:
        _, b = plan_at(chosen + step)
        if b > chosen:
            return b
        step *= 2
    return largest if largest > chosen else None


def _finetune(src: Path, ckpt: LazyCheckpoint, payload: _Payload, hessians: dict, cfg: CompressionSettings, device: str, log) -> dict | None:
    """Distil the codecs' trainable values and the norms (`finetune.py`) into the payload; None when no
    chosen codec has trainable values."""
    encoded = {n: enc for n, (enc, _, _) in payload.encoded.items()}
    if not any(trainable_fields(enc) for enc in encoded.values()):
        return None
    teacher, tok = load_model(str(src), device=device)
    student, _ = load_model(str(src), device=device)
    kept = {n: t for n, (t, _) in payload.kept.items()}
    tuned = finetune(teacher, student, tok, encoded, payload.decoded(), kept, cfg.finetune, cfg.calibration_len,
                     cfg.seed, device)
    del teacher, student
    for n, enc in tuned.encoded.items():
        _, _, rule = payload.encoded[n]
        H = hessians.get(n.removesuffix(".weight"))
        w = ckpt.get(n).float()
        payload.encoded[n] = (enc, relative_error(w, get_codec(enc.codec).decode(enc), H), rule)
    for n, t in tuned.kept.items():
        payload.kept[n] = (t, payload.kept[n][1])
    log.info("compression: fine-tuned %d tensors' codebooks and %d norms in %.0fs: calibration KL %.4f -> %.4f",
             len(tuned.encoded), len(tuned.kept), tuned.seconds, tuned.loss_before, tuned.loss_after)
    return tuned.summary()
