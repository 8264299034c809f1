"""Extractor: image events in, feature events out (one topic per feature)."""
