"""The retrieval index: BM25 over the passages (`bm25s`), optionally dense embeddings of the model, fused by
reciprocal rank, plus the identifier hypergraph.

Saved as plain files (no pickle): `passages.jsonl`, the BM25 matrices (`.npy` and JSON, bm25s's own format),
`dense.safetensors` and `meta.json` (corpus, its digest, the Python version for pydoc, the dense model's
checkpoint key). `search` returns passages; `docs_text` makes them one line for a `<docs>` result.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .corpus import Passage, describe, digest
from .fusion import rrf
from .hypergraph import Hypergraph

FORMAT = "agent-forge-retrieval/1"


def _tokenize(texts: list[str]):
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


class RetrievalIndex:
    def __init__(self, passages: list[Passage], bm25, dense: np.ndarray | None, graph: Hypergraph, meta: dict):
        self.passages, self.bm25, self.dense, self.graph, self.meta = passages, bm25, dense, graph, meta
        self._embed = None  # (model, tokenizer) for dense queries

    @classmethod
    def build(cls, passages: list[Passage], corpus: str, embedder=None, dense_key: str | None = None) -> "RetrievalIndex":
        import bm25s

        if not passages:
            raise ValueError("retrieval corpus has no passages")
        bm25 = bm25s.BM25()
        bm25.index(_tokenize([p.text for p in passages]), show_progress=False)
        dense = None
        if embedder is not None:
            from .dense import embed

            dense = embed(*embedder, [p.text for p in passages])
        meta = {"format": FORMAT, "corpus": corpus, "description": describe(corpus), "passages": len(passages),
                "digest": digest(passages), "dense_model": dense_key if dense is not None else None}
        index = cls(passages, bm25, dense, Hypergraph.build([p.text for p in passages]), meta)
        index._embed = embedder
        return index

    def attach_model(self, model, tokenizer) -> None:
        """The model that embeds queries (the one whose embeddings the index holds)."""
        self._embed = (model, tokenizer)

    def bm25_ranking(self, query: str, k: int) -> list[int]:
        k = min(k, len(self.passages))
        docs, scores = self.bm25.retrieve(_tokenize([query]), k=k, show_progress=False)
        return [int(d) for d, s in zip(docs[0], scores[0]) if s > 0]

    def dense_ranking(self, query: str, k: int) -> list[int]:
        if self.dense is None or self._embed is None:
            return []
        from .dense import embed

        sims = self.dense @ embed(*self._embed, [query])[0]
        return [int(i) for i in np.argsort(-sims, kind="stable")[:k]]

    def search(self, query: str, k: int = 3, neighbours: int = 0, pool: int = 50) -> list[Passage]:
        """Top `k` by reciprocal-rank fusion of the BM25 and dense rankings (each cut at `pool`), then up to
        `neighbours` hypergraph neighbours of the top hit that are not already among them."""
        ranked = rrf([r for r in (self.bm25_ranking(query, pool), self.dense_ranking(query, pool)) if r])[:k]
        if ranked and neighbours:
            ranked += [n for n in self.graph.neighbours(ranked[0], neighbours + k) if n not in ranked][:neighbours]
        return [self.passages[i] for i in ranked]

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "passages.jsonl", "w") as f:
            for p in self.passages:
                f.write(json.dumps(asdict(p)) + "\n")
        self.bm25.save(str(folder / "bm25"), show_progress=False)
        if self.dense is not None:
            save_file({"dense": np.ascontiguousarray(self.dense, dtype=np.float32)}, str(folder / "dense.safetensors"))
        (folder / "hypergraph.json").write_text(json.dumps(self.graph.edges))
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RetrievalIndex":
        import bm25s
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: not a retrieval index of this version ({meta.get('format')})")
        passages = [Passage(**json.loads(line)) for line in (folder / "passages.jsonl").read_text().splitlines()]
        bm25 = bm25s.BM25.load(str(folder / "bm25"), allow_pickle=False, show_progress=False)
        dense = load_file(str(folder / "dense.safetensors"))["dense"] if (folder / "dense.safetensors").is_file() else None
        graph = Hypergraph({k: v for k, v in json.loads((folder / "hypergraph.json").read_text()).items()})
        return cls(passages, bm25, dense, graph, meta)


def docs_text(passages: list[Passage], limit_each: int = 160) -> str:
    """Passages as one line for a `<docs>` result: `[source] text … | [source] text …`."""
    parts = []
    for p in passages:
        text = " ".join(p.text.split())
        parts.append(f"[{p.source}] " + (text if len(text) <= limit_each else text[: limit_each - 1] + "…"))
    return " | ".join(parts)
