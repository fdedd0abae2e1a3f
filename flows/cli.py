"""`agent-forge` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect's ephemeral server migrates a fresh database before it answers: ~25 s on 2 busy cores, over
# Prefect's 20 s default, so a first `agent-forge run` would fail to reach it.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
if os.environ.get("PREFECT_HOME"):
    # Prefect creates its home without parents; its ephemeral server then cannot open its database.
    os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)


def _settings(args):
    from agent_forge_core.config import load_settings

    return load_settings(getattr(args, "config", None), getattr(args, "overrides", []) or [], getattr(args, "profile", None))


def _print_table(rows: list[dict]) -> None:
    cols = ["stage", "perplexity", "perplexity_ood", "arithmetic", "recall", "instruction"]
    print("  ".join(f"{c:>14}" if i else f"{c:<22}" for i, c in enumerate(cols)))
    for r in rows:
        cells = [f"{r.get('stage', ''):<22}"] + [
            f"{r[c]:>14.4f}" if isinstance(r.get(c), (int, float)) else f"{'-':>14}" for c in cols[1:]
        ]
        print("  ".join(cells))


def cmd_run(args) -> int:
    from agent_forge_core.credentials import secret_overrides, without_secrets
    from agent_forge_core.stages.plan import plan

    # A bad config fails here in a second, before Prefect's server starts; the flow checks again because
    # deployment runs (UI, schedule, API) reach it without this CLI.
    plan(_settings(args))
    # Credentials given with --set go to this process's environment, where the settings read them, never
    # into the flow run's parameters (Prefect stores those in its database).
    for path, value in secret_overrides(args.overrides).items():
        os.environ["AF_" + path.upper().replace(".", "__")] = value
    overrides = without_secrets(args.overrides)
    from flows.ephemeral import reap_orphaned_servers, stop_on_sigterm

    if not os.environ.get("PREFECT_API_URL"):
        for pid in reap_orphaned_servers(os.environ.get("PREFECT_HOME")):
            print(f"stopped the ephemeral Prefect server (pid {pid}) a killed run left behind", file=sys.stderr)
    stop_on_sigterm()
    from flows.forge import forge

    t0 = time.time()
    out = forge(config=args.config, profile=args.profile, overrides=overrides)
    print()
    _print_table(out["rows"])
    print("\nstages: " + ", ".join(f"{n} {st}" for n, st in out["statuses"].items()))
    print(f"final checkpoints: {', '.join(out['finals'])}")
    print(f"report: {out['report']}")
    print(f"wall time: {time.time() - t0:.1f}s")
    return 0


def cmd_config_show(args) -> int:
    print(json.dumps(_settings(args).public_dict(), indent=2))
    return 0


def cmd_stages(args) -> int:
    from agent_forge_core.stages.registry import pipeline

    for entry in pipeline():
        if isinstance(entry, str):
            print(f"{entry:<12} {'not built':<10}")
        else:
            print(f"{entry.name:<12} {'built':<10} {entry.description}")
    return 0


def _store(args):
    from agent_forge_core.store import CheckpointStore

    return CheckpointStore.from_settings(_settings(args).store)


def cmd_inspect(args) -> int:
    from agent_forge_core.errors import CheckpointCorrupted

    store = _store(args)
    if args.verify:
        bad = 0
        for k in [args.key] if args.key else store.list():
            problems = store.verify(k, digests=True)
            bad += bool(problems)
            print(f"{k:<48} {'ok' if not problems else 'DAMAGED: ' + '; '.join(problems)}")
        if bad:
            print(f"{bad} damaged checkpoint(s): delete them (or rerun: a run rebuilds what fails to verify)",
                  file=sys.stderr)
        return 1 if bad else 0
    if args.list or not args.key:
        for k in store.list():
            try:
                m = store.manifest(k)
            except CheckpointCorrupted as e:
                print(f"{k:<48} BAD MANIFEST: {e}")
                continue
            print(f"{k:<48} {m.stage:<10} parents={','.join(m.parents) or '-'}")
        return 0
    m = store.manifest(args.key)
    print(m.to_json())
    print("\nlineage: " + " -> ".join(x.key for x in store.lineage(args.key)))
    return 0


def cmd_eval(args) -> int:
    from agent_forge_core.evals.suite import evaluate
    from agent_forge_core.model_io import load_model, resolve_device

    settings = _settings(args)
    store = _store(args)
    model, tok = load_model(str(store.get(args.key)), device=str(resolve_device(settings.device)))
    metrics = evaluate(model, tok, settings.eval, split=args.split)
    if settings.eval.thoughts:  # Quiet-STaR checkpoints: the same suite in thought mode, beside plain mode
        from agent_forge_core.quietstar.evaluate import evaluate_checkpoint_thoughts

        thought = evaluate_checkpoint_thoughts(model, tok, store.get(args.key), settings.eval, args.split)
        metrics.update({f"{k}_thought": v for k, v in thought.items()})
    print(json.dumps(metrics, indent=2))
    if args.record:
        store.update_metrics(args.key, {f"{k}@{args.split}": v for k, v in metrics.items()})
    return 0


def cmd_export(args) -> int:
    if os.path.exists(args.dir) and (not os.path.isdir(args.dir) or os.listdir(args.dir)):
        what = "is a file" if not os.path.isdir(args.dir) else "exists and is not empty"
        print(f"error: export folder {args.dir} {what}; choose an empty or new folder", file=sys.stderr)
        return 2
    store = _store(args)
    src = store.get(args.key)
    if args.format == "gguf":
        from agent_forge_core.model_io import export_gguf

        os.makedirs(args.dir, exist_ok=True)
        out = os.path.join(args.dir, f"{args.key}.{args.gguf_type}.gguf")
        info = export_gguf(src, out, args.gguf_type, name=args.key)
        fell = f"; fell back: {info['fallbacks']}" if info["fallbacks"] else ""
        print(f"exported {args.key} to {out} ({info['bytes'] / 1e6:.1f} MB, tensors {info['tensor_types']}"
              f"{fell}): run it with llama.cpp (llama-cli -m {out}) or load it with transformers' gguf_file=")
        return 0
    from agent_forge_core.model_io import export_hf

    note = export_hf(src, args.dir)
    print(f"exported {args.key} to {args.dir}: {note}")
    return 0


def cmd_merge(args) -> int:
    """Run one mergekit-style recipe outside the flow. Model names may be folders or checkpoint keys."""
    from agent_forge_core.merge import load_recipe, run_merge

    recipe = load_recipe(args.recipe)
    folders = {}
    store = None
    for ref in recipe.referenced_models():
        if os.path.isdir(ref):
            continue
        store = store or _store(args)
        if not store.exists(ref):
            print(f"error: recipe model {ref!r} is neither a folder nor a checkpoint in {store.url}", file=sys.stderr)
            return 2
        folders[ref] = store.get(ref)
    try:
        stats = run_merge(recipe, args.out, folders, max_shard_bytes=int(args.shard_mb * 2**20))
    except (FileExistsError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gb = stats.bytes_read / 1e9
    print(f"merged {stats.tensors} tensors ({recipe.merge_method}) into {args.out} in {stats.seconds:.1f}s "
          f"(read {gb:.2f} GB, wrote {stats.bytes_written / 1e9:.2f} GB, {gb / max(stats.seconds, 1e-9):.2f} GB/s read)")
    return 0


def _agent(args):
    """(model, tokenizer, runtime, settings) of a stored checkpoint, ready to answer."""
    from agent_forge_core.agent.runtime import Runtime
    from agent_forge_core.model_io import load_model, resolve_device

    settings = _settings(args)
    folder = _store(args).get(args.key)
    model, tok = load_model(str(folder), device=str(resolve_device(settings.device)))
    runtime = Runtime.open(folder, model, tok, settings.agent, session=getattr(args, "session", None), model_key=args.key)
    return model, tok, runtime, settings


def cmd_chat(args) -> int:
    from agent_forge_core.agent.chat import chat

    model, tok, runtime, settings = _agent(args)
    return chat(model, tok, runtime, settings.agent.max_new_tokens, settings.agent.temperature)


def cmd_serve(args) -> int:
    import uvicorn

    from agent_forge_core.agent.server import AgentServer, create_app

    model, tok, runtime, settings = _agent(args)
    server = AgentServer(model, tok, runtime, args.key, settings.agent.max_concurrency, settings.agent.max_new_tokens)
    print(f"serving {args.key} at http://{args.host}:{args.port}/v1 (OpenAI-compatible)", flush=True)
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_models(args) -> int:
    from agent_forge_core.aliases import ALIASES, ensure_alias

    if args.action == "list":
        for name, a in ALIASES.items():
            print(f"{name:<24} {a.note}")
        return 0
    print(ensure_alias(args.alias))
    return 0


def cmd_deploy(args) -> int:
    from prefect.client.orchestration import get_client

    from agent_forge_core.config import parse_overrides, read_yaml
    from flows.deploy import api_url, ensure_pools, forge_parameters, register

    settings = _settings(args)  # a bad value fails first, then a missing server, then what a deployment refuses
    cfg = settings.deploy
    url = api_url()
    params = forge_parameters(read_yaml(args.config), args.profile, args.overrides, settings, args.allow_local_store)
    # deploy.nightly switches the schedule; without it, a schedule switched in the UI stays as it is
    explicit = "nightly" in (parse_overrides(args.overrides).get("deploy") or {}) or "nightly" in (
        read_yaml(args.config).get("deploy") or {}) or "AF_DEPLOY__NIGHTLY" in os.environ
    with get_client(sync_client=True) as client:
        pools = ensure_pools(client, cfg)
        deployed = register(client, cfg, {"forge": params}, keep_schedule_state=not explicit)
    print(f"server {url}")
    for name, limit in pools.items():
        print(f"work pool {name:<10} process, concurrency limit {limit}")
    for d in deployed:
        print(f"deployment {d.name:<42} pool {d.pool:<6} {'; '.join(d.schedules) or 'no schedule'}")
        if d.parameters:
            print(f"  default parameters: {json.dumps(d.parameters)}")
    print("start workers with `agent-forge worker --pool cpu` and `agent-forge worker --pool gpu [--gpu I]`")
    return 0


def cmd_trigger(args) -> int:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from agent_forge_core.credentials import refuse_secret_overrides
    from flows.deploy import api_url, ui_url

    refuse_secret_overrides(args.overrides, "a deployment run's parameter")
    api_url()
    if args.config is not None or args.overrides or args.profile:
        _settings(args)  # a bad override fails here, not on the worker
    params = {"overrides": args.overrides}
    if args.config is not None:
        params["config"] = args.config
    if args.profile is not None:
        params["profile"] = args.profile
    run = run_deployment(args.deployment, parameters=params, timeout=0, as_subflow=False)
    print(f"flow run {run.id} ({run.name})")
    print(f"ui: {ui_url(run.id)}")
    if not args.wait:
        return 0
    t0 = time.time()
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            if args.timeout and time.time() - t0 > args.timeout:
                print(f"still {state.name if state else 'SCHEDULED'} after {args.timeout:g}s", file=sys.stderr)
                return 1
            time.sleep(2)
    print(f"{state.name} after {time.time() - t0:.1f}s" + (f": {state.message}" if state.message else ""))
    return 0 if state.is_completed() else 1


def cmd_worker(args) -> int:
    """Runs the Prefect worker as a child and passes SIGTERM/SIGINT on; a worker still running `--grace`
    seconds later (it retries an API that is gone, e.g. while the server stops) is killed, so a worker
    always stops within the time Docker and Kubernetes give it (10 s and 30 s)."""
    import signal
    import subprocess

    from flows.deploy import api_url, worker_command

    api_url()
    cmd, env = worker_command(args.pool, args.gpu, args.limit, args.poll)
    print(" ".join(cmd) + f"  (polls every {env['PREFECT_WORKER_QUERY_SECONDS']}s)", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    asked: list[float] = []

    def stop(signum, frame) -> None:
        asked.append(time.monotonic())
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if asked and time.monotonic() - asked[0] > args.grace:
                print(f"worker still running {args.grace:g}s after the stop signal; killing it", file=sys.stderr, flush=True)
                proc.kill()
                proc.wait()
                return 128 + signal.SIGTERM


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-forge", description="Forge specialized, compressed agents from base LMs.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp):
        sp.add_argument("--config", "-c", default=None, help="YAML config file")
        sp.add_argument("--profile", default=None, choices=["quick", "full"])
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
        return sp

    with_config(sub.add_parser("run", help="run the forge flow")).set_defaults(fn=cmd_run)
    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    with_config(cfg_sub.add_parser("show", help="print the effective config")).set_defaults(fn=cmd_config_show)
    sub.add_parser("stages", help="list pipeline stages").set_defaults(fn=cmd_stages)
    sp = with_config(sub.add_parser("inspect", help="manifest, metrics and lineage of a checkpoint"))
    sp.add_argument("key", nargs="?")
    sp.add_argument("--list", action="store_true")
    sp.add_argument("--verify", action="store_true", help="check every file's size and sha256 (one KEY, or all)")
    sp.set_defaults(fn=cmd_inspect)
    sp = with_config(sub.add_parser("eval", help="run the eval suite on a checkpoint"))
    sp.add_argument("key")
    sp.add_argument("--split", default="test", choices=["train", "validation", "test"])
    sp.add_argument("--record", action="store_true", help="record the metrics in the manifest (as metric@split)")
    sp.set_defaults(fn=cmd_eval)
    sp = with_config(sub.add_parser("export", help="write a checkpoint as a plain HF folder or a GGUF file"))
    sp.add_argument("key")
    sp.add_argument("dir")
    sp.add_argument("--format", default="hf", choices=["hf", "gguf"],
                    help="hf: a folder plain transformers loads; gguf: one file llama.cpp runs")
    sp.add_argument("--gguf-type", default="Q8_0",
                    help="the matrices' GGUF type: F32 F16 BF16 Q8_0 Q5_1 Q5_0 Q4_1 Q4_0 TQ2_0 TQ1_0 (norms stay "
                         "F32; rows that do not divide into its blocks fall back to Q8_0, then F16)")
    sp.set_defaults(fn=cmd_export)
    sp = with_config(sub.add_parser("merge", help="run a mergekit-style merge recipe (YAML) into a folder"))
    sp.add_argument("recipe")
    sp.add_argument("out")
    sp.add_argument("--shard-mb", type=float, default=2048, help="largest output shard (MiB)")
    sp.set_defaults(fn=cmd_merge)
    sp = with_config(sub.add_parser("deploy", help="create the work pools and deployments on the Prefect server "
                                    "(PREFECT_API_URL); schedule from the deploy.* settings; the given config "
                                    "becomes the forge deployment's default parameters"))
    sp.add_argument("--allow-local-store", action="store_true",
                    help="accept a relative local store.url (only right when every worker runs in this directory)")
    sp.set_defaults(fn=cmd_deploy)
    sp = with_config(sub.add_parser("trigger", help="start a deployment run through the API; prints its id and UI link"))
    sp.add_argument("--deployment", default="forge/forge", help="flow/deployment name")
    sp.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 1 unless it completes")
    sp.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    sp.set_defaults(fn=cmd_trigger)
    sp = sub.add_parser("worker", help="start a Prefect process worker for a work pool")
    sp.add_argument("--pool", required=True, help="work pool name (cpu, gpu)")
    sp.add_argument("--gpu", type=int, default=None, help="GPU index this worker owns (sets CUDA_VISIBLE_DEVICES, limit 1)")
    sp.add_argument("--limit", type=int, default=None, help="flow runs this worker runs at once")
    sp.add_argument("--poll", type=float, default=2.0, help="seconds between asking the server for runs (Prefect: 10)")
    sp.add_argument("--grace", type=float, default=6.0, help="seconds a stopping worker gets before it is killed")
    sp.set_defaults(fn=cmd_worker)
    sp = with_config(sub.add_parser("chat", help="chat with a forged agent in the terminal (its tools, memory, retrieval)"))
    sp.add_argument("key")
    sp.add_argument("--session", default=None, help="memory session (default: agent.session)")
    sp.set_defaults(fn=cmd_chat)
    sp = with_config(sub.add_parser("serve", help="serve a forged agent over an OpenAI-compatible HTTP API"))
    sp.add_argument("key")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.set_defaults(fn=cmd_serve)
    mp = sub.add_parser("models", help="built-in model aliases")
    mp_sub = mp.add_subparsers(dest="action", required=True)
    mp_sub.add_parser("list").set_defaults(fn=cmd_models)
    f = mp_sub.add_parser("fetch")
    f.add_argument("alias")
    f.set_defaults(fn=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    from agent_forge_core.errors import ForgeError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ForgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
