"""The forge report: what the run did to every pipeline stage (run, cached or off, and why), each checkpoint's
metrics against its input and against the base, wall time, size and bits per parameter along the chain, lineage
and gates as Markdown, and a PNG chart per metric with the size along the chain."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from .evals.suite import is_lower_better
from .formats.files import WEIGHT_SUFFIXES
from .store import CheckpointStore, Manifest

CHART_METRICS = ("perplexity", "perplexity_ood", "arithmetic", "recall", "instruction")
MB = 1e6


@dataclass(frozen=True)
class StageStatus:
    """How a run treated one pipeline stage: `run`, `cached` (every output already stored) or `off` (`reason`)."""

    stage: str
    status: str
    outputs: tuple[str, ...] = ()
    reason: str = ""


def label(m: Manifest) -> str:
    v = m.info.get("variant")
    return f"{m.stage}[{v}]" if v else m.stage


def collect(store: CheckpointStore, finals: list[str]) -> list[Manifest]:
    """Every checkpoint on the lineage of the final outputs, each once, in pipeline order."""
    seen: dict[str, Manifest] = {}
    for key in finals:
        for m in store.lineage(key):
            seen.setdefault(m.key, m)
    return list(seen.values())


def metrics_table(manifests: list[Manifest]) -> list[dict[str, Any]]:
    rows = []
    for m in manifests:
        row = {"checkpoint": m.key, "stage": label(m)}
        row.update({k: round(v, 4) for k, v in sorted(m.metrics.items())})
        rows.append(row)
    return rows


def cell(metrics: dict[str, float], name: str) -> str:
    """A metric as text; an accuracy with its standard error (`0.438 ± 0.057`)."""
    if name not in metrics:
        return "-"
    se = metrics.get(f"{name}_se")
    return f"{metrics[name]:.3f} ± {se:.3f}" if se is not None else f"{metrics[name]:.4g}"


def size_bytes(m: Manifest, weights_only: bool = False) -> int:
    """Bytes of the checkpoint's files (or of its weight files only: the model and its stages' weight sidecars)."""
    return sum(f["size"] for n, f in m.files.items() if not weights_only or n.endswith(WEIGHT_SUFFIXES))


def human_size(n: int) -> str:
    return f"{n / MB:.0f} MB" if n >= 10 * MB else f"{n / MB:.2f} MB"


def change(name: str, value: float, reference: float) -> str:
    """A metric against a reference: perplexities as a ratio (×0.88), accuracies as a difference (+0.031)."""
    if name.startswith("perplexity"):
        return f"×{value / reference:.2f}" if reference else "-"
    return f"{value - reference:+.3f}"


def stage_lines(statuses: list[StageStatus], store: CheckpointStore) -> list[str]:
    """One row per pipeline stage and output: status, wall time, size on disk, bits per parameter (8 · bytes of its
    weight files, stage sidecars such as experts included / the base's parameter count) and the chart metrics, each
    with its change against the stage's input and against the base (the lineage's first checkpoint)."""
    names = [n for n in CHART_METRICS
             if any(n in store.manifest(k).metrics for st in statuses for k in st.outputs)]
    lines = ["| stage | status | checkpoint | wall | size | bits/param | " + " | ".join(names) + " |",
             "|---|" + "---|" * (5 + len(names))]
    for st in statuses:
        if not st.outputs:
            lines.append(f"| {st.stage} | {st.status}: {st.reason} |" + " - |" * (4 + len(names)))
            continue
        for key in st.outputs:
            m = store.manifest(key)
            base = store.lineage(key)[0]
            parent = m.info.get("compared_to") or ""  # the input its gates compared against
            before = store.manifest(parent).metrics if parent else {}
            wall = m.info.get("wall_s")
            wall = "-" if wall is None else (f"{wall / 60:.1f} min" if wall >= 90 else f"{wall:.0f} s")
            if st.status == "cached" and wall != "-":
                wall += " (earlier run)"
            params = base.info.get("parameters")
            bits = f"{8 * size_bytes(m, weights_only=True) / params:.2f}" if params else "-"
            cells = []
            for n in names:
                if n not in m.metrics:
                    cells.append("-")
                    continue
                refs = [(before, "input" if parent != base.key else "input = base")] if n in before else []
                if base.key not in (key, parent) and n in base.metrics:
                    refs.append((base.metrics, "base"))
                vs = [f"{change(n, m.metrics[n], ref[n])} {what}" for ref, what in refs]
                cells.append(f"{m.metrics[n]:.4g}" + (f" ({', '.join(vs)})" if vs else ""))
            lines.append(f"| {label(m)} | {st.status} | `{key}` | {wall} | {human_size(size_bytes(m))} | {bits} | "
                         + " | ".join(cells) + " |")
    return lines


def agent_lines(rows: list[dict], key: str) -> list[str]:
    """One row per capability of the final agent (`final_agent.py`): at the stage that gave it and on the final
    checkpoint."""
    if not rows:
        return []
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    return ["## Final agent", "",
            f"What each stage gave the agent, measured on the stage's own output and again on the final checkpoint "
            f"`{key}` with its runtime on (its baked tools, a fresh memory session, retrieval, its experts' "
            "dispatcher). Rates and accuracies are shares of the stage's test probes.", "",
            "| stage | capability | at its stage | final agent |", "|---|---|---|---|",
            *(f"| {r['stage']} | {r['capability']} | {fmt(r['at_stage'])} | {fmt(r['final'])} |" for r in rows)]


def markdown(manifests: list[Manifest], finals: list[str], store: CheckpointStore, title: str,
             statuses: list[StageStatus] | None = None, agent_rows: list[dict] | None = None) -> str:
    names = sorted({k for m in manifests for k in m.metrics if not k.endswith("_se")})
    lines = [f"# Forge report: {title}", "", "## Final checkpoints", ""]
    lines += [f"- `{k}` at `{store.uri(k)}`" for k in finals]
    if statuses:
        lines += ["", "## Stages", "", *stage_lines(statuses, store), "",
                  "Changes in parentheses: against the stage's input and against the base; perplexities as a ratio "
                  "(lower is better), accuracies as a difference (higher is better)."]
    if agent_rows:
        lines += ["", *agent_lines(agent_rows, finals[0])]
    lines += ["", "## Lineage", ""]
    for k in finals:
        lines.append("- " + " -> ".join(f"`{label(m)}` ({m.key})" for m in store.lineage(k)))
    arrows = {n: ("lower is better" if is_lower_better(n) else "higher is better") for n in names}
    lines += ["", "## Metrics (held-out test split, test phrasing families)", "",
              "| checkpoint | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in manifests:
        lines.append(f"| {label(m)} | " + " | ".join(cell(m.metrics, n) for n in names) + " |")
    lines += ["", "; ".join(f"{n}: {d}" for n, d in arrows.items()) + "; accuracies ± one standard error",
              "", "## Gates", ""]
    for m in manifests:
        for g in m.info.get("gates", []):
            noise = "" if g.get("noise") is None else \
                f", change {'beyond' if g['significant'] else 'within'} noise ±{g['noise']:.3f}"
            lines.append(f"- {label(m)}: {g['metric']} {g['before']:.4g} -> {g['after']:.4g} "
                         f"(limit {g['limit']}{noise}) {'pass' if g['passed'] else 'FAIL'}")
    for m in manifests:  # tables a stage recorded about its own work (e.g. compression's rate-quality curve)
        for title, table in m.info.get("tables", {}).items():
            lines += ["", f"## {label(m)}: {title}", ""] + table_lines(table)
    return "\n".join(lines) + "\n"


def table_lines(table: list[dict[str, Any]] | dict[str, Any]) -> list[str]:
    """A list of row dicts as a Markdown table (columns: every key, in first-seen order), or
    {"columns": [...], "rows": [...]} where the order matters (manifests store their keys sorted)."""
    rows = table["rows"] if isinstance(table, dict) else table
    cols = table["columns"] if isinstance(table, dict) else list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]


def chart_png(manifests: list[Manifest]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [n for n in CHART_METRICS if any(n in m.metrics for m in manifests)]
    panels = [(f"{n} ({'lower' if is_lower_better(n) else 'higher'} is better)",
               [m.metrics.get(n, float("nan")) for m in manifests]) for n in metrics]
    panels.append(("size on disk (MB)", [size_bytes(m) / MB for m in manifests]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    labels = [label(m) for m in manifests]
    for ax, (title, vals) in zip(axes[0], panels):
        ax.bar(range(len(vals)), vals, color=["#888"] + ["#2a7"] * (len(vals) - 1))
        ax.set_xticks(range(len(vals)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def report_key(finals: list[str]) -> str:
    """Where a run's report lives: its final checkpoint's key, or for a run that ends in several
    checkpoints (Cognate's variants) `<stage>-set-<sha256 of their keys>`, the same for the same set."""
    if len(finals) == 1:
        return finals[0]
    digest = hashlib.sha256(",".join(sorted(finals)).encode()).hexdigest()[:16]
    return f"{finals[0].split('-', 1)[0]}-set-{digest}"


def write_report(store: CheckpointStore, finals: list[str], title: str,
                 statuses: list[StageStatus] | None = None, agent_rows: list[dict] | None = None) -> tuple[str, str]:
    """Writes reports/<report_key(finals)>/report.md and metrics.png; returns (markdown, report uri)."""
    manifests = collect(store, finals)
    md = markdown(manifests, finals, store, title, statuses, agent_rows)
    folder = f"reports/{report_key(finals)}"
    store.write_file(f"{folder}/metrics.png", chart_png(manifests))
    md_with_chart = md + "\n![metrics](metrics.png)\n"
    uri = store.write_file(f"{folder}/report.md", md_with_chart.encode())
    return md, uri
