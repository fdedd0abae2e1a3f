"""Agent Forge core: algorithms, model I/O, checkpoint store and evaluation. Never imports Prefect."""

__version__ = "0.1.0"
