"""Kafka consumers: extractors (image events -> feature events) and indexers (features -> index)."""
