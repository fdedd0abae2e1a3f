"""Benchmark: final compression of the default model (SmolLM2-135M-Instruct), codec by codec.

Side by side, in one run: every linear projection (`*_proj.weight`, 106M of the model's 135M weights)
coded by one codec at its standard settings -- SeedLM 4 and 3 bpw, VPTQ ~2 and ~3 bpw,
Hyper-Compression (the paper's default and two smaller codebooks), RTN at matching bits -- with the
embedding (tied head) as RTN 8-bit/64 and norms float16 in every variant. Each row: bits per weight over
the coded linears and model-wide (every tensor counted, payload size on disk checked), perplexity and
task accuracies of the model rebuilt from the artifact (held-out test split), encode and decode time.
Writes bench/results/compression.json (after every variant) and a rate-distortion plot
bench/results/compression_rd.png (bits per weight vs perplexity, one line per codec).

SeedLM searches all 2^16-1 seeds (the paper's setting; `--seedlm-seeds N` searches the first N only, to
show what the search depth buys; the count is in each row's label).
Usage: python bench/compression.py [--store DIR] [--seedlm-seeds 65535] [--only FAMILY|LABEL ...] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import yaml

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.stages.runner import run_stage_on

OUT = Path(__file__).resolve().parent / "results"
METRICS = ("perplexity", "arithmetic", "recall", "instruction")


def variants(seeds: int, device: str = "cpu") -> list[tuple[str, str, dict]]:
    """(label, family, codec rule for the linears)."""
    return [
        ("RTN 2b/g64", "rtn", {"codec": "rtn", "params": {"bits": 2, "group": 64}}),
        ("RTN 2b/g16 (3.0)", "rtn", {"codec": "rtn", "params": {"bits": 2, "group": 16}}),
        ("RTN 3b/g64", "rtn", {"codec": "rtn", "params": {"bits": 3, "group": 64}}),
        ("RTN 3b/g16 (4.0)", "rtn", {"codec": "rtn", "params": {"bits": 3, "group": 16}}),
        ("RTN 4b/g64", "rtn", {"codec": "rtn", "params": {"bits": 4, "group": 64}}),
        ("RTN 6b/g64", "rtn", {"codec": "rtn", "params": {"bits": 6, "group": 64}}),
        ("Hyper n=1600 (paper default)", "hyper", {"codec": "hyper", "params": {"n": 1600, "class_max": 3}}),
        ("Hyper n=256 geometric", "hyper", {"codec": "hyper", "params": {"n": 256, "spacing": "geometric"}}),
        ("Hyper n=64 geometric", "hyper", {"codec": "hyper", "params": {"n": 64, "spacing": "geometric"}}),
        ("VPTQ v4 k256 (~2 bpw)", "vptq", {"codec": "vptq", "params": {"v": 4, "k": 256}}),
        ("VPTQ v4 k256 + res16 (~3 bpw)", "vptq", {"codec": "vptq", "params": {"v": 4, "k": 256, "residual_k": 16}}),
        (f"SeedLM C8 P3 (4 bpw, {seeds} seeds)", "seedlm", {"codec": "seedlm", "params": {"C": 8, "P": 3, "n_seeds": seeds, "chunk": 64, "device": device}}),
        (f"SeedLM C12 P4 (3 bpw, {seeds} seeds)", "seedlm", {"codec": "seedlm", "params": {"C": 12, "P": 4, "n_seeds": seeds, "chunk": 64, "device": device}}),
        ("auto (default candidates, 4.5 bpw model-wide)", "auto", {"codec": "auto"}),
    ]


def linear_bpw(folder: Path) -> float:
    tensors = json.loads((folder / "compression.json").read_text())["tensors"]
    lin = [e for n, e in tensors.items() if n.endswith("_proj.weight")]
    return sum(e["bits"] for e in lin) / sum(e["shape"][0] * e["shape"][1] for e in lin)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def line(r: dict) -> str:  # SeedLM runs with different seed counts are different curves
        return f"seedlm, {r['rule']['params']['n_seeds']} seeds" if r["family"] == "seedlm" else r["family"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted({line(r) for r in results["rows"]}):
        rows = sorted((r for r in results["rows"] if line(r) == name), key=lambda r: r["linear_bpw"])
        ax.plot([r["linear_bpw"] for r in rows], [r["perplexity"] for r in rows], marker="o", label=name)
    ax.axhline(results["float"]["perplexity"], color="k", ls="--", lw=1, label="float32")
    ax.set_xlabel("bits per weight (linear projections)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M-Instruct: rate-distortion per codec")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None, help="store folder to reuse (the imported model is kept there)")
    ap.add_argument("--seedlm-seeds", type=int, default=65535, help="seeds SeedLM searches (65535: all, the paper's)")
    ap.add_argument("--seedlm-device", default="cpu", help="where SeedLM's seed search runs: cpu, cuda, auto")
    ap.add_argument("--only", action="append", default=[], help="a codec family or row label to run (repeatable; default: all)")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    store = args.store or str(OUT.parent / ".bench-store")
    common = [f"store.url={store}/store", f"store.cache_dir={store}/cache", f"work_dir={store}/work",
              "cognate.enabled=false", "evomerge.enabled=false", "compression.enabled=true", "compression.gates={}"]
    s = load_settings(overrides=[*common, *args.overrides])
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    float_metrics = ctx.store.manifest(base).metrics
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "compression.json"
    results = {"model": s.model.source, "float": {m: float_metrics[m] for m in METRICS},
               "float_bytes": sum(f.stat().st_size for f in ctx.store.get(base).glob("*.safetensors")),
               "eval": s.eval.model_dump(), "rows": []}
    only = set(args.only)
    if only and path.is_file():  # a partial run adds to (or replaces) rows of the last full run
        previous = json.loads(path.read_text())
        if previous.get("float") == results["float"]:
            results["rows"] = previous["rows"]
    for label, family, rule in variants(args.seedlm_seeds, args.seedlm_device):
        if only and family not in only and label not in only:
            continue
        rules = [{"pattern": "*_proj.weight", **rule},
                 {"pattern": "*embed_tokens.weight", "codec": "rtn", "params": {"bits": 8, "group": 64}},
                 {"pattern": "*", "codec": "keep"}]
        sv = load_settings(overrides=[*common, *args.overrides, f"compression.rules={yaml.safe_dump(rules, default_flow_style=True).strip()}"])
        vctx = make_context(sv)
        t0 = time.time()
        r = run_stage_on("compression", [base], vctx)
        (key,) = r.outputs
        info, metrics = r.info[key], r.metrics[key]
        folder = vctx.store.get(key)
        row = {"label": label, "family": family, "rule": rule, "key": key,
               "linear_bpw": linear_bpw(folder), "model_bpw": info["bits_per_weight"],
               "payload_bytes": info["payload_bytes"], **{m: metrics[m] for m in METRICS},
               "perplexity_ratio": metrics["perplexity"] / float_metrics["perplexity"],
               "encode_s": sum(info["encode_seconds"].values()), "decode_s": info["decode_seconds"],
               "stage_wall_s": time.time() - t0, "reused": r.reused}
        results["rows"] = [x for x in results["rows"] if x["label"] != label] + [row]
        path.write_text(json.dumps(results, indent=1))
        plot(results, OUT / "compression_rd.png")
        print(f"{label:<34} {row['linear_bpw']:6.3f} bpw (model {row['model_bpw']:.3f})  ppl {row['perplexity']:9.2f} "
              f"(x{row['perplexity_ratio']:.2f})  arith {row['arithmetic']:.3f} recall {row['recall']:.3f} "
              f"instr {row['instruction']:.3f}  encode {row['encode_s']:.0f}s decode {row['decode_s']:.1f}s", flush=True)
    print(f"float: ppl {results['float']['perplexity']:.2f}; results in {path}")


if __name__ == "__main__":
    main()
