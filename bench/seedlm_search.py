"""Benchmark: SeedLM's seed search, bound-pruned (what the codec runs) vs scoring every seed, side by side.

Both search all 2^16 - 1 seeds of the paper; `search_all` scores every seed's quantized error,
`search_pruned` scores only seeds a lower bound cannot rule out. Blocks are taken from real weights of
the default model (q/k/v/o/gate/up/down projections of three layers), the same blocks for both. Prints
microseconds per block for each, the speedup, how many seeds per block the pruned search scored, and
whether both picked the same seed, exponent and mantissas for every block; writes
bench/results/seedlm_search.json.
Usage: python bench/seedlm_search.py [--store DIR] [--blocks 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open

from agent_forge_core.compression import lfsr
from agent_forge_core.compression.codecs import seedlm
from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.stages.runner import run_stage_on

OUT = Path(__file__).resolve().parent / "results"
LAYERS = (0, 15, 29)
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def sample_blocks(weights: Path, C: int, pinv: torch.Tensor, per_tensor: int) -> tuple[torch.Tensor, list]:
    """Evenly spaced blocks of C weights from each tensor, with the exponent window the codec uses for it."""
    blocks, windows = [], []
    with safe_open(str(weights), "pt") as f:
        for layer in LAYERS:
            for proj in PROJ:
                w = f.get_tensor(f"model.layers.{layer}.{proj}.weight").double().reshape(-1)
                b = w[: len(w) // C * C].reshape(-1, C)
                blocks.append(b[torch.linspace(0, len(b) - 1, per_tensor).long()])
                windows.append(seedlm.exponent_window(w, pinv))
    return torch.cat(blocks), windows


def timed(fn) -> tuple[float, tuple]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None, help="store folder to reuse (the imported model is kept there)")
    ap.add_argument("--blocks", type=int, default=64, help="blocks per tensor (21 tensors)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    store = args.store or str(OUT.parent / ".bench-store")
    s = load_settings(overrides=[f"store.url={store}/store", f"store.cache_dir={store}/cache", f"work_dir={store}/work"])
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    weights = ctx.store.get(base) / "model.safetensors"
    rows = []
    for C, P in ((8, 3), (12, 4)):
        _, U, pinv = seedlm.bases(C, P, lfsr.PERIOD)
        blocks, windows = sample_blocks(weights, C, pinv, args.blocks)
        feats = seedlm.projector_features(C, P, lfsr.PERIOD)
        t_all = t_pruned = 0.0
        same = scored = 0
        for i, (lo, hi) in enumerate(windows):
            b = blocks[i * args.blocks: (i + 1) * args.blocks]
            dt, ref = timed(lambda: seedlm.search_all(b, U, pinv, lo, hi))
            t_all += dt
            dt, got = timed(lambda: seedlm.search_pruned(b, feats, U, pinv, lo, hi))
            t_pruned += dt
            same += all(torch.equal(x, y) for x, y in zip(ref, got[:3]))
            scored += got[3]
        n = len(blocks)
        row = {"C": C, "P": P, "blocks": n, "tensors": len(windows), "threads": args.threads,
               "all_us_per_block": 1e6 * t_all / n, "pruned_us_per_block": 1e6 * t_pruned / n,
               "speedup": t_all / t_pruned, "seeds_scored_per_block": scored / n,
               "identical_tensors": same, "identical": same == len(windows)}
        rows.append(row)
        print(f"C={C} P={P}: all seeds {row['all_us_per_block']:.0f} us/block, pruned {row['pruned_us_per_block']:.0f} "
              f"us/block (x{row['speedup']:.1f}), {row['seeds_scored_per_block']:.0f} of {lfsr.PERIOD} seeds scored "
              f"per block, identical picks in {same}/{len(windows)} tensors", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "seedlm_search.json").write_text(json.dumps({"model": s.model.source, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
