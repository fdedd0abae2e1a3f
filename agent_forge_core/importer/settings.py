"""Settings of the `import` stage. What it imports is the common `model` section (part of every key)."""
from __future__ import annotations

from ..settings_base import StageSection


class ImportSettings(StageSection):
    enabled: bool = True
