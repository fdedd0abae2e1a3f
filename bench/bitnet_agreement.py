"""Benchmark: how far a trained packed ternary checkpoint's logits sit from the same function in float64.

Per layer the int8 kernel is exact (tests/test_bitnet_core.py); through 30 layers that each re-quantize their input
to int8, float32 rounding can move an activation code across a rounding boundary, and how much that grows depends
on the model (an untrained post-training ternary model is far more sensitive: bench/bitnet_speed.py). This reads
one trained checkpoint (a packed BitNet folder, e.g. a bench/bitnet_levers.py output in its store) on the pydoc
test text and compares the int8 and the float32 dequantizing kernels with the dequantizing path run in float64.
Writes bench/results/bitnet_agreement.json.
Usage: python bench/bitnet_agreement.py CHECKPOINT_DIR [--tokens 512]
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from agent_forge_core.bitnet.bitlinear import set_kernel
from agent_forge_core.evals.text import natural_text
from agent_forge_core.model_io import load_model

OUT = Path(__file__).parent / "results" / "bitnet_agreement.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    model, tok = load_model(args.checkpoint)
    ids = tok(natural_text("test"), return_tensors="pt").input_ids[:, :args.tokens]
    with torch.inference_mode():
        logits = {}
        for kernel in ("int8", "dequant"):
            set_kernel(model, kernel)
            logits[kernel] = model(ids).logits.double()
        ref = copy.deepcopy(model).double()(ids).logits  # the dequantizing path, in float64
    out = {"checkpoint": args.checkpoint, "tokens": ids.shape[1], "logit_abs_max": float(ref.abs().max())}
    for k, x in logits.items():
        out[k] = {"max_abs_diff": float((x - ref).abs().max()), "mean_abs_diff": float((x - ref).abs().mean()),
                  "argmax_agree": float((x.argmax(-1) == ref.argmax(-1)).float().mean())}
        print(f"{k} vs float64: max |diff| {out[k]['max_abs_diff']:.3f}, mean {out[k]['mean_abs_diff']:.3f}, "
              f"argmax agreement {out[k]['argmax_agree']:.3f} (logits up to {out['logit_abs_max']:.1f})")
    OUT.write_text(json.dumps(out, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
