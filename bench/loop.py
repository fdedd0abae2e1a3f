"""Benchmark: the 10-phase loop (issue 15) on the default model, each arm against a matched-compute control.

Inputs: a float model, either the imported SmolLM2-135M-Instruct (`--float-input import`) or the EvoMerge winner
of its cognates (`--float-input evomerge`: import, cognate and evomerge with their quick profiles, evaluated at
`--chain-examples` per task, as `make run` forges them), and the BitNet b1.58 checkpoint of the import (the bitnet
stage's quick profile; since that profile distils, the committed BitNet results, measured on the plain-QAT input,
reproduce with `--set bitnet.distill.kl_weight=0 --set bitnet.lr=2e-4`). Arms, all with the loop's quick
profile (same phases, steps, batches and seeds):
- float: loop (every mechanism on) vs control (every mechanism off: plain training on the mixed train splits in
  place of Grokfast, curriculum, noise, dreams, reflection, self-model and Polyak; calibration still measures);
- bitnet, a 2×2 of mechanisms × distillation (`--arms`, any subset): loop and control with distillation (the
  mechanisms' effect), control without distillation (plain QAT continuation: distillation's effect, control vs
  control) and loop without distillation (`loop_no_distill`: both effects again, in the other row and column).
Per phase: steps, wall time, training loss, the mechanism's signal, validation metrics and score, and the delta
against the control arm at the same phase. Per arm: the test split with `--test-examples` per task (the runner's
evaluation of the output). Writes bench/results/loop.json and the loop arms' per-phase plots.

Usage: python bench/loop.py [--inputs float,bitnet] [--float-input import|evomerge] [--float-arms loop,control] [--test-examples 128] [--out loop.json] [--set section.key=value ...]
On 2 cores, two single-threaded runs side by side finish sooner than one two-threaded run:
    OMP_NUM_THREADS=1 python bench/loop.py --inputs float --out loop_float.json &
    OMP_NUM_THREADS=1 python bench/loop.py --inputs bitnet --out loop_bitnet.json; wait
    python bench/loop.py --merge loop_float.json loop_bitnet.json
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.suite import difference_noise
from agent_forge_core.loop.settings import default_phases
from agent_forge_core.loop.stage import HISTORY_FILE, PLOT_FILE
from agent_forge_core.stages.runner import run_stage_on

RESULTS = Path(__file__).parent / "results"
METRICS = ("perplexity", "perplexity_ood", "arithmetic", "recall", "instruction")
MECHANISMS_OFF = {"grokfast": False, "curriculum": False, "noise": "off", "self_model": False, "polyak": False}


def control_phases() -> list[dict]:
    """The default phases with every mechanism off; dream and reflection become plain training for as many steps."""
    out = []
    for p in default_phases():
        row = {**p.identity(), **MECHANISMS_OFF}
        if p.kind in ("dream", "reflect"):
            row["kind"] = "train"
        out.append(row)
    return out


def evomerge_winner(common: list[str], examples: int | None) -> tuple[str, dict]:
    """The float input `make run` forges: import -> cognate -> evomerge, each at its quick profile (its evaluations
    at `examples` per task; stored in the bench's store beside the import at the test size, under other keys)."""
    over = [*common, "cognate.enabled=true", "evomerge.enabled=true"]
    over = [o for o in over if not o.startswith("eval.n_examples=")]
    if examples:
        over.append(f"eval.n_examples={examples}")
    ctx = make_context(load_settings(overrides=over))
    t0 = time.time()
    (imp,) = run_stage_on("import", [], ctx).outputs
    cog = run_stage_on("cognate", [imp], ctx)
    t1 = time.time()
    evo = run_stage_on("evomerge", cog.outputs, ctx)
    (winner,) = evo.outputs
    return winner, {"import": imp, "cognates": cog.outputs, "winner": winner, "n_examples": ctx.settings.eval.n_examples,
                    "winner_test": evo.metrics[winner], "cognate_s": t1 - t0, "evomerge_s": time.time() - t1,
                    "recipe": evo.info[winner].get("recipe")}


def arm(name: str, parent: str, common: list[str], extra: list[str]) -> dict:
    s = load_settings(overrides=[*common, *extra])
    ctx = make_context(s)
    t0 = time.time()
    res = run_stage_on("loop", [parent], ctx)
    (key,) = res.outputs
    info = res.info[key]
    history = json.loads((ctx.store.get(key) / HISTORY_FILE).read_text())
    shutil.copy(ctx.store.get(key) / PLOT_FILE, RESULTS / f"loop_{name}.png")
    return {"key": key, "test": {m: res.metrics[key].get(m) for m in res.metrics[key]}, "phases": info["phases"],
            "rollbacks": info["rollbacks"], "loop_wall_s": info["wall_s"], "wall_s_incl_test_eval": time.time() - t0,
            "teacher": info.get("teacher"), "history": [_lean(r) for r in history]}


def _lean(r: dict) -> dict:
    """A history row without its per-step records (kept: the phase's summary, signals and validation)."""
    return {k: v for k, v in r.items() if k != "steps"}


def deltas(a: dict, control: dict) -> list[dict]:
    out = []
    for ra, rc in zip(a["history"], control["history"]):
        out.append({"phase": ra["name"], "score": ra["score"] - rc["score"],
                    **{m: ra["metrics"][m] - rc["metrics"][m] for m in METRICS if m in ra["metrics"]}})
    return out


def test_deltas(a: dict, b: dict) -> dict:
    """Test-split differences a − b: accuracies with two standard errors of the difference (below it: noise),
    perplexities as a ratio."""
    out = {}
    for m in METRICS:
        if m.startswith("perplexity"):
            out[m] = {"ratio": a[m] / b[m]}
        else:
            d, noise = a[m] - b[m], difference_noise(a[f"{m}_se"], b[f"{m}_se"])
            out[m] = {"delta": d, "noise_2se": noise, "verdict": "noise" if abs(d) < noise else "significant"}
    return out


# name: (arm, the arm it is measured against)
PAIRS = {"loop_vs_control": ("loop", "control"), "distill_vs_plain": ("control", "control_no_distill"),
         "loop_distill_vs_plain": ("loop", "loop_no_distill"), "loop_vs_control_plain": ("loop_no_distill",
                                                                                           "control_no_distill")}


def add_phase_deltas(r: dict) -> None:
    for name, (a, b) in PAIRS.items():
        if a in r and b in r:
            r[f"delta_{name}"] = deltas(r[a], r[b])


def add_test_deltas(out: dict) -> None:
    for r in out["inputs"].values():
        r["test_deltas"] = {name: test_deltas(r[a]["test"], r[b]["test"]) for name, (a, b) in PAIRS.items()
                            if a in r and b in r}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", default="float,bitnet")
    ap.add_argument("--test-examples", type=int, default=128)
    ap.add_argument("--float-input", choices=("import", "evomerge"), default="import")
    ap.add_argument("--chain-examples", type=int, default=None,
                    help="eval examples per task of the cognate/evomerge chain (default: the eval section's)")
    ap.add_argument("--arms", default="loop,control,control_no_distill", help="the bitnet input's arms, in order")
    ap.add_argument("--float-arms", default="loop,control", help="the float input's arms, in order")
    ap.add_argument("--root", default=".forge/bench-loop", help="store and work dir (kept: a rerun reuses outputs)")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default="loop.json", help="results file under bench/results")
    ap.add_argument("--merge", nargs="+", help="only merge these results files (one input each, e.g. two "
                    "single-threaded runs side by side) into --out and print the report")
    args = ap.parse_args()
    out_file = RESULTS / args.out
    if args.merge:
        parts = [json.loads((RESULTS / f).read_text()) for f in args.merge]
        out = {**parts[0], "inputs": {}}
        for part in parts:  # the same input from several runs (arms run side by side): its arms are pooled
            for k, v in part["inputs"].items():
                out["inputs"].setdefault(k, {}).update(v)
        for b in out["inputs"].values():
            add_phase_deltas(b)
        add_test_deltas(out)
        _write(out, out_file)
        _report(out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    RESULTS.mkdir(exist_ok=True)
    root = Path(args.root).resolve()
    # gates off: the benchmark reports the numbers whatever they are
    common = [f"store.url={root}/store", f"work_dir={root}/work", f"store.cache_dir={root}/cache",
              "cognate.enabled=false", "evomerge.enabled=false", f"eval.n_examples={args.test_examples}",
              "loop.enabled=true", "loop.gates={}", "bitnet.gates={}", "bitnet.measure_ptq=false", *args.overrides]
    ctx = make_context(load_settings(overrides=common))
    t0 = time.time()
    base = run_stage_on("import", [], ctx)
    (base_key,) = base.outputs
    out: dict = {"test_examples": args.test_examples, "inputs": {}}
    control = [f"loop.phases={json.dumps(control_phases())}"]
    loop_no_distill = [f"loop.phases={json.dumps([{**p.identity(), 'distill': False} for p in default_phases()])}"]
    control_no_distill = [f"loop.phases={json.dumps([{**p, 'distill': False} for p in control_phases()])}"]
    if "float" in args.inputs:
        f = {"input_test": base.metrics[base_key], "import_s": time.time() - t0}
        parent, label = base_key, "float"
        if args.float_input == "evomerge":
            parent, f["chain"] = evomerge_winner(common, args.chain_examples)
            f["input_test"], label = f["chain"]["winner_test"], "float_evomerge"
        f["input"] = args.float_input
        float_arms = {"loop": (label, []), "control": (f"{label}_control", control)}
        for name in args.float_arms.split(","):
            plot_label, extra = float_arms[name]
            f[name] = arm(plot_label, parent, common, extra)
        add_phase_deltas(f)
        out["inputs"][label] = f
        _write(out, out_file)
    if "bitnet" in args.inputs:
        t1 = time.time()
        bn = run_stage_on("bitnet", [base_key], make_context(load_settings(overrides=[*common, "bitnet.enabled=true"])))
        (bkey,) = bn.outputs
        b = {"input_test": bn.metrics[bkey], "float_test": base.metrics[base_key], "bitnet_stage_s": time.time() - t1}
        arms = {"loop": ("bitnet", []), "loop_no_distill": ("bitnet_nodistill", loop_no_distill),
                "control": ("bitnet_control", control),
                "control_no_distill": ("bitnet_control_nodistill", control_no_distill)}
        for name in args.arms.split(","):  # an arm another process has stored already is reused from the store
            label, extra = arms[name]
            b[name] = arm(label, bkey, common, ["bitnet.enabled=true", *extra])
        add_phase_deltas(b)
        out["inputs"]["bitnet"] = b
    add_test_deltas(out)
    _write(out, out_file)
    _report(out)


def _write(out: dict, path: Path) -> None:
    path.write_text(json.dumps(out, indent=1, default=str))


def _report(out: dict) -> None:
    for name, r in out["inputs"].items():
        print(f"\n== {name} input ==")
        arms = [a for a in ("loop", "loop_no_distill", "control", "control_no_distill") if a in r]
        print("test (n=%d)  " % out["test_examples"] + "  ".join(f"{m:>12}" for m in METRICS))
        rows = [("input", r["input_test"])] + ([("float", r["float_test"])] if "float_test" in r else []) + \
            [(a, r[a]["test"]) for a in arms]
        for label, m in rows:
            print(f"{label:<20}" + "  ".join(f"{m.get(k, float('nan')):>12.4g}" for k in METRICS))
        for a in arms:
            print(f"{a}: loop {r[a]['loop_wall_s']:.0f} s, rollbacks {r[a]['rollbacks']}")
        for name, (a, b) in PAIRS.items():
            if f"delta_{name}" in r:
                print(f"phase deltas, {a} - {b} (validation score):",
                      ", ".join(f"{d['phase']} {d['score']:+.3f}" for d in r[f"delta_{name}"]))
        for name, d in r.get("test_deltas", {}).items():
            print(f"test, {name}: " + ", ".join(
                f"{m} x{v['ratio']:.3f}" if "ratio" in v else f"{m} {v['delta']:+.3f} (2se {v['noise_2se']:.3f}: "
                f"{v['verdict']})" for m, v in d.items()))


if __name__ == "__main__":
    main()
