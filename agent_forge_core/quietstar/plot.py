"""Quiet-STaR's training curves: base and talk NLL, the share of positive rewards, the mixing weight."""
from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(steps, [r["loss_base"] for r in history], label="NLL, base pass")
    a.plot(steps, [r["loss_talk"] for r in history], label="NLL, mixed talk")
    a.set_xlabel("step")
    a.legend()
    if any("reward_positive_share" in r for r in history):
        b.plot(steps, [r.get("reward_positive_share") for r in history], label="share of positive rewards")
    b.plot(steps, [r["mix_mean"] for r in history], label="mean mixing weight w")
    b.set_xlabel("step")
    b.legend()
    fig.suptitle("Quiet-STaR")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
