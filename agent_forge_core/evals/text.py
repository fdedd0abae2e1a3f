"""Offline text for perplexity, in two domains.

- In-domain: CPython's bundled `pydoc_data.topics` (~460 KB of English documentation). Topics are split
  by a hash of their name (80/10/10): held-out perplexity is measured on topics a language-focused
  fine-tune never saw, but in the same kind of text it trains on.
- Out-of-domain: the English dialogues of the ChatterBot corpus (PyPI `chatterbot-corpus` 1.3.3,
  BSD-3-Clause, by Gunther Cox; `chatterbot_corpus/data/english/*.yml`): everyday conversation on
  greetings, food, history, science, sports, movies, tech support..., nothing the project trains on.
  The programming file (`coding.yml`) is left out and repeated conversations are kept once (~67 KB).
  Conversations are split by a hash of their text into validation and test halves; there is no train
  part, so nothing can ever be tuned on it.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from .tasks import SPLITS, split_of

OOD_SOURCE = {"package": "chatterbot-corpus", "version": "1.3.3", "license": "BSD-3-Clause",
              "files": "chatterbot_corpus/data/english/*.yml (without coding.yml)"}


@lru_cache(maxsize=None)
def natural_text(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    from pydoc_data.topics import topics

    parts = [topics[k].strip() for k in sorted(topics) if split_of("topic:" + k) == split]
    return "\n\n".join(parts)


@lru_cache(maxsize=None)
def ood_text(split: str) -> str:
    """Out-of-domain English for held-out perplexity: the validation or the test half."""
    if split not in ("validation", "test"):
        raise ValueError(f"the out-of-domain text has validation and test halves only (nothing to train on), got {split!r}")
    import yaml

    try:
        folder = resources.files("chatterbot_corpus") / "data" / "english"
    except ModuleNotFoundError:
        raise RuntimeError("the out-of-domain perplexity text comes from the `chatterbot-corpus` package, which is "
                           "missing: reinstall the project (`make install`) or `pip install chatterbot-corpus==1.3.3`") from None
    seen, parts = set(), []
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if not f.name.endswith(".yml") or f.name == "coding.yml":
            continue
        for conv in yaml.safe_load(f.read_text(encoding="utf-8")).get("conversations", []):
            text = "\n".join(str(line).strip() for line in conv)
            if text in seen:
                continue
            seen.add(text)
            if half(text) == split:
                parts.append(text)
    return "\n\n".join(parts)


def half(text: str) -> str:
    """validation or test, by a hash of the conversation."""
    return "validation" if hashlib.sha256(("ood:" + text).encode()).digest()[0] % 2 == 0 else "test"
