"""The search's picture and table: every candidate's score per generation, and the best so far."""
from __future__ import annotations

from pathlib import Path

from .fitness import WORST
from .search import History


def plot_history(history: History, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    by_index = {c["index"]: c for c in history.candidates}
    fig, ax = plt.subplots(figsize=(6, 4))
    for g, idx in enumerate(history.generations):
        ok = [by_index[i] for i in idx if by_index[i]["status"] == "ok"]
        ax.scatter([g] * len(ok), [c["fitness"] for c in ok], s=18, alpha=0.6, color="tab:blue",
                   label="candidate" if g == 0 else None)
        bad = len(idx) - len(ok)
        if bad:
            ax.annotate(f"{bad} failed", (g, min((c["fitness"] for c in ok), default=0)), fontsize=7, color="tab:red")
    rows = history.per_generation()
    ax.plot([r["generation"] for r in rows], [r["best_so_far"] if r["best_so_far"] > WORST else None for r in rows],
            color="tab:orange", marker="o", label="best so far")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("combined score (validation)")
    ax.set_title("EvoMerge")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def history_rows(history: History) -> list[dict]:
    """One row per candidate: what a Prefect table artifact shows."""
    rows = []
    for c in history.candidates:
        r = c["recipe"]
        rows.append({
            "generation": c.get("generation"), "candidate": c["index"], "method": r["merge_method"],
            "weights": ", ".join(str(m["parameters"].get("weight")) for m in r["models"]),
            "score": round(c["fitness"], 4) if c["status"] == "ok" else c["status"],
            "wall_s": round(c.get("wall_s", 0.0), 1),
        })
    return rows
