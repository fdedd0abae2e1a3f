"""Stage 8, final compression: every tensor through the codec its plan rule names, into one artifact.

Reads the input checkpoint tensor by tensor (`LazyCheckpoint`); collects Hessians H = XᵀX of every
linear's inputs on held-in text when a chosen codec uses them (VPTQ) or `auto` scores with them;
encodes; writes the artifact (`compression/artifact.py`) and checks its payload size against the
accounted bits. BitNet inputs keep their ternary layers' packed codes (`ternary` passthrough). The
runner then evaluates the model *rebuilt from the artifact* and enforces the gates against the input.

Manifest info: bits per weight model-wide and over the coded tensors, bits per codec, every tensor's
codec/bits/error (in compression.json), the auto choices, encode time per codec and the decode time.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Iterator

import torch

from ..bitnet.checkpoint import META as BITNET_META
from ..compression.artifact import SEP, check_size, decode_state, kept_entry, tensor_entry, write_artifact
from ..compression.calibration import linear_hessians
from ..compression.codecs import get_codec
from ..compression.plan import Option, match, relative_error, select_auto
from ..config import CompressionSettings
from ..merge.safetensors_io import LazyCheckpoint
from ..model_io import load_model
from .contract import Built, StageContext, StageSpec
from .registry import register

KEEP_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def numel(shape) -> int:
    return torch.Size(shape).numel()


def _ternary_layers(folder) -> dict[str, list[int]]:
    """{BitLinear module name: weight shape} of a BitNet checkpoint; empty for any other."""
    meta = folder / BITNET_META
    return json.loads(meta.read_text())["layers"] if meta.is_file() else {}


def build(inputs: list[str], cfg: CompressionSettings, ctx: StageContext, variants: list[str]) -> Iterator[Built]:
    (parent,) = inputs
    src = ctx.store.get(parent)
    ckpt = LazyCheckpoint(src)
    ternary = _ternary_layers(src)
    tied = bool(json.loads((src / "config.json").read_text()).get("tie_word_embeddings", False))
    rules = [r.model_dump() for r in cfg.rules]
    passthrough = {f"{t}.{field}" for t in ternary for field in ("packed", "gamma")}
    names = [n for n in ckpt.names() if n not in passthrough]
    choices = {n: match(n, ckpt.infos[n].shape, rules) for n in names}
    if tied and "lm_head.weight" in choices:
        choices.pop("lm_head.weight")
    candidates = [(c.codec, c.params) for c in cfg.auto_candidates]

    def wants_h(choice) -> bool:
        if choice.codec == "auto":
            return True
        return choice.codec != "keep" and get_codec(choice.codec, **choice.params).uses_hessian

    linear = [n.removesuffix(".weight") for n, c in choices.items() if n.endswith(".weight") and wants_h(c)]
    hessians: dict[str, torch.Tensor] = {}
    if linear and cfg.calibration_tokens:
        t0 = time.time()
        model, tok = load_model(str(src), device=str(ctx.device))
        modules = dict(model.named_modules())
        linear = [n for n in linear if isinstance(modules.get(n), torch.nn.Linear)]
        ctx.progress(0.0, f"compression: calibrating {len(linear)} linears")
        hessians = linear_hessians(model, tok, linear, cfg.calibration_tokens, cfg.calibration_len, cfg.seed, str(ctx.device))
        del model
        ctx.log.info("compression: Hessians of %d linears from %d tokens in %.1fs", len(hessians), cfg.calibration_tokens,
                     time.time() - t0)

    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    auto: dict[str, list] = {}
    encode_s: dict[str, float] = {}
    for i, name in enumerate(names):
        ctx.progress(0.05 + 0.9 * i / len(names), f"compression: {name}")
        if name not in choices:  # the tied head: the embedding's weights
            entries[name] = {"codec": "tied", "shape": list(ckpt.infos[name].shape), "bits": 0, "bits_per_weight": 0.0,
                             "rule": -1}
            continue
        w, choice = ckpt.get(name), choices[name]
        H = hessians.get(name.removesuffix(".weight"))
        if choice.codec == "keep":
            t = w.to(KEEP_DTYPES[cfg.keep_dtype]) if w.is_floating_point() else w
            stored[name] = t
            entries[name] = kept_entry(t, choice.rule)
            continue
        options = [(choice.codec, choice.params)] if choice.codec != "auto" else candidates
        encoded = []
        for codec_name, params in options:
            codec = get_codec(codec_name, **params)
            t0 = time.time()
            enc = codec.encode(w.float(), H)
            encode_s[codec_name] = encode_s.get(codec_name, 0.0) + time.time() - t0
            encoded.append((enc, relative_error(w.float(), codec.decode(enc), H)))
        if choice.codec == "auto":
            auto[name] = [(choice.rule, enc, err) for enc, err in encoded]
        else:
            _store(stored, entries, name, *encoded[0], choice.rule)
    for t in sorted(ternary):  # BitNet layers: their packed codes as they are
        packed, gamma = ckpt.get(f"{t}.packed"), ckpt.get(f"{t}.gamma")
        stored[f"{t}.weight{SEP}packed"], stored[f"{t}.weight{SEP}gamma"] = packed, gamma
        shape = ternary[t]
        bits = (packed.numel() + gamma.numel() * gamma.element_size()) * 8
        entries[f"{t}.weight"] = {"codec": "ternary", "shape": shape, "bits": bits, "bits_per_weight": bits / numel(shape),
                                  "rule": -1, "passthrough": ["packed", "gamma"]}
    picked = {}
    if auto:
        fixed = sum(e["bits"] for e in entries.values())
        total = sum(numel(e["shape"]) for e in entries.values() if e["codec"] != "tied") + sum(
            numel(opts[0][1].shape) for opts in auto.values())
        options = {n: [Option(j, enc.bits, err, numel(enc.shape)) for j, (_, enc, err) in enumerate(opts)]
                   for n, opts in auto.items()}
        chosen = select_auto(options, fixed, total, cfg.target_bpw, cfg.error_budget)
        for n, opt in chosen.items():
            rule, enc, err = auto[n][opt.index]
            _store(stored, entries, n, enc, err, rule)
            picked[n] = f"{enc.codec} {json.dumps(candidates[opt.index][1], sort_keys=True)}"
    folder = ctx.work_dir / f"compression-{uuid.uuid4().hex}"
    totals = write_artifact(folder, stored, entries, src, {"source": parent, "ternary_passthrough": sorted(ternary)})
    size = check_size(folder)
    t0 = time.time()
    decode_state(folder)  # timed once here from the files as written; the runner's load decodes again to evaluate
    decode_s = time.time() - t0
    auto_summary = dict(Counter(picked.values()))
    info = {"bits_per_weight": totals["bits_per_weight"], "coded_bits_per_weight": totals["coded_bits_per_weight"],
            "by_codec": totals["by_codec"], "payload_bytes": totals["payload_bytes"], **size,
            "auto_choices": auto_summary, "encode_seconds": encode_s, "decode_seconds": decode_s,
            "hessians": len(hessians)}
    ctx.log.info("compression: %.3f bits/weight model-wide (%.3f over coded tensors), %d payload bytes",
                 totals["bits_per_weight"], totals["coded_bits_per_weight"], totals["payload_bytes"])
    yield Built(variant="", folder=folder, parent=parent, info=info)  # evaluated as rebuilt from the artifact


def _store(stored: dict, entries: dict, name: str, enc, err: float, rule: int) -> None:
    for field, t in enc.packed().items():
        stored[f"{name}{SEP}{field}"] = t
    entries[name] = tensor_entry(enc, err, rule)


SPEC = register(
    StageSpec(
        name="compression",
        version=1,
        takes="one",
        build=build,
        description="Final compression: SeedLM / VPTQ / Hyper-Compression / RTN per tensor (plan or auto), "
                    "an artifact that rebuilds the model.",
    )
)
