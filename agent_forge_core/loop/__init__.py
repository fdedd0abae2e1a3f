"""Stage 5, the 10-phase training loop (issue 15): each phase a published mechanism with its own module.

`stage.py` runs the phases (`phases.py`) on a float or BitNet input, validates and gates each, and keeps the exact
state for resume (`state.py`); the mechanisms: Grokfast (`grokfast.py`), the calibration fit (`calibration.py`),
the difficulty curriculum (`curriculum.py`) on graded generators (`graded.py`), annealed gradient noise and its
stability controller (`noise.py`), dreaming and STaR reflection (`dream.py`) with the arithmetic step verifier
(`verify.py`), self-model and confidence heads (`selfmodel.py`), Polyak averaging (`polyak.py`), and the loss with
distillation from a float teacher (`objective.py`).
"""
