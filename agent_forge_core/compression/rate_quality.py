"""The rate-quality curve `target_bpw: auto` walked, kept in the artifact: a table and a plot.

`rate_quality.json`: one row per evaluated plan (bits per weight, passed, validation metrics, failed gates);
`rate_quality.png`: perplexity and the task accuracies against bits per weight, failing plans hollow, the
chosen plan marked.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..evals.tasks import TASK_NAMES

TABLE, PLOT = "rate_quality.json", "rate_quality.png"


def write_curve(folder: Path, rows: list[dict], chosen_bpw: float) -> None:
    (folder / TABLE).write_text(json.dumps({"chosen_bits_per_weight": chosen_bpw, "plans": rows}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["bits_per_weight"] for r in rows]
    panels = [m for m in ("perplexity", *TASK_NAMES) if all(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        y = [r[metric] for r in rows]
        ax.plot(x, y, color="#888", lw=1)
        for xi, yi, r in zip(x, y, rows):
            ax.scatter([xi], [yi], s=36, color="#2a7" if r["passed"] else "white", edgecolors="#2a7" if r["passed"] else "#c33")
        ax.axvline(chosen_bpw, color="#2a7", ls="--", lw=1)
        ax.set_xlabel("bits per weight (model-wide)")
        ax.set_title(f"{metric} (validation)", fontsize=9)
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle("target_bpw auto: plans evaluated (hollow: a gate failed; dashed: chosen)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / PLOT, dpi=110)
    plt.close(fig)
