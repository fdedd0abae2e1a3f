"""Benchmark: final compression of the default model (SmolLM2-135M-Instruct), codec by codec.

Side by side, in one run: every linear projection (`*_proj.weight`, 106M of the model's 135M weights)
coded by one codec at its standard settings -- SeedLM 4 and 3 bpw, VPTQ ~2 and ~3 bpw with and without
end-to-end fine-tuning of its codebooks, Hyper-Compression (the paper's default and two smaller
codebooks) -- against the baselines a user would pick: RTN symmetric and asymmetric per group, scalar GPTQ,
GGUF's Q4_0 / Q5_0 / Q8_0 blocks -- with the embedding (tied head) as RTN 8-bit/64 and norms float16 in
every variant; and the stage's default (`auto` candidates, `target_bpw: auto`: the smallest plan whose
gates pass on validation). Each row: bits per weight over the coded linears and model-wide (every tensor
counted, payload size on disk checked), perplexity and task accuracies of the model rebuilt from the
artifact (held-out test split, 128 examples per task), encode and decode time. `dominance` compares
every row of ours with every baseline of equal or more bits.

Caveat: the model ships as GGUF Q4_1, so its "float" weights already lie on a Q4_1 grid of 32-weight
blocks: asymmetric 4-bit RTN with groups of 32 (= Q4_1) would be lossless by construction; the rows here
use groups of 64, and Q4_1 itself is not a row.
Writes bench/results/compression.json (after every variant) and a rate-distortion plot
bench/results/compression_rd.png (bits per weight vs perplexity, one line per codec).

SeedLM searches all 2^16-1 seeds (the paper's setting; `--seedlm-seeds N` searches the first N only, to
show what the search depth buys; the count is in each row's label).
Usage: python bench/compression.py [--store DIR] [--seedlm-seeds 65535] [--only FAMILY|LABEL ...] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import shutil
import time
from pathlib import Path

import torch
import yaml

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.errors import GateFailed
from agent_forge_core.stages.runner import run_stage_on

OUT = Path(__file__).resolve().parent / "results"
TASKS = ("arithmetic", "recall", "instruction")
METRICS = ("perplexity", "perplexity_ood", *TASKS, *(f"{t}_se" for t in TASKS), *(f"{t}_nll" for t in TASKS))


BASELINES = ("rtn", "rtn-asym", "gptq", "gguf")
NO_FT = ["compression.finetune.enabled=false"]


def variants(seeds: int, device: str = "cpu") -> list[tuple[str, str, dict | None, list[str]]]:
    """(label, family, codec rule for the linears (None: the stage's default rules), extra overrides)."""
    rows = [
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
    ]
    rows = [(label, family, rule, NO_FT) for label, family, rule in rows]
    asym = lambda bits: {"bits": bits, "group": 64, "symmetric": False}  # noqa: E731
    vptq2, vptq3 = {"v": 4, "k": 256}, {"v": 4, "k": 256, "residual_k": 16}
    return [
        *rows,
        ("RTN asym 3b/g64", "rtn-asym", {"codec": "rtn", "params": asym(3)}, NO_FT),
        ("RTN asym 4b/g64", "rtn-asym", {"codec": "rtn", "params": asym(4)}, NO_FT),
        ("GPTQ asym 2b/g64", "gptq", {"codec": "gptq", "params": asym(2)}, NO_FT),
        ("GPTQ asym 3b/g64", "gptq", {"codec": "gptq", "params": asym(3)}, NO_FT),
        ("GPTQ asym 4b/g64", "gptq", {"codec": "gptq", "params": asym(4)}, NO_FT),
        *[(f"GGUF {t}", "gguf", {"codec": "gguf", "params": {"type": t}}, NO_FT) for t in ("Q4_0", "Q5_0", "Q8_0")],
        ("VPTQ v4 k256 (~2 bpw) + fine-tuning", "vptq-ft", {"codec": "vptq", "params": vptq2}, []),
        ("VPTQ v4 k256 + res16 (~3 bpw) + fine-tuning", "vptq-ft", {"codec": "vptq", "params": vptq3}, []),
        ("stage default: auto candidates, target_bpw auto, fine-tuning", "auto", None, []),
    ]


def dominance(rows: list[dict]) -> list[dict]:
    """The issue's goal, per baseline: is it beaten by a plan of ours at equal or fewer model-wide bits
    (lower perplexity, and no task accuracy worse beyond the noise of the difference, 2 standard errors)?"""
    from agent_forge_core.evals.suite import difference_noise

    rows = [r for r in rows if "perplexity" in r]
    ours = [r for r in rows if r["family"] not in BASELINES]
    out = []
    for b in (r for r in rows if r["family"] in BASELINES):
        cheaper = [o for o in ours if o["model_bpw"] <= b["model_bpw"] + 1e-9]
        beats = [o["label"] for o in cheaper if o["perplexity"] < b["perplexity"] and not any(
            b[t] - o[t] > difference_noise(b[f"{t}_se"], o[f"{t}_se"]) for t in TASKS)]
        out.append({"baseline": b["label"], "model_bpw": b["model_bpw"], "beaten_by": beats,
                    "not_beaten_by": [o["label"] for o in cheaper if o["label"] not in beats]})
    return out


def same_base(a: dict, b: dict) -> bool:
    """Whether two result tables measured the same base model. The float metrics are compared to 0.1%: the
    thread count changes their last digits (summation order), so exact equality dropped a whole table once."""
    return a.get("model") == b.get("model") and all(
        abs(a["float"][m] - b["float"][m]) <= 1e-3 * max(abs(b["float"][m]), 1e-6) for m in METRICS)


def check_table(path: Path, results: dict) -> None:
    """A partial run refuses, before any work, to add to a table of another base model (nothing is dropped)."""
    if path.is_file() and not same_base(json.loads(path.read_text()), results):
        raise SystemExit(f"{path} holds rows of another base model (or another eval); move it away, or run "
                         "every row (no --only) to build a new table")


def save_row(path: Path, results: dict, row: dict, partial: bool) -> dict:
    """Adds `row` (replacing its label's) to `results` and writes the JSON. A partial run adds to the table
    as it is on disk now (same base model: `check_table`), under a lock, so partial runs in parallel
    processes share one table; a full run builds its own."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = results["rows"]
        if partial and path.is_file():
            check_table(path, results)
            rows = json.loads(path.read_text())["rows"]
        results = {**results, "rows": [x for x in rows if x["label"] != row["label"]] + [row]}
        results["dominance"] = dominance(results["rows"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(path)
    return results


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

    def style(name: str) -> dict:  # baselines dashed
        return {"ls": "--"} if name in BASELINES else {}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    measured = [r for r in results["rows"] if "perplexity" in r]
    for name in sorted({line(r) for r in measured}):
        rows = sorted((r for r in measured if line(r) == name), key=lambda r: r["model_bpw"])
        ax.plot([r["model_bpw"] for r in rows], [r["perplexity"] for r in rows], marker="o", label=name, **style(name))
    ax.axhline(results["float"]["perplexity"], color="k", ls="--", lw=1, label="float32")
    ax.set_xlabel("bits per weight (model-wide, every tensor counted)")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M-Instruct: rate-distortion per codec")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    """The README table: one row per measured variant, accuracies ± one standard error."""
    f = results["float"]
    acc = lambda r, t: f"{r[t]:.3f} ± {r[f'{t}_se']:.3f}"  # noqa: E731
    lines = ["| plan (linears) | bpw linears | bpw model | payload MB | perplexity (× float) | ood perplexity | "
             "arithmetic | recall | instruction | encode s | fine-tuning KL |", "|---|" + "---|" * 10,
             f"| float32 | 32 | 32 | {results['float_bytes'] / 1e6:.1f} | {f['perplexity']:.2f} | "
             f"{f['perplexity_ood']:.2f} | {acc(f, 'arithmetic')} | {acc(f, 'recall')} | {acc(f, 'instruction')} | | |"]
    for r in sorted((r for r in results["rows"] if "perplexity" in r), key=lambda r: r["model_bpw"]):
        ft = r.get("finetune")
        lines.append(
            f"| {r['label']} | {r['linear_bpw']:.2f} | {r['model_bpw']:.2f} | {r['payload_bytes'] / 1e6:.1f} | "
            f"{r['perplexity']:.4g} (×{r['perplexity_ratio']:.3g}) | {r['perplexity_ood']:.4g} | {acc(r, 'arithmetic')} | "
            f"{acc(r, 'recall')} | {acc(r, 'instruction')} | {r['encode_s']:.0f} | "
            + (f"{ft['loss_before']:.3f} → {ft['loss_after']:.3f}" if ft else "") + " |")
    lines += ["", "| baseline | bpw model | beaten by (ours at ≤ its bpw: lower perplexity, no accuracy worse) |",
              "|---|---|---|"]
    for d in sorted(dominance(results["rows"]), key=lambda d: d["model_bpw"]):
        lines.append(f"| {d['baseline']} | {d['model_bpw']:.2f} | {', '.join(d['beaten_by']) or 'none'} |")
    for r in (r for r in results["rows"] if "gate_failed" in r):
        lines.append(f"\n{r['label']}: gates failed: {r['gate_failed']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None, help="store folder to reuse (the imported model is kept there)")
    ap.add_argument("--seedlm-seeds", type=int, default=65535, help="seeds SeedLM searches (65535: all, the paper's)")
    ap.add_argument("--seedlm-device", default="cpu", help="where SeedLM's seed search runs: cpu, cuda, auto")
    ap.add_argument("--only", action="append", default=[], help="a codec family or row label to run (repeatable, run in this order; default: all)")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--table", action="store_true", help="print the README table from the results JSON and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads((OUT / "compression.json").read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    store = args.store or str(OUT.parent / ".bench-store")
    common = [f"store.url={store}/store", f"store.cache_dir={store}/cache", f"work_dir={store}/work",
              "cognate.enabled=false", "evomerge.enabled=false", "compression.enabled=true", "eval.n_examples=128"]
    fixed = ["compression.gates={}", "compression.target_bpw=null"]  # a codec row is measured, not gated
    s = load_settings(overrides=[*common, *args.overrides])
    ctx = make_context(s)
    (base,) = run_stage_on("import", [], ctx).outputs
    float_metrics = ctx.store.manifest(base).metrics
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "compression.json"
    results = {"model": s.model.source, "float": {m: float_metrics[m] for m in METRICS},
               "float_bytes": sum(f.stat().st_size for f in ctx.store.get(base).glob("*.safetensors")),
               "eval": s.eval.model_dump(), "rows": []}
    if args.only:
        check_table(path, results)
    chosen = variants(args.seedlm_seeds, args.seedlm_device)
    if args.only:  # in the order --only names them
        chosen = list({v[0]: v for o in args.only for v in chosen if o in v[:2]}.values())
    for label, family, rule, extra in chosen:
        plan = []
        if rule is not None:
            rules = [{"pattern": "*_proj.weight", **rule},
                     {"pattern": "*embed_tokens.weight", "codec": "rtn", "params": {"bits": 8, "group": 64}},
                     {"pattern": "*", "codec": "keep"}]
            plan = [*fixed, f"compression.rules={yaml.safe_dump(rules, default_flow_style=True).strip()}"]
        sv = load_settings(overrides=[*common, *plan, *extra, *args.overrides])
        vctx = make_context(sv)
        t0 = time.time()
        try:
            r = run_stage_on("compression", [base], vctx)
        except GateFailed as e:  # the stage default gates its output: a failure is a result too
            failed = {"label": label, "family": family, "rule": rule, "gate_failed": str(e),
                      "stage_wall_s": time.time() - t0}
            results = save_row(path, results, failed, bool(args.only))
            print(f"{label}: {e}", flush=True)
            continue
        (key,) = r.outputs
        info, metrics = r.info[key], r.metrics[key]
        folder = vctx.store.get(key)
        row = {"label": label, "family": family, "rule": rule, "key": key,
               "linear_bpw": linear_bpw(folder), "model_bpw": info["bits_per_weight"],
               "payload_bytes": info["payload_bytes"], **{m: metrics[m] for m in METRICS},
               "perplexity_ratio": metrics["perplexity"] / float_metrics["perplexity"],
               "encode_s": sum(info["encode_seconds"].values()), "decode_s": info["decode_seconds"],
               "stage_wall_s": time.time() - t0, "threads": torch.get_num_threads(), "reused": r.reused,
               "finetune": info.get("finetune"),
               "curve": info.get("curve"), "auto_choices": info.get("auto_choices")}
        if info.get("curve"):
            shutil.copy(folder / "rate_quality.png", OUT / "compression_target_auto.png")
        results = save_row(path, results, row, bool(args.only))
        plot(results, OUT / "compression_rd.png")
        print(f"{label:<34} {row['linear_bpw']:6.3f} bpw (model {row['model_bpw']:.3f})  ppl {row['perplexity']:9.2f} "
              f"(x{row['perplexity_ratio']:.2f})  arith {row['arithmetic']:.3f} recall {row['recall']:.3f} "
              f"instr {row['instruction']:.3f}  encode {row['encode_s']:.0f}s decode {row['decode_s']:.1f}s", flush=True)
    print(f"float: ppl {results['float']['perplexity']:.2f}; results in {path}")


if __name__ == "__main__":
    main()
