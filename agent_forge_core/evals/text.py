"""Offline natural text: CPython's bundled `pydoc_data.topics` (~460 KB of English documentation).

Topics are split by a hash of their name (80/10/10), so held-out perplexity is measured on topics a
language-focused fine-tune never saw.
"""
from __future__ import annotations

from functools import lru_cache

from .tasks import SPLITS, split_of


@lru_cache(maxsize=None)
def natural_text(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    from pydoc_data.topics import topics

    parts = [topics[k].strip() for k in sorted(topics) if split_of("topic:" + k) == split]
    return "\n\n".join(parts)
