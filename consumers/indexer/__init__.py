"""Indexer: feature events in, searchable indexes out; answers search requests."""
