"""Retrieval ("HyperRAG"): passages of a corpus, BM25 and dense rankings fused by reciprocal rank, and a
hypergraph of shared identifiers whose neighbours come with a hit."""
