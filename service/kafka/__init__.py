"""Kafka plumbing: topic setup, the batch producer, the aggregating consumer."""
