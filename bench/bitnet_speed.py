"""Benchmark: packed ternary inference speed on CPU, the int8 kernel against float32 and the dequantizing path.

The default model (SmolLM2-135M-Instruct) is ternarized post-training (speed does not depend on training), with
per-output-channel scales (the stage's default) unless a row says otherwise, and written in the BitNet format;
the packed model is loaded once and run with each kernel of `PackedBitLinear` ("int8": int8 x int8 -> int32
`torch._int_mm`; "dequant": gamma * W~ rebuilt in float per call), side by side with the float32 model, in one
process:
- forward: tokens/s of one forward over B x T tokens with logits at every position (scoring, perplexity);
  the float32 output head (576 x 49,152, tied to the embeddings) is about a quarter of the packed forward (profiled);
- prefill: the same forward with logits at the last position only, as generation runs it;
- decode: tokens/s of greedy generation with the KV cache, batch 1, --new tokens after a short prompt;
- memory: bytes of the parameters and buffers each model holds;
- packed_int8_bf16: the int8 kernel with the embeddings stored in bfloat16 and the tied head multiplied in
  bfloat16 (`bitnet.embeddings=bfloat16`, `bitnet/embeddings16.py`), as BitNet b1.58 and bitnet.cpp keep those
  in 16 bits; its agreement row is against its own function (bfloat16-rounded embeddings) in float64;
- packed_int8_tensor_scales: the int8 kernel on a model with one absmean scale per tensor (b1.58's) instead of
  per output channel (`bitnet.scales`, default channel): the per-channel kernel scales the [tokens, out] product
  by a [tokens, 1] x [1, out] factor, the per-tensor one by [tokens, 1]; its agreement row is against its own function;
- packed_int8_float_ends: the int8 kernel on the stage's default layout, the first and last decoder layers' projections
  kept float32 (`bitnet.float_layers=[0, -1]`); the other packed rows ternarize every layer; its agreement row is
  against its own function;
- agreement: each packed path's logits against the same fake-quant function computed in float64;
- embeddings16_quality: what 16-bit embeddings and head cost on their own, measured where they can show it: the
  float model's test perplexity (pydoc test text, the eval's tokens and window) with float32 vs bfloat16
  embeddings and head (a post-training ternary model is too far from float for that difference to read). Per layer
  the int8 kernel is exact (tests/test_bitnet_core.py); through 30 layers, each re-quantizing its input to
  int8, a float32 rounding that moves one activation code across a rounding boundary grows, so the model-level
  differences measure float32's rounding, and the int8 path is compared with the float32 one on that scale.
bitnet.cpp's paper reports 2.37x-6.17x over llama.cpp fp16 on x86 CPUs for 700M-100B models; we print our
ratio beside it (a ratio, not an absolute). Writes bench/results/bitnet_speed.json.
Usage: python bench/bitnet_speed.py [--repeats 5] [--new 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agent_forge_core.aliases import ensure_alias
from agent_forge_core.bitnet.bitlinear import set_kernel
from agent_forge_core.bitnet.embeddings16 import use_16bit_embeddings
from agent_forge_core.bitnet.convert import convert
from agent_forge_core.formats.bitnet import load_bitnet, save_bitnet
from agent_forge_core.config import load_settings
from agent_forge_core.evals.suite import perplexity
from agent_forge_core.evals.text import natural_text
from agent_forge_core.model_io import load_model

OUT = Path(__file__).parent / "results" / "bitnet_speed.json"
BITNET_CPP_X86 = (2.37, 6.17)


def cpu_model() -> str:
    """The CPU's model name (ratios to float32 differ between machines: the previous runs' CPUs differ)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def held_bytes(model) -> int:
    seen = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def compare(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {"max_abs_diff": float((x - ref).abs().max()), "mean_abs_diff": float((x - ref).abs().mean()),
            "logit_abs_max": float(ref.abs().max()), "argmax_agree": float((x.argmax(-1) == ref.argmax(-1)).float().mean())}


def interleaved_median_s(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed round-robin (one call of each per round, after a warm-up
    round) so that a slow spell of the machine falls on every row alike."""
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def kernel_run(model, kernel, fn):
    def run():
        if kernel:
            set_kernel(model, kernel)
        return fn(model)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_name = "smollm2-135m-instruct"
    src = ensure_alias(model_name)
    float_model, tok = load_model(str(src))
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 120)
    ids = tok(text, return_tensors="pt").input_ids[:, :args.tokens].repeat(args.batch, 1)
    prompt = tok("Q: What is 12 + 30?\nA:", return_tensors="pt").input_ids
    with tempfile.TemporaryDirectory() as tmp:
        ternary, _ = load_model(str(src))
        convert(ternary, per_channel=True)
        save_bitnet(ternary, tok, tmp, "2bit")
        save_bitnet(ternary, tok, f"{tmp}/bf16", "2bit", embeddings="bfloat16")
        ternary, _ = load_model(str(src))
        convert(ternary, per_channel=False)
        save_bitnet(ternary, tok, f"{tmp}/tensor", "2bit")
        ternary, _ = load_model(str(src))
        convert(ternary, per_channel=True, float_layers=load_settings().bitnet.float_layers)  # the stage's layout
        save_bitnet(ternary, tok, f"{tmp}/ends", "2bit")
        del ternary
        packed, _ = load_bitnet(tmp)
        packed16, _ = load_bitnet(f"{tmp}/bf16")
        packed_t, _ = load_bitnet(f"{tmp}/tensor")
        packed_e, _ = load_bitnet(f"{tmp}/ends")
    models = {"float32": (float_model, None), "packed_dequant": (packed, "dequant"), "packed_int8": (packed, "int8"),
              "packed_int8_bf16": (packed16, "int8"), "packed_int8_tensor_scales": (packed_t, "int8"),
              "packed_int8_float_ends": (packed_e, "int8")}
    with torch.inference_mode():
        logits = {k: kernel_run(m, kern, lambda mm: mm(ids).logits.float())() for k, (m, kern) in models.items()}
        forward = interleaved_median_s({k: kernel_run(m, kern, lambda mm: mm(ids)) for k, (m, kern) in models.items()},
                                       args.repeats)
        prefill = interleaved_median_s({k: kernel_run(m, kern, lambda mm: mm(ids, logits_to_keep=1))
                                        for k, (m, kern) in models.items()}, args.repeats)
        decode = interleaved_median_s({k: kernel_run(m, kern, lambda mm: mm.generate(
            prompt, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)) for k, (m, kern) in models.items()},
            args.repeats)
        rows = {k: {"forward_tok_s": ids.numel() / forward[k], "prefill_tok_s": ids.numel() / prefill[k],
                    "decode_tok_s": args.new / decode[k],
                    "held_bytes": held_bytes(m)} for k, (m, _) in models.items()}
        for name, r in rows.items():
            print(f"{name:<16} forward {r['forward_tok_s']:6.0f} tok/s  prefill {r['prefill_tok_s']:6.0f} tok/s  decode {r['decode_tok_s']:6.1f} tok/s  "
                  f"held {r['held_bytes'] / 1e6:6.1f} MB", flush=True)
        # the same fake-quant function in float64: what both packed paths approximate
        set_kernel(packed, "dequant")
        ref = copy.deepcopy(packed).double()(ids).logits
        own_refs = {}
        for k in ("packed_int8_bf16", "packed_int8_tensor_scales", "packed_int8_float_ends"):
            set_kernel(models[k][0], "dequant")
            own_refs[k] = copy.deepcopy(models[k][0]).double()(ids).logits
    agreement = {k: compare(logits[k].double(), ref) for k in ("packed_dequant", "packed_int8")}
    agreement.update({k: compare(logits[k].double(), r) for k, r in own_refs.items()})
    agreement["int8_vs_dequant"] = compare(logits["packed_int8"].double(), logits["packed_dequant"].double())
    ev = load_settings().eval
    float16 = copy.deepcopy(float_model)
    use_16bit_embeddings(float16, torch.bfloat16)
    with torch.inference_mode():
        quality = {k: perplexity(m, tok, natural_text("test"), ev.ppl_tokens, ev.ppl_window)
                   for k, m in (("float32", float_model), ("float32_bf16_embeddings", float16))}
    print(f"float model test perplexity: float32 embeddings {quality['float32']:.3f}, bfloat16 embeddings and head "
          f"{quality['float32_bf16_embeddings']:.3f}")
    f = rows["float32"]
    ratios = {k: {"forward_x_float32": r["forward_tok_s"] / f["forward_tok_s"],
                  "prefill_x_float32": r["prefill_tok_s"] / f["prefill_tok_s"],
                  "decode_x_float32": r["decode_tok_s"] / f["decode_tok_s"],
                  "memory_x_float32": r["held_bytes"] / f["held_bytes"]} for k, r in rows.items() if k != "float32"}
    for k, r in ratios.items():
        print(f"{k}: forward {r['forward_x_float32']:.2f}x float32, prefill {r['prefill_x_float32']:.2f}x, decode {r['decode_x_float32']:.2f}x, "
              f"memory {r['memory_x_float32']:.2f}x (bitnet.cpp paper, x86: {BITNET_CPP_X86[0]}-{BITNET_CPP_X86[1]}x "
              "over fp16 llama.cpp)")
    for k, a in agreement.items():
        print(f"logits {k}{'' if 'vs' in k else ' vs float64'}: max |diff| {a['max_abs_diff']:.3f}, mean "
              f"{a['mean_abs_diff']:.3f} (logits up to {a['logit_abs_max']:.1f}), argmax agreement {a['argmax_agree']:.3f}")
    out = {"rows": rows, "ratios": ratios, "agreement": agreement, "embeddings16_quality": quality,
           "bitnet_cpp_x86_speedup": BITNET_CPP_X86,
           "setup": {"batch": args.batch, "tokens": ids.shape[1], "new_tokens": args.new, "threads": args.threads,
                     "repeats": args.repeats, "model": model_name, "torch": torch.__version__, "cpu": cpu_model()}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
