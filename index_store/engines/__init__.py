"""Engines: the in-memory search structures behind a feature's index.

- engine.py: the `Engine` protocol every engine (and wrapper) implements
- slots.py: the one image id <-> slot map (and the part of an engine it answers)
- dense_rows.py, nearest_pool.py: the exact engines' rows and chunked scan
- hamming.py, exact_float.py: exact Hamming and float (L1, cosine) engines
- graph.py, hnswlib_graph.py, faiss_graph.py: the HNSW graph engines
- wrapper.py, rerank.py, exact_until_trained.py: wrappers around any engine
- factory.py: which engine a feature gets, bound to the configuration
"""
