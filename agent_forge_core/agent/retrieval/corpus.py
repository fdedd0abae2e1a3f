"""Corpora as passages: CPython's `pydoc_data` topics by default, or every `.txt`/`.md` file of a folder.

A passage is a run of paragraphs of at most `words` words (a paragraph longer than that is cut in pieces),
named `<source>#<n>`. The pydoc corpus changes between Python versions, so its description records the
version; `digest` changes whenever any passage does.
"""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Passage:
    id: str
    source: str
    text: str


def split(source: str, text: str, words: int = 90) -> list[Passage]:
    out, chunk = [], []

    def flush():
        if chunk:
            out.append(Passage(f"{source}#{len(out)}", source, " ".join(chunk)))
            chunk.clear()

    for para in text.split("\n\n"):
        toks = para.split()
        while toks:
            room = words - len(chunk)
            if room <= 0:
                flush()
                continue
            chunk.extend(toks[:room])
            toks = toks[room:]
        if len(chunk) >= words // 2:
            flush()
    flush()
    return out


def pydoc_passages(topics: list[str] | None = None, words: int = 90) -> list[Passage]:
    from pydoc_data.topics import topics as all_topics

    names = sorted(all_topics) if topics is None else topics
    return [p for name in names for p in split(name, all_topics[name], words)]


def folder_passages(folder: str | Path, words: int = 90) -> list[Passage]:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".txt", ".md") and p.is_file())
    if not files:
        raise ValueError(f"retrieval corpus {folder}: no .txt or .md files; name a folder of text or Markdown files")
    return [p for f in files for p in split(str(f.relative_to(folder)), f.read_text(errors="replace"), words)]


def describe(corpus: str) -> str:
    return f"pydoc_data topics of Python {platform.python_version()}" if corpus == "pydoc" else f"folder {corpus}"


def load_corpus(corpus: str, words: int = 90) -> list[Passage]:
    """`pydoc` or a folder path."""
    return pydoc_passages(words=words) if corpus == "pydoc" else folder_passages(corpus, words)


def digest(passages: list[Passage]) -> str:
    h = hashlib.sha256()
    for p in passages:
        h.update(p.id.encode() + b"\0" + p.text.encode() + b"\0")
    return h.hexdigest()
