"""The forge report: lineage and every stage's metrics as Markdown, and a PNG chart per metric."""
from __future__ import annotations

import hashlib
import io
from typing import Any

from .evals.suite import is_lower_better
from .store import CheckpointStore, Manifest

CHART_METRICS = ("perplexity", "perplexity_ood", "arithmetic", "recall", "instruction")


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


def markdown(manifests: list[Manifest], finals: list[str], store: CheckpointStore, title: str) -> str:
    names = sorted({k for m in manifests for k in m.metrics if not k.endswith("_se")})
    lines = [f"# Forge report: {title}", "", "## Final checkpoints", ""]
    lines += [f"- `{k}` at `{store.uri(k)}`" for k in finals]
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
        for title, rows in m.info.get("tables", {}).items():
            lines += ["", f"## {label(m)}: {title}", ""] + table_lines(rows)
    return "\n".join(lines) + "\n"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A list of row dicts as a Markdown table (columns: every key, in first-seen order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]


def chart_png(manifests: list[Manifest]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [n for n in CHART_METRICS if any(n in m.metrics for m in manifests)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    labels = [label(m) for m in manifests]
    for ax, name in zip(axes[0], metrics):
        vals = [m.metrics.get(name, float("nan")) for m in manifests]
        ax.bar(range(len(vals)), vals, color=["#888"] + ["#2a7"] * (len(vals) - 1))
        ax.set_xticks(range(len(vals)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{name} ({'lower' if is_lower_better(name) else 'higher'} is better)", fontsize=9)
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


def write_report(store: CheckpointStore, finals: list[str], title: str) -> tuple[str, str]:
    """Writes reports/<report_key(finals)>/report.md and metrics.png; returns (markdown, report uri)."""
    manifests = collect(store, finals)
    md = markdown(manifests, finals, store, title)
    folder = f"reports/{report_key(finals)}"
    store.write_file(f"{folder}/metrics.png", chart_png(manifests))
    md_with_chart = md + "\n![metrics](metrics.png)\n"
    uri = store.write_file(f"{folder}/report.md", md_with_chart.encode())
    return md, uri
