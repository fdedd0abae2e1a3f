"""Final compression (stage 8): per-tensor codecs with exact bit accounting.

Built so far: the codec interface, the RTN baseline and SeedLM. The stage itself (plan, artifact,
loader) is not built yet, so `compression.enabled` is still refused by the pipeline plan.
"""
