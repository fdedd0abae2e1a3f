"""Stage 1, Cognate: N LoRA fine-tunes of the base model, one per focus, merged into full weights."""
