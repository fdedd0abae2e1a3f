"""The loop's per-phase plot: validation score after each phase (rolled-back phases hatched) and the training
loss of every step, phases marked."""
from __future__ import annotations

from pathlib import Path


def plot_phases(history: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["name"] for r in history]
    scores = [r["score"] for r in history]
    bars = a.bar(range(len(history)), scores, color=["#888" if r["phase"] == 0 else "#4a7" for r in history])
    for bar, r in zip(bars, history):
        if "rolled_back" in r:
            bar.set_hatch("//")
            bar.set_color("#d66")
    a.set_xticks(range(len(history)), names, rotation=45, ha="right")
    lo, hi = min(scores), max(scores)
    a.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    a.set_ylabel("validation score (EvoMerge's formula)")
    a.set_title("after each phase (red: rolled back)")
    for r in history:
        steps = r.get("steps", [])
        if steps:
            b.plot([s["step"] for s in steps], [s["loss"] for s in steps], label=r["name"])
    b.set_xlabel("optimizer step")
    b.set_ylabel("training loss")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
