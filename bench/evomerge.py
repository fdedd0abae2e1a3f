"""Benchmark: the evolved merge versus its parts, and merge throughput versus I/O and mergekit.

Part 1 (quality, n = eval.n_examples per task): the combined score (the search's fitness formula,
`evomerge.fitness`) with its standard error, of the base model, each cognate alone, a uniform linear merge
of the cognates, and the EvoMerge winner (searched on the validation split only), on the test split (test
phrasing families) and, but the base, on the validation split (validation families, `--validation-n`
examples per task); the generalization gap is their difference.
Part 2 (throughput, float32): seconds and GB/s read for our streaming merge, for a plain read of every
input file plus a write of one output (the I/O floor), and for mergekit 0.1.5 on the same YAML, each in a
fresh process with its peak RSS; methods linear, ties, dare_ties, slerp; the relative difference to
mergekit's tensors is also reported (DARE's random drops differ by design). Inputs: the stored cognates,
or (`--throughput-inputs synthetic`) the default model and three noisy copies. Outputs go to tmpfs
(`--out-dir`): this machine's disk writes at ~300 MB/s once dirty pages pile up, which would time the disk.

The store defaults to .forge/bench-store and is kept: import/cognate/evomerge checkpoints are reused by
key, so a rerun only recomputes what changed. Writes bench/results/evomerge.json and
bench/results/evomerge_fitness.png.
Usage: python bench/evomerge.py [--store DIR] [--skip-quality] [--skip-throughput] [--validation-n N]
       [--throughput-inputs cognates|synthetic] [--out-dir DIR] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
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


def io_floor(folders: list[Path], out: Path) -> None:
    """The floor of any merge: read every input file's bytes and write one output's worth, with plain file
    I/O through one 64 MiB buffer. (safetensors' `load_file` maps files without reading them, so a floor
    built on it, as this benchmark had before, counted only the bytes of the one model it saved.)"""
    buf = memoryview(bytearray(64 << 20))
    files = [f / "model.safetensors" for f in folders]
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    left = files[0].stat().st_size
    out.mkdir()
    with open(out / "model.safetensors", "wb", buffering=0) as fh:
        while left > 0:
            left -= fh.write(buf[: min(left, len(buf))])


def contender(who: str, rec: dict, out: Path) -> None:
    """Run one contender in this (fresh) process; prints its seconds and peak RSS as JSON. The peak is the
    process's VmHWM (getrusage's ru_maxrss would include the parent's RSS at fork time)."""
    rss0 = _status_kb("VmRSS") * 1024
    if who == "mergekit":
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge as mk_run

        config = MergeConfiguration.model_validate(yaml.safe_load(parse_recipe(rec).to_yaml()))
        t0 = time.perf_counter()
        mk_run(config, str(out), options=MergeOptions(copy_tokenizer=True, device="cpu", quiet=True))
    elif who == "ours":
        t0 = time.perf_counter()
        run_merge(parse_recipe(rec), out)
    else:
        t0 = time.perf_counter()
        io_floor([Path(r) for r in parse_recipe(rec).referenced_models()], out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss": _status_kb("VmHWM") * 1024, "rss_at_start": rss0}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def synthetic_inputs(root: Path) -> tuple[Path, list[Path]]:
    """The default model and three copies with Gaussian noise at 1% of each tensor's std (a fine-tune's
    scale): merge time does not depend on which fine-tunes they are, and these take seconds to build where
    the cognate stage takes half an hour. Reused if present."""
    from agent_forge_core.aliases import ensure_alias

    base = ensure_alias("smollm2-135m-instruct")
    cogs = [root / f"noisy-{i}" for i in range(3)]
    state = None
    for i, d in enumerate(cogs):
        if (d / "model.safetensors").is_file():
            continue
        state = state or load_file(str(base / "model.safetensors"))
        g = torch.Generator().manual_seed(i)
        tmp = root / f".noisy-{i}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp)
        save_file({k: v + 0.01 * v.float().std() * torch.randn(v.shape, generator=g) for k, v in state.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tmp.rename(d)
    return base, cogs


def throughput(base: Path, cogs: list[Path], out_root: Path, reps: int = 3) -> dict:
    """Each contender in a fresh process (so peak RSS is its own), round-robin `reps` times, fastest run
    counted. Dirty pages of the previous output are flushed first so no contender's writes are throttled
    by another's; outputs go to `out_root` (tmpfs by default: the merge, not this machine's disk)."""
    out: dict = {}
    procs = {"io_floor": "floor", "ours": "ours", "mergekit": "mergekit"}
    for name, rec in _recipes(str(base), [str(c) for c in cogs]).items():
        rec = {**rec, "dtype": "float32"}
        runs: dict[str, list[dict]] = {k: [] for k in procs}
        for _ in range(reps):
            for label, who in procs.items():
                dst = out_root / f"{label}-{name}"
                shutil.rmtree(dst, ignore_errors=True)
                os.sync()
                res = subprocess.run([sys.executable, __file__, "--contender", who, "--recipe", json.dumps(rec),
                                      "--out", str(dst)], capture_output=True, text=True, check=True)
                runs[label].append(json.loads(res.stdout.strip().splitlines()[-1]))
        ours, mk = LazyCheckpoint(out_root / f"ours-{name}"), LazyCheckpoint(out_root / f"mergekit-{name}")
        worst = max(((ours.get(n).double() - mk.get(n).double()).norm() / mk.get(n).double().norm().clamp(min=1e-12)).item()
                    for n in ours.names())
        for label in procs:
            shutil.rmtree(out_root / f"{label}-{name}", ignore_errors=True)
        refs = parse_recipe(rec).referenced_models()
        gb = sum((Path(r) / "model.safetensors").stat().st_size for r in refs) / 1e9
        best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
        rss = {k: max(r["peak_rss"] for r in v) / 1e6 for k, v in runs.items()}
        out[name] = {"gb_read": gb, "ours_s": best["ours"], "io_floor_s": best["io_floor"], "mergekit_s": best["mergekit"],
                     "ours_gbps": gb / best["ours"], "io_floor_gbps": gb / best["io_floor"],
                     "mergekit_gbps": gb / best["mergekit"], "ours_vs_mergekit_speedup": best["mergekit"] / best["ours"],
                     "ours_share_of_io_floor_throughput": best["io_floor"] / best["ours"],
                     "peak_rss_mb": rss, "inputs_mb": gb * 1e3, "process_rss_at_start_mb":
                         min(r["rss_at_start"] for v in runs.values() for r in v) / 1e6,
                     "all_seconds": {k: [r["seconds"] for r in v] for k, v in runs.items()},
                     "max_rel_diff_vs_mergekit": worst}
    print(f"\n{'method':<11}{'GB read':>9}{'ours GB/s':>11}{'I/O GB/s':>10}{'mk GB/s':>9}{'ours/mk':>9}{'ours/IO':>9}"
          f"{'RSS ours':>10}{'RSS mk':>8}{'inputs':>8}{'max rel diff':>14}")
    for n, r in out.items():
        print(f"{n:<11}{r['gb_read']:>9.2f}{r['ours_gbps']:>11.3f}{r['io_floor_gbps']:>10.3f}{r['mergekit_gbps']:>9.3f}"
              f"{r['ours_vs_mergekit_speedup']:>8.2f}x{r['ours_share_of_io_floor_throughput']:>8.0%}"
              f"{r['peak_rss_mb']['ours']:>8.0f}MB{r['peak_rss_mb']['mergekit']:>6.0f}MB{r['inputs_mb']:>6.0f}MB"
              f"{r['max_rel_diff_vs_mergekit']:>14.2e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=".forge/bench-store")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--validation-n", type=int, default=None, help="examples per task on the validation families "
                    "(default: eval.n_examples)")
    ap.add_argument("--throughput-inputs", choices=["cognates", "synthetic"], default="cognates",
                    help="merge the stored cognates, or the default model and three noisy copies (no training)")
    ap.add_argument("--out-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                    help="where throughput outputs are written (default: tmpfs, so the disk is not measured)")
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contender:
        return contender(args.contender, json.loads(args.recipe), Path(args.out))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s = load_settings(overrides=[f"store.url={args.store}/store", f"work_dir={args.store}/work", "evomerge.enabled=true",
                                 *args.overrides])
    ctx = make_context(s)
    path = RESULTS / "evomerge.json"
    # a part that is skipped keeps its numbers from the previous run
    result = json.loads(path.read_text()) if path.is_file() else {}
    result |= {"model": s.model.source, "profile": s.profile, "evomerge_config": s.evomerge.model_dump(mode="json"),
               "eval": s.eval.model_dump(mode="json")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    imp = cog = None
    if not args.skip_quality or args.throughput_inputs == "cognates":
        t0 = time.time()
        imp = run_stage_on("import", [], ctx)
        cog = run_stage_on("cognate", imp.outputs, ctx)
        t1 = time.time()
    if not args.skip_quality:
        evo = run_stage_on("evomerge", cog.outputs, ctx)
        t2 = time.time()
        result["quality"] = quality(ctx, imp, cog, evo, args.validation_n)
        result["validation_n"] = args.validation_n or s.eval.n_examples
        result["wall_s"] = {"import+cognate (reused if stored)": t1 - t0, "evomerge (search + winner eval)": t2 - t1}
        shutil.copyfile(ctx.store.get(evo.outputs[0]) / "fitness.png", RESULTS / "evomerge_fitness.png")
    if not args.skip_throughput:
        if args.throughput_inputs == "cognates":
            base, cogs = ctx.store.get(imp.outputs[0]), [ctx.store.get(k) for k in cog.outputs]
        else:
            base, cogs = synthetic_inputs(Path(s.work_dir) / "merge-inputs")
        with tempfile.TemporaryDirectory(dir=args.out_dir or s.work_dir) as tmp:
            result["throughput"] = {"inputs": args.throughput_inputs, "output_dir": args.out_dir or str(s.work_dir),
                                    "methods": throughput(base, cogs, Path(tmp))}
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
