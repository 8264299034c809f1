"""Producers: what puts work onto Kafka: bucket events, backfill scans, uploads, searches."""
