"""Kafka transport shared by the consumers: client construction and the dead-letter sink."""
