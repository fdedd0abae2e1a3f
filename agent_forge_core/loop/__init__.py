"""Stage 5, the 10-phase training loop (issue 15): each phase a published mechanism with its own module.

Built so far: the mechanisms themselves (Grokfast, the calibration fit, the difficulty curriculum and its graded
generators, annealed gradient noise and its stability controller, the arithmetic step verifier, self-model and
confidence heads, Polyak averaging). The stage that runs them as phases is not registered yet, so the config
does not offer `loop`.
"""
