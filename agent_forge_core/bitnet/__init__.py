"""BitNet b1.58 (Ma et al. 2024, "The Era of 1-bit LLMs"): ternary weights, 8-bit activations."""
