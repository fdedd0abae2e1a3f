"""The loop's phase gate (agent_forge_core/loop/gate.py): an accuracy drop counts only beyond its noise, an
exact (perplexity/NLL) drop counts in full, and z = 0 is the plain score drop."""
import math

import pytest

from agent_forge_core.evals.suite import standard_error
from agent_forge_core.evomerge.fitness import combined_score
from agent_forge_core.loop.gate import judge, reference_row, shrink

WEIGHTS = {"perplexity": 0.5, "instruction": 1.0, "recall": 1.0, "instruction_nll": 0.25}
N = 8  # loop.val_examples


def _metrics(ppl: float, instruction: int, recall: int, nll: float) -> dict:
    return {"perplexity": ppl, "instruction": instruction / N, "instruction_se": standard_error(instruction, N),
            "recall": recall / N, "recall_se": standard_error(recall, N), "instruction_nll": nll}


def _row(phase: int, metrics: dict, **extra) -> dict:
    return {"phase": phase, "metrics": metrics, "score": combined_score(metrics, WEIGHTS), **extra}


def test_one_flipped_answer_is_within_noise_and_kept():
    # the bench's case (bench/results/loop_float_evomerge.json): instruction 1/8 -> 0/8 while its NLL improved
    ref = _row(2, _metrics(15.0, 1, 7, 1.20))
    now = _metrics(15.0, 0, 7, 1.18)
    plain = judge(ref, now, WEIGHTS, tolerance=0.05, z=0.0)
    assert plain.rolled_back and plain.drop == pytest.approx(0.125 - 0.25 * 0.02)
    v = judge(ref, now, WEIGHTS, tolerance=0.05, z=2.0)
    assert not v.rolled_back
    assert v.drop == pytest.approx(plain.drop)  # the score is the score; only what the gate counts changes
    assert v.accuracy_drop == pytest.approx(0.125) and v.exact_drop == pytest.approx(-0.005)
    se = [standard_error(1, N), standard_error(0, N), standard_error(7, N), standard_error(7, N)]
    assert v.noise == pytest.approx(2 * math.sqrt(sum(s * s for s in se)))
    assert v.effective == pytest.approx(-0.005)


def test_an_exact_drop_over_tolerance_rolls_back_even_with_accuracy_gains_in_noise():
    ref = _row(1, _metrics(15.0, 1, 6, 1.2))
    now = _metrics(15.0 * math.exp(0.2), 2, 7, 1.2)  # perplexity x1.22: 0.5 * 0.2 = 0.1 of score
    v = judge(ref, now, WEIGHTS, tolerance=0.05, z=2.0)
    assert v.exact_drop == pytest.approx(0.1) and v.accuracy_drop == pytest.approx(-0.25)
    # the +0.25 accuracy gain is within its noise, so it no longer pays for the perplexity loss
    assert v.effective == pytest.approx(0.1) and v.rolled_back
    assert not judge(ref, now, WEIGHTS, tolerance=0.05, z=0.0).rolled_back  # the plain drop is -0.15


def test_an_accuracy_collapse_beyond_noise_rolls_back():
    ref = _row(1, _metrics(15.0, 8, 8, 1.2))
    now = _metrics(15.0, 0, 0, 1.2)
    v = judge(ref, now, WEIGHTS, tolerance=0.05, z=2.0)
    assert v.accuracy_drop == pytest.approx(2.0) and v.effective == pytest.approx(2.0 - v.noise)
    assert v.rolled_back and "against the tolerance 0.05" in v.describe()


def test_a_nan_perplexity_rolls_back():
    ref = _row(1, _metrics(15.0, 1, 6, 1.2))
    assert judge(ref, _metrics(float("nan"), 1, 6, 1.2), WEIGHTS, tolerance=0.05, z=2.0).rolled_back


def test_the_reference_is_the_best_kept_row():
    rows = [_row(0, _metrics(15.0, 1, 6, 1.2)), _row(1, _metrics(10.0, 1, 6, 1.2), rolled_back="x"),
            _row(2, _metrics(14.0, 1, 6, 1.2)), _row(3, _metrics(14.5, 1, 6, 1.2))]
    assert reference_row(rows)["phase"] == 2


def test_shrink():
    assert [shrink(x, 0.1) for x in (0.3, -0.3, 0.05, -0.05)] == pytest.approx([0.2, -0.2, 0.0, 0.0])
