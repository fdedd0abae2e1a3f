"""Stage 3, Quiet-STaR (Zelikman et al. 2024, arXiv 2403.09629): parallel thoughts at every position."""
