"""Benchmark: the evolved merge versus its parts, and merge throughput versus I/O and mergekit.

Part 1 (quality, n = eval.n_examples per task): the combined score (the search's fitness formula,
`evomerge.fitness`) with its standard error, of the base model, each cognate alone, a uniform linear merge
of the cognates, and the EvoMerge winner (searched on the validation split only), on the test split (test
phrasing families) and, but the base, on the validation split (validation families, `--validation-n`
examples per task); the generalization gap is their difference.
Part 2 (throughput, the default model's cognates, float32): GB/s read for our streaming merge, for a plain
safetensors read of the inputs plus write of one output (the I/O floor), and for mergekit 0.1.5 on the
same YAML; methods linear, ties, dare_ties, slerp; the relative difference to mergekit's tensors is also
reported (DARE's random drops differ by design).

The store defaults to .forge/bench-store and is kept: import/cognate/evomerge checkpoints are reused by
key, so a rerun only recomputes what changed. Writes bench/results/evomerge.json and
bench/results/evomerge_fitness.png.
Usage: python bench/evomerge.py [--store DIR] [--skip-quality] [--skip-throughput] [--validation-n N] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from agent_forge_core.config import load_settings
from agent_forge_core.context import make_context
from agent_forge_core.evals.suite import evaluate
from agent_forge_core.evomerge.fitness import combined_score, score_se
from agent_forge_core.merge import parse_recipe, run_merge
from agent_forge_core.merge.safetensors_io import LazyCheckpoint
from agent_forge_core.model_io import load_model
from agent_forge_core.stages.runner import run_stage_on

RESULTS = Path("bench/results")


def quality(ctx, imp, cog, evo, validation_n: int | None = None) -> dict:
    """Every model on the test families (what the report shows) and, but the base, on the validation families
    (what the search optimized; `validation_n` examples per task); the generalization gap is validation minus
    test."""
    s = ctx.settings
    w = s.evomerge.fitness
    val_eval = s.eval.model_copy(update={"n_examples": validation_n or s.eval.n_examples})
    rows = [{"model": "base", "key": imp.outputs[0], "test": imp.metrics[imp.outputs[0]]}]
    for k in cog.outputs:
        rows.append({"model": f"cognate:{cog.info[k]['focus']}", "key": k, "test": cog.metrics[k]})
    uniform = parse_recipe({"merge_method": "linear", "models": [{"model": k, "parameters": {"weight": 1.0}} for k in cog.outputs]})
    key = evo.outputs[0]
    rows.append({"model": "uniform linear merge", "key": "-"})
    rows.append({"model": "evomerge winner", "key": key, "test": evo.metrics[key],
                 "recipe": evo.info[key]["recipe"], "search_validation_score": evo.info[key]["validation_score"]})
    with tempfile.TemporaryDirectory(dir=s.work_dir) as tmp:
        run_merge(uniform, Path(tmp) / "m", {k: ctx.store.get(k) for k in cog.outputs})
        for r in rows:
            model, tok = load_model(str(Path(tmp) / "m") if r["key"] == "-" else str(ctx.store.get(r["key"])))
            if "test" not in r:
                r["test"] = evaluate(model, tok, s.eval)
            if r["model"] != "base":
                r["validation"] = evaluate(model, tok, val_eval, split="validation")
            del model
    for r in rows:
        for split in ("test", "validation"):
            if split in r:
                r[f"{split}_score"] = combined_score(r[split], w)
                r[f"{split}_score_se"] = score_se(r[split], w)
        r["gap"] = r["validation_score"] - r["test_score"] if "validation" in r else None
    cols = ["perplexity", "perplexity_ood", "arithmetic", "recall", "instruction"]

    def cell(m, c):
        return f"{m[c]:.3f}±{m[c + '_se']:.3f}" if c + "_se" in m else f"{m[c]:.2f}"

    print(f"\n{'model (test families)':<24}" + "".join(f"{c:>15}" for c in cols) + f"{'score':>16}{'val score':>11}{'gap':>8}")
    for r in rows:
        val = f"{r['validation_score']:>11.3f}{r['gap']:>8.3f}" if r["gap"] is not None else f"{'-':>11}{'-':>8}"
        print(f"{r['model']:<24}" + "".join(f"{cell(r['test'], c):>15}" for c in cols)
              + f"{r['test_score']:>9.3f}±{r['test_score_se']:.3f}" + val)
    win = rows[-1]
    others = rows[1:-1]
    beats = {r["model"]: win["test_score"] > r["test_score"] for r in others}
    beyond = {r["model"]: abs(win["test_score"] - r["test_score"]) > 2 * (win["test_score_se"] ** 2 + r["test_score_se"] ** 2) ** 0.5
              for r in others}
    best_cognate = max((r for r in others if r["model"].startswith("cognate")), key=lambda r: r["test_score"])
    print(f"winner beats (test score): {beats}; beyond noise: {beyond}; best single cognate: {best_cognate['model']}")
    for f in evo.info[key].get("finalists", []):
        print(f"finalist {f['index']}: {f['recipe']['merge_method']}, search score {f['search_fitness']:.4f}, "
              f"full-eval validation score {f['fitness']:.4f}")
    return {"rows": rows, "winner_beats": beats, "winner_beats_beyond_noise": beyond,
            "best_single_cognate": best_cognate["model"], "per_generation": evo.info[key]["per_generation"],
            "candidates": evo.info[key]["candidates"], "finalists": evo.info[key].get("finalists", []),
            "fitness_weights": w}


def _recipes(base: str, cogs: list[str]) -> dict[str, dict]:
    three = [{"model": c, "parameters": {"weight": 0.5, "density": 0.5}} for c in cogs]
    return {
        "linear": {"merge_method": "linear", "models": [{"model": c, "parameters": {"weight": 1.0}} for c in cogs]},
        "ties": {"merge_method": "ties", "base_model": base, "models": three},
        "dare_ties": {"merge_method": "dare_ties", "base_model": base, "models": three},
        "slerp": {"merge_method": "slerp", "base_model": cogs[0], "models": [{"model": cogs[0]}, {"model": cogs[1]}],
                  "parameters": {"t": 0.5}},
    }


def io_floor(folders: list[Path], out: Path) -> float:
    """Seconds to read every input's tensors and write one model's worth: the floor of any merge."""
    t0 = time.perf_counter()
    last = None
    for f in folders:
        last = load_file(str(f / "model.safetensors"))
    save_file(last, str(out))
    return time.perf_counter() - t0


def throughput(ctx, imp, cog) -> dict:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge as mk_run

    base = imp.outputs[0]
    folders = {k: ctx.store.get(k) for k in [base, *cog.outputs]}
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=ctx.settings.work_dir) as tmp:
        tmp = Path(tmp)
        for name, rec in _recipes(base, cog.outputs).items():
            rec = {**rec, "dtype": "float32"}
            refs = parse_recipe(rec).referenced_models()
            # the I/O floor runs first, so every contender finds the inputs in the page cache; each
            # merge runs twice, alternating, and its faster run counts
            floor = io_floor([folders[r] for r in refs], tmp / "floor.safetensors")
            mk_rec = parse_recipe(rec).with_models({k: str(v) for k, v in folders.items()})
            t_ours, t_mk = [], []
            for rep in range(2):
                shutil.rmtree(tmp / f"ours-{name}", ignore_errors=True)
                shutil.rmtree(tmp / f"mk-{name}", ignore_errors=True)
                stats = run_merge(parse_recipe(rec), tmp / f"ours-{name}", folders)
                t_ours.append(stats.seconds)
                t0 = time.perf_counter()
                mk_run(MergeConfiguration.model_validate(yaml.safe_load(mk_rec.to_yaml())), str(tmp / f"mk-{name}"),
                       options=MergeOptions(copy_tokenizer=True, device="cpu", quiet=True))
                t_mk.append(time.perf_counter() - t0)
            t_ours_best, t_mk = min(t_ours), min(t_mk)
            ours, mk = LazyCheckpoint(tmp / f"ours-{name}"), LazyCheckpoint(tmp / f"mk-{name}")
            worst = max(((ours.get(n).double() - mk.get(n).double()).norm() / mk.get(n).double().norm().clamp(min=1e-12)).item()
                        for n in ours.names())
            gb = stats.bytes_read / 1e9
            out[name] = {"gb_read": gb, "ours_s": t_ours_best, "io_floor_s": floor, "mergekit_s": t_mk,
                         "ours_gbps": gb / t_ours_best, "io_floor_gbps": gb / floor, "mergekit_gbps": gb / t_mk,
                         "ours_vs_mergekit_speedup": t_mk / t_ours_best, "ours_vs_io_floor": t_ours_best / floor,
                         "max_rel_diff_vs_mergekit": worst}
            for d in (f"ours-{name}", f"mk-{name}"):
                shutil.rmtree(tmp / d, ignore_errors=True)
    print(f"\n{'method':<11}{'GB read':>9}{'ours GB/s':>11}{'I/O GB/s':>10}{'mergekit GB/s':>15}{'ours/mk speed':>15}{'max rel diff':>14}")
    for n, r in out.items():
        print(f"{n:<11}{r['gb_read']:>9.2f}{r['ours_gbps']:>11.3f}{r['io_floor_gbps']:>10.3f}{r['mergekit_gbps']:>15.3f}"
              f"{r['ours_vs_mergekit_speedup']:>14.2f}x{r['max_rel_diff_vs_mergekit']:>14.2e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=".forge/bench-store")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--validation-n", type=int, default=None, help="examples per task on the validation families "
                    "(default: eval.n_examples)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = load_settings(overrides=[f"store.url={args.store}/store", f"work_dir={args.store}/work", "evomerge.enabled=true",
                                 *args.overrides])
    ctx = make_context(s)
    t0 = time.time()
    imp = run_stage_on("import", [], ctx)
    cog = run_stage_on("cognate", imp.outputs, ctx)
    t1 = time.time()
    path = RESULTS / "evomerge.json"
    # a part that is skipped keeps its numbers from the previous run
    result = json.loads(path.read_text()) if path.is_file() else {}
    result |= {"model": s.model.source, "profile": s.profile, "evomerge_config": s.evomerge.model_dump(mode="json"),
              "eval": s.eval.model_dump(mode="json")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.skip_quality:
        evo = run_stage_on("evomerge", cog.outputs, ctx)
        t2 = time.time()
        result["quality"] = quality(ctx, imp, cog, evo, args.validation_n)
        result["validation_n"] = args.validation_n or s.eval.n_examples
        result["wall_s"] = {"import+cognate (reused if stored)": t1 - t0, "evomerge (search + winner eval)": t2 - t1}
        shutil.copyfile(ctx.store.get(evo.outputs[0]) / "fitness.png", RESULTS / "evomerge_fitness.png")
    if not args.skip_throughput:
        result["throughput"] = throughput(ctx, imp, cog)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
