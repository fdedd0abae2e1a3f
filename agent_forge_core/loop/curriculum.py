"""The difficulty curriculum of phases 4-6 (issue 15): hold training accuracy at a target.

Wilson et al. 2019 ("The Eighty Five Percent Rule for optimal learning", Nat. Commun. 10:4646) show that for
learners trained by gradient descent on binary decisions the training error that maximises the learning rate is
≈ 15.87%, i.e. accuracy ≈ 0.85. The controller is a proportional one on a continuous difficulty d:

    every `every` steps:  d ← clip(d + κ·(â − a*), d_min, d_max)

where â is the measured accuracy over that window (too easy → harder, too hard → easier); the generator is asked
for level round(d). `in_band` says whether â lies in the configured band around a*.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Curriculum:
    target: float = 0.85
    band: tuple[float, float] = (0.75, 0.95)
    kappa: float = 0.5
    every: int = 5
    d: float = 1.0
    d_min: float = 1.0
    d_max: float = 5.0
    _hits: int = 0
    _seen: int = 0
    _batches: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def level(self) -> int:
        return int(round(self.d))

    def observe(self, correct: int, total: int) -> None:
        """Adds one training batch's outcome; every `every` batches d moves."""
        self._hits, self._seen, self._batches = self._hits + correct, self._seen + total, self._batches + 1
        if self._batches < self.every:
            return
        acc = self._hits / max(1, self._seen)
        self.history.append({"d": self.d, "level": self.level, "accuracy": acc,
                             "in_band": self.band[0] <= acc <= self.band[1]})
        self.d = min(self.d_max, max(self.d_min, self.d + self.kappa * (acc - self.target)))
        self._hits = self._seen = self._batches = 0

    def share_in_band(self) -> float:
        return sum(r["in_band"] for r in self.history) / len(self.history) if self.history else 0.0

    def state(self) -> dict:
        return asdict(self)
