"""EvoMerge: evolutionary search over merge recipes (CMA-ES), candidates evaluated in parallel."""
