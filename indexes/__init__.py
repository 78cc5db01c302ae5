"""Vector indexes over a project's embeddings: similarity search and the shared all-points kNN graph.

Modules
-------
build     choose (from n, d and a memory budget) or accept (a FAISS factory string), train, fill and tune an index
knn       the block-wise all-points kNN graph (exact or IVF with measured recall) and exact range pairs
torch_knn the tiled torch implementation (CUDA, or the same code on CPU)
graph     ``load_or_build_graph(cat)``: the graph cached in the workspace, keyed by embedding content
store     index/graph files with JSON metadata and SHA-256 checksums
search    search by vector, sample, image file or text; the index saved in the workspace
"""

from curate.indexes.knn import KnnGraph, knn_graph, range_pairs

__all__ = ["KnnGraph", "knn_graph", "range_pairs"]
