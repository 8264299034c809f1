"""Contracts shared by every lookalike process: settings, topic payloads, event formats.

Nothing in here talks to Kafka or S3; producers, consumers and the index store all
depend on this package and never on each other.
"""
