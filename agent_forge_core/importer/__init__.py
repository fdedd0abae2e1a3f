"""Stage 0, `import`: the base model as the first checkpoint of the lineage."""
