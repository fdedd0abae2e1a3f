"""The design search's picture: every design's validation score (bootstrap median, 95% interval) in the order
it was scored, the best so far, and the test score of each design scored on test after selection."""
from __future__ import annotations

from pathlib import Path


def plot_search(archive: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(1, len(archive) + 1))
    med = [r["validation"]["median"] for r in archive]
    lo = [m - r["validation"]["lo"] for m, r in zip(med, archive)]
    hi = [r["validation"]["hi"] - m for m, r in zip(med, archive)]
    fig, ax = plt.subplots(figsize=(7, 4))
    seeds = [r["origin"] == "seed" for r in archive]
    for is_seed, color, label in ((True, "tab:gray", "seed design"), (False, "tab:blue", "mutant")):
        ix = [i for i, s in enumerate(seeds) if s == is_seed]
        ax.errorbar([xs[i] for i in ix], [med[i] for i in ix], yerr=[[lo[i] for i in ix], [hi[i] for i in ix]],
                    fmt="o", color=color, capsize=3, label=f"{label} (validation, 95% CI)")
    best, run = [], float("-inf")
    for m in med:
        run = max(run, m)
        best.append(run)
    ax.step(xs, best, where="post", color="tab:orange", label="best so far (validation)")
    tested = [(x, r["test"]["mean"]) for x, r in zip(xs, archive) if "test" in r]
    if tested:
        ax.scatter(*zip(*tested), marker="*", s=120, color="tab:red", zorder=3, label="test, once, after selection")
    ax.set_xlabel("design (in the order scored)")
    ax.set_ylabel("accuracy over the tasks")
    ax.set_title("ADAS-style design search")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
