"""The indexer's state: in-memory search structures and the LMDB store of record behind them."""
