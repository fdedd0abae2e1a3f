"""GGUF export of the default model, checked against the GGUF it came from and, given a llama.cpp build,
run by llama.cpp itself.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF written by llama.cpp's converter; we import it to float and
export it again. Known answers: the tokenizer fields we write must equal the original file's (apart from
`tokenizer.ggml.pre`: transformers' GGUF import drops SmolLM's digit-splitting pre-tokenizer, so we write
the "gpt-2" regex; with no multi-digit merges in the vocabulary both split digits alike), and since the
float weights lie on the original's grids (Q4_1 matrices, a Q8_0 embedding), a Q4_1 export must
reproduce every original tensor byte for byte. Per type: file size, bits per weight,
held-out perplexity of the file read back through transformers' GGUF loader (float: the imported model).
With `--llama-dir` (a llama.cpp build folder holding bin/llama-completion) the Q8_0 file is also run by
llama.cpp: greedy continuation of a prompt, compared with transformers' greedy continuation of the same file.

    python bench/gguf_export.py [--llama-dir PATH/build]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agent_forge_core.aliases import ensure_alias, fetch_gguf
from agent_forge_core.evals.suite import perplexity
from agent_forge_core.evals.text import natural_text
from agent_forge_core.gguf_export import write_gguf
from agent_forge_core.model_io import load_model

OUT = Path(__file__).resolve().parent / "results"
TYPES = ("F16", "Q8_0", "Q5_0", "Q4_1", "Q4_0")
PROMPT = "The capital of France is"


def fields(path: Path) -> tuple[dict, dict]:
    """(metadata, tensors) of a GGUF file: metadata values decoded, tensors as (type, raw bytes)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        vals = [f.parts[i] for i in f.data]
        t = f.types[-1]
        if t == gguf.GGUFValueType.STRING:
            vals = [bytes(v).decode() for v in vals]
        else:
            vals = [v.tolist()[0] for v in vals]
        meta[k] = vals if f.types[0] == gguf.GGUFValueType.ARRAY else vals[0]
    return meta, {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes()) for t in r.tensors}


def read_back(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-dir", help="a llama.cpp build folder (bin/llama-completion)")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    args = ap.parse_args()
    folder = ensure_alias("smollm2-135m-instruct")
    model, tok = load_model(str(folder))
    text = natural_text("test")
    result = {"model": "smollm2-135m-instruct", "ppl_tokens": args.ppl_tokens,
              "float": {"perplexity": perplexity(model, tok, text, args.ppl_tokens, 256)}, "types": {}}
    n_weights = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        for t in TYPES:
            t0 = time.time()
            info = write_gguf(model, tok, Path(tmp) / f"m.{t}.gguf", t)
            back = read_back(Path(tmp) / f"m.{t}.gguf")
            row = {"bytes": info["bytes"], "bpw": 8 * info["bytes"] / n_weights, "write_s": time.time() - t0,
                   "perplexity": perplexity(back, tok, text, args.ppl_tokens, 256), "fallbacks": info["fallbacks"]}
            result["types"][t] = row
            print(t, json.dumps(row), flush=True)
        result["against_original"] = compare_with_original(Path(tmp) / "m.Q4_1.gguf")
        if args.llama_dir:
            result["llama_cpp"] = run_llama_cpp(Path(args.llama_dir), Path(tmp) / "m.Q8_0.gguf", tok)
    OUT.mkdir(exist_ok=True)
    (OUT / "gguf_export.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "types"}, indent=1))


def compare_with_original(ours_q4_1: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        theirs_meta, theirs_t = fields(fetch_gguf("smollm2-135m-instruct", Path(tmp)))
    ours_meta, ours_t = fields(ours_q4_1)
    tokenizer_keys = sorted(k for k in theirs_meta if k.startswith("tokenizer.") and k != "tokenizer.chat_template")
    return {
        "tokenizer_fields_equal": {k: ours_meta.get(k) == theirs_meta[k] for k in tokenizer_keys},
        "tokenizer_pre": {"ours": ours_meta.get("tokenizer.ggml.pre"), "original": theirs_meta.get("tokenizer.ggml.pre")},
        "hyperparameters_equal": {k: ours_meta.get(k) == v for k, v in theirs_meta.items()
                                  if k.startswith("llama.")},
        "tensors": len(theirs_t),
        "tensors_same_type": sum(ours_t.get(n, ("",))[0] == ty for n, (ty, _) in theirs_t.items()),
        "tensors_byte_identical": sum(ours_t.get(n) == theirs_t[n] for n in theirs_t),
        "tensor_names_equal": sorted(ours_t) == sorted(theirs_t),
    }


def run_llama_cpp(build: Path, gguf_path: Path, tok, n: int = 16) -> dict:
    """Greedy continuation by llama.cpp vs by transformers on the same file."""
    exe = build / "bin" / "llama-completion"
    proc = subprocess.run([str(exe), "-m", str(gguf_path), "-p", PROMPT, "-n", str(n), "--temp", "0", "--top-k", "1",
                           "-no-cnv", "--no-warmup", "-t", "2", "--seed", "0"], capture_output=True, text=True, timeout=600)
    model = read_back(gguf_path)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    theirs = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    ours = proc.stdout.split(PROMPT, 1)[-1]
    return {"returncode": proc.returncode, "llama_cpp": ours, "transformers": theirs,
            "same_continuation": ours.strip().startswith(theirs.strip()[:40]) and proc.returncode == 0,
            "stderr_tail": proc.stderr[-600:] if proc.returncode else ""}


if __name__ == "__main__":
    main()
