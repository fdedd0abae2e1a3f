"""Stage 6: Prompt Baking of tool use, memory, retrieval and persona."""
