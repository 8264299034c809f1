"""The indexer's state. Vocabulary: an *engine* is a feature's in-memory search structure
(engines/); an *index* is a feature's engine plus its LMDB store of record (feature_index.py)."""
